"""The report's method text: how the scenarios that ran were measured, at this run's sizes."""

from __future__ import annotations

from collections.abc import Sequence

from .sizes import Sizes

_COMMON = """\
- One machine, loopback only. The servers (tokenwire on its simulated engine, twice: one
  measured on its gRPC door, one on its HTTP door's SSE, "http"; the bare grpc.aio
  ceiling; the FastAPI SSE peer), the load generator and the orchestrator are separate
  processes sharing the same cores: the load generator's CPU is taken from the servers'
  budget, so absolute figures are lower than with a client on another machine. The
  servers run side by side and are measured point by point in turn (the order rotates
  every repetition), so that noise from other work on the machine falls on all. Both SSE
  servers get the same request (`return_token_ids`, `include_usage`, and tokenwire's
  `stream_options.streaming_step` at step 4), one HTTP/1.1 connection per stream.
- Every figure is the median of {reps}. Closed-loop points (throughput,
  saturation): {warmup:.1f} s of warmup, and until every stream has had a token (bounded),
  then a {window:.1f} s window; a finished stream is replaced at once. Server CPU is the
  server process's user + system time (psutil, all threads) over the window; client CPU
  likewise for the load generator; others' CPU is the rest of the machine's busy time."""

_SCENARIOS = {
    "throughput": """\
- Throughput, the engine on demand (`--sim-itl-ms 0`: each read of the engine gets the
  next token at once): {throughput_streams} concurrent streams of {throughput_tokens}
  tokens, `streaming_step` {steps} (the SSE peer sends one event per engine step, so
  step 1 only). What each server costs per message and per token at full speed.""",
    "saturation": """\
- Saturation, the engine on its own clock (`--sim-ttft-ms 0 --sim-itl-ms {itl:g}`, the
  SSE peer `--itl-ms {itl:g}`): every stream's tokens fall due every {itl:g} ms whether or
  not anyone reads, and a reader that fell behind gets all its overdue tokens in one
  engine step (at most 64). A real engine does not wait for its front end: TensorRT-LLM
  and vLLM fill their result queues on their own clock, so a front end that cannot send
  a message per token must send fewer, larger messages rather than fall further behind.
  {saturation_streams} streams of {saturation_tokens} tokens at `streaming_step` 1 (the
  largest ask for {demand:,.0f} tokens/s in all: at full sizes, far more than the
  transport carries one token a message);
  tokens per message is how far each server groups. Fairness: every closed-loop stream
  counts its own tokens, and its delivered rate is those over the window; the slowest
  stream and the 10th percentile against the median stream say whether a server that
  falls behind shares out what it can send or starves some streams. Calibration: each
  repetition also measures the bare grpc.aio ceiling on demand at {ceiling} streams,
  step 1, among the other points, so that this scenario alone judges its target against
  the transport's messages/s in the same run.""",
    "latency": """\
- Latency: {latency_streams} streams at {rate:.0f} tokens/s each (`--sim-ttft-ms {ttft:.0f}
  --sim-itl-ms {latency_itl:.0f}`, {latency_tokens} tokens a stream, closed loop, starts
  spread over one interval). Token i of a stream is due at send + ttft + i x itl on the
  client's clock (CLOCK_MONOTONIC); the added delay is its arrival minus that. It includes
  the request's trip to the server and its admission, the engine's timer granularity
  (uvloop timers tick in whole milliseconds; the bare baseline sleeps on the same timers),
  the server's stream path, the trip back and the client's decoding. Per-token figures
  leave out the first token, which is the TTFT figure; "from the first token" measures the
  same tokens against the first token's arrival (first + i x itl): the stream path alone.""",
    "cancel": """\
- Cancellation (tokenwire's two doors, at the latency settings): {rounds} rounds of
  {cancel_streams} streams; each waits for a token on every stream, cancels them all (gRPC
  cancels; on HTTP, the client closes each stream's connection), then polls /metrics until
  `tokenwire_engine_requests_in_flight` is 0.""",
    "memory": """\
- Memory: fresh servers. RSS with {idle} streams open on an engine that never answers
  (`--sim-ttft-ms 600000`), minus RSS before; and RSS sampled every 0.1 s for {slow_s:.1f} s
  while {slow} readers that took one message are stopped (SIGSTOP) on a fast engine
  (`--sim-itl-ms 0`, `--stall-timeout-s 600`). Tokens generated: the rise of
  `tokenwire_tokens_total{{kind="completion"}}` over the readers' whole lives.""",
    "constraints": """\
- Constraints: one tokenwire server (its gRPC door) on the engine on demand
  (`--sim-ttft-ms 0 --sim-itl-ms 0`), {constraint_streams} closed-loop streams at step 1, at
  most {constraint_tokens} tokens a stream, the same conversation under each workload in
  turn ({c_warmup:.2g} s of warmup, then a {c_window:.2g} s window; the order rotates every
  repetition): plain text, a JSON schema, a regex, tools in the prompt with tool_choice
  "none", "auto" answered as text, and "required". Plain text and the unconstrained tool
  workloads run to the budget (`ignore_eos`); a constrained answer ends where its grammar
  lets it. Streams take {seeds} seeds in turn, those the server answers as text under
  "auto" (found by asking it with Complete). Server CPU per token against plain text's in
  the same repetition is what the constraint costs. Then {compile_rounds} rounds, one
  request at a time: first tokens with no constraint, the workload's schema (compiled
  already), and that schema with a new nonce in its description (compiled before its
  first token).""",
}


def _counts(values: Sequence[int]) -> str:
    return ", ".join(f"{v:,}" for v in values)


def method(s: Sizes, scenarios: Sequence[str]) -> str:
    """The common method, then a paragraph for each scenario that ran."""
    fields = {
        "reps": f"{s.repetitions} repetition{'s' if s.repetitions != 1 else ''}",
        "warmup": s.warmup_s,
        "window": s.window_s,
        "ceiling": f"{s.ceiling_streams:,}",
        "throughput_streams": _counts(s.throughput_streams),
        "throughput_tokens": f"{s.throughput_max_tokens:,}",
        "steps": " and ".join(str(step) for step in s.throughput_steps),
        "itl": s.saturation_itl_ms,
        "saturation_streams": _counts(s.saturation_streams),
        "saturation_tokens": f"{s.saturation_max_tokens:,}",
        "demand": max(s.saturation_streams) * 1000.0 / s.saturation_itl_ms,
        "latency_streams": s.latency_streams,
        "rate": 1000.0 / s.latency_itl_ms,
        "ttft": s.latency_ttft_ms,
        "latency_itl": s.latency_itl_ms,
        "latency_tokens": s.latency_max_tokens,
        "rounds": s.cancel_rounds * s.repetitions,
        "cancel_streams": s.cancel_streams,
        "idle": s.idle_streams,
        "slow": s.slow_readers,
        "slow_s": s.slow_sample_s,
        "c_warmup": s.constraint_warmup_s,
        "c_window": s.constraint_window_s,
        "constraint_streams": s.constraint_streams,
        "constraint_tokens": s.constraint_max_tokens,
        "seeds": f"up to {s.constraint_seeds}",
        "compile_rounds": s.compile_rounds,
    }
    paragraphs = [_COMMON, *(_SCENARIOS[name] for name in scenarios)]
    return "\n".join(p.format(**fields) for p in paragraphs)
