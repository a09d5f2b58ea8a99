"""The run's outputs: ``<date>.json`` (everything), ``<date>.md`` (the report), plots, and
the figures block of docs/performance.md."""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from . import plots
from .records import SaturationSample, ServerKind
from .sizes import Sizes
from .summary import (
    SERIES,
    CancelSummary,
    LatencySummary,
    MemorySummary,
    SaturationPoint,
    point,
)
from .targets import TargetRow

SECTIONS = (
    "## Targets",
    "## Method",
    "## Saturation",
    "## Latency",
    "## Cancellation",
    "## Memory",
)
DOCS_BEGIN = "<!-- bench:begin (written by make bench) -->"
DOCS_END = "<!-- bench:end -->"


@dataclass(slots=True)
class Results:
    date: str
    started: str
    duration_s: float
    sizes: Sizes
    machine: dict[str, Any]
    samples: list[SaturationSample]
    points: list[SaturationPoint]
    latency: dict[ServerKind, LatencySummary]
    cancel: dict[ServerKind, CancelSummary]
    memory: dict[ServerKind, MemorySummary]
    targets: list[TargetRow]


def _clean(value: Any) -> Any:
    """NaN is not JSON: write null."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def write(results: Results, out: Path) -> dict[str, Path]:
    """Write the JSON, the plots and the Markdown report into ``out``; return their paths."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "json": out / f"{results.date}.json",
        "markdown": out / f"{results.date}.md",
        "throughput": out / f"{results.date}-throughput.png",
        "latency": out / f"{results.date}-latency.png",
    }
    data = {
        "date": results.date,
        "started": results.started,
        "duration_s": results.duration_s,
        "sizes": asdict(results.sizes),
        "machine": results.machine,
        "saturation": {
            "points": [asdict(p) for p in results.points],
            "samples": [asdict(s) for s in results.samples],
        },
        "latency": {k: asdict(v) for k, v in results.latency.items()},
        "cancellation": {k: asdict(v) for k, v in results.cancel.items()},
        "memory": {k: asdict(v) for k, v in results.memory.items()},
        "targets": [asdict(t) for t in results.targets],
    }
    paths["json"].write_text(json.dumps(_clean(data), indent=1) + "\n")
    plots.throughput(results.points, paths["throughput"])
    plots.latency_cdf(results.latency, paths["latency"])
    paths["markdown"].write_text(markdown(results, paths))
    return paths


def targets_table(rows: Sequence[TargetRow]) -> str:
    lines = ["| target | goal | measured | result |", "|---|---|---|---|"]
    for row in rows:
        verdict = {True: "pass", False: "**fail**", None: "n/a"}[row.passed]
        lines.append(f"| {row.name} | {row.target} | {row.measured} | {verdict} |")
    return "\n".join(lines)


def _f(value: float, spec: str = ",.0f") -> str:
    return "n/a" if math.isnan(value) else format(value, spec)


def markdown(r: Results, paths: Mapping[str, Path]) -> str:
    s, m = r.sizes, r.machine
    noise = m.get("other_cpu_share_median", math.nan)
    parts = [
        f"# tokenwire benchmark, {r.date}",
        "",
        f"`make bench` ({s.name} sizes), started {r.started}, took {r.duration_s:.0f} s on "
        f"{m['cpus']} cores ({m['platform']}, Python {m['python']}, grpcio {m['grpcio']}). "
        f"Load average {m['loadavg_start']} at the start and {m['loadavg_end']} at the end; "
        f"other processes used a median {_f(noise * 100, '.0f')}% of one core during the "
        "saturation windows.",
        "",
        "## Targets",
        "",
        targets_table(r.targets),
        "",
        "## Method",
        "",
        METHOD.format(
            reps=s.repetitions,
            window=s.window_s,
            warmup=s.warmup_s,
            max_tokens=s.saturation_max_tokens,
            streams=s.latency_streams,
            ttft=s.latency_ttft_ms,
            itl=s.latency_itl_ms,
            rate=1000.0 / s.latency_itl_ms,
            latency_tokens=s.latency_max_tokens,
            rounds=s.cancel_rounds * s.repetitions,
            cancel_streams=s.cancel_streams,
            idle=s.idle_streams,
            slow=s.slow_readers,
            slow_s=s.slow_sample_s,
        ),
        "",
        "## Saturation",
        "",
        f"![throughput]({paths['throughput'].name})",
        "",
        _saturation_table(r.points),
        "",
        "## Latency",
        "",
        f"![latency]({paths['latency'].name})",
        "",
        "| server | added per token p50 | p99 | added TTFT p50 | p99 "
        "| per token from the first p50 | p99 | token samples | server CPU | others' CPU "
        "| errors |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for kind, lat in r.latency.items():
        parts.append(
            f"| {kind} | {_f(lat.token_p50_ms, '.2f')} ms | {_f(lat.token_p99_ms, '.2f')} ms "
            f"| {_f(lat.ttft_p50_ms, '.2f')} ms | {_f(lat.ttft_p99_ms, '.2f')} ms "
            f"| {_f(lat.stream_p50_ms, '.2f')} ms | {_f(lat.stream_p99_ms, '.2f')} ms "
            f"| {lat.token_samples:,} | {_f(lat.server_cpu_share * 100, '.0f')}% "
            f"| {_f(lat.other_cpu_share * 100, '.0f')}% | {lat.errors} |"
        )
    parts += [
        "",
        "Added delays run from the client's send: a stream that starts late is late by as "
        'much on every token, so the per-token figure includes the start-up delay. "Per '
        "token from the first\" measures the same tokens against the first token's arrival "
        "instead (first + i x itl): the stream path alone. CPU shares are of one core over "
        "the window; others' CPU is everything else the machine ran meanwhile (other work on "
        "a shared machine shows up here first).",
    ]
    parts += ["", "## Cancellation", ""]
    for c in r.cancel.values():
        parts += _cancellation(c)
    parts += [
        "",
        "## Memory",
        "",
        "| server | RSS per idle stream | RSS before | stopped readers: RSS slope | growth "
        "| tokens generated | tokens read before the stop |",
        "|---|---|---|---|---|---|---|",
    ]
    for kind, mem in r.memory.items():
        parts.append(
            f"| {kind} | {_f(mem.idle_kb_per_stream, '.1f')} KB | {_f(mem.idle_base_mb, '.1f')} MB "
            f"| {_f(mem.slow_slope_kb_per_s, '.1f')} KB/s | {_f(mem.slow_growth_kb, '.0f')} KB "
            f"| {_f(mem.slow_tokens_generated)} | {mem.slow_tokens_read:,} |"
        )
    parts += ["", f"Raw figures: [{paths['json'].name}]({paths['json'].name}).", ""]
    return "\n".join(parts)


_CANCEL_HOW: dict[ServerKind, tuple[str, str]] = {
    "tokenwire": ("gRPC", "cancels"),
    "http": ("HTTP SSE", "closed connections"),
}


def _cancellation(c: CancelSummary) -> list[str]:
    door, how = _CANCEL_HOW.get(c.server, (c.server, "cancels"))
    abort = (
        f"p50 {_f(c.abort_p50_ms, '.2f')} ms, p99 {_f(c.abort_p99_ms, '.2f')} ms over "
        f"{c.abort_count:.0f} aborts (interpolated within the histogram's buckets)"
        if c.abort_histogram
        else "n/a: this server does not export `tokenwire_abort_latency_seconds` yet"
    )
    return [
        f"- {door}: {c.rounds} rounds of {c.streams_per_round} streams, {c.cancelled} {how}; "
        f'`tokenwire_aborts_total{{reason="cancelled"}}` rose by {c.aborts_counted:.0f}.',
        f"  - Server, from learning of the cancel to `abort()` returning: {abort}.",
        f"  - Client, from its last cancel of a round to `tokenwire_engine_requests_in_flight` "
        f"read as 0: p50 {_f(c.idle_p50_ms, '.1f')} ms, p99 {_f(c.idle_p99_ms, '.1f')} ms, "
        f"worst {_f(c.idle_max_ms, '.1f')} ms; {c.idle_timeouts} rounds not idle within 2 s. "
        f"Each poll of /metrics took {_f(c.scrape_p50_ms, '.1f')} ms (median): the resolution.",
    ]


def _saturation_table(points: Sequence[SaturationPoint]) -> str:
    lines = [
        "Medians of the repetitions. Ratio: messages/s against the bare ceiling at the same "
        "step and concurrency.",
        "",
        "| streams | server | step | tokens/s | msgs/s | vs bare | server us/msg | us/token "
        "| tokens per server CPU-s | client us/msg | errors |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for streams in sorted({p.streams for p in points}):
        for server, step in SERIES:
            p = point(points, server, step, streams)
            if p is None:
                continue
            bare = point(points, "bare", step, streams)
            vs = (
                p.messages_per_s / bare.messages_per_s if bare and bare.messages_per_s else math.nan
            )
            lines.append(
                f"| {streams:,} | {server} | {step} | {_f(p.tokens_per_s)} "
                f"| {_f(p.messages_per_s)} | {_f(vs, '.2f')}x "
                f"| {_f(p.server_us_per_message, '.1f')} | {_f(p.server_us_per_token, '.1f')} "
                f"| {_f(p.tokens_per_server_cpu_s)} "
                f"| {_f(p.client_us_per_message, '.1f')} | {p.errors} |"
            )
    return "\n".join(lines)


METHOD = """\
- One machine, loopback only. The servers (tokenwire on its simulated engine, twice: one
  measured on its gRPC door, one on its HTTP door's SSE, "http"; the bare grpc.aio
  ceiling; the FastAPI SSE peer), the load generator and the orchestrator are separate
  processes sharing the same cores: the load generator's CPU is taken from the servers'
  budget, so absolute figures are lower than with a client on another machine. The four
  servers run side by side and are measured point by point in turn (the order rotates
  every repetition), so that noise from other work on the machine falls on all. Both SSE
  servers get the same request (`return_token_ids`, `include_usage`, and tokenwire's
  `stream_options.streaming_step` at step 4), one HTTP/1.1 connection per stream.
- Every figure is the median of {reps} repetitions. Saturation: {window:.1f} s windows after
  {warmup:.1f} s of warmup, closed loop (a finished stream is replaced at once), streams of
  {max_tokens} tokens, `--sim-itl-ms 0`. Server CPU is the server process's user + system time
  (psutil, all threads) over the window; client CPU likewise for the load generator.
- Latency: {streams} streams at {rate:.0f} tokens/s each (`--sim-ttft-ms {ttft:.0f}
  --sim-itl-ms {itl:.0f}`, {latency_tokens} tokens a stream, closed loop, starts spread over one
  interval). Token i of a stream is due at send + ttft + i x itl on the client's clock
  (CLOCK_MONOTONIC); the added delay is its arrival minus that. It includes the request's
  trip to the server and its admission, the engine's timer granularity (uvloop timers tick
  in whole milliseconds; the bare baseline sleeps on the same timers), the server's stream
  path, the trip back and the client's decoding. Per-token figures leave out the first
  token, which is the TTFT figure.
- Cancellation (tokenwire's two doors, at the latency settings): {rounds} rounds of
  {cancel_streams} streams; each waits for a token on every stream, cancels them all (gRPC
  cancels; on HTTP, the client closes each stream's connection), then polls /metrics until
  `tokenwire_engine_requests_in_flight` is 0.
- Memory: fresh servers. RSS with {idle} streams open on an engine that never answers
  (`--sim-ttft-ms 600000`), minus RSS before; and RSS sampled every 0.1 s for {slow_s:.1f} s
  while {slow} readers that took one message are stopped (SIGSTOP) on a fast engine
  (`--sim-itl-ms 0`, `--stall-timeout-s 600`). Tokens generated: the rise of
  `tokenwire_tokens_total{{kind="completion"}}` over the readers' whole lives."""


def update_docs(docs: Path, results: Results, paths: Mapping[str, Path]) -> None:
    """Replace the figures block of docs/performance.md with this run's."""
    rel = Path(os.path.relpath(paths["markdown"].parent, docs.resolve().parent))
    block = "\n".join(
        [
            DOCS_BEGIN,
            f"Latest run: {results.date} ([report]({rel / paths['markdown'].name}), "
            f"[raw figures]({rel / paths['json'].name})), {results.sizes.repetitions} "
            f"repetitions, {results.duration_s:.0f} s, on {results.machine['cpus']} cores "
            "shared by the servers and the load generator.",
            "",
            targets_table(results.targets),
            "",
            f"![throughput]({rel / paths['throughput'].name})",
            "",
            f"![latency]({rel / paths['latency'].name})",
            DOCS_END,
        ]
    )
    text = docs.read_text()
    pattern = re.compile(re.escape(DOCS_BEGIN) + ".*?" + re.escape(DOCS_END), re.S)
    if not pattern.search(text):
        raise ValueError(f"{docs} has no {DOCS_BEGIN!r} ... {DOCS_END!r} block")
    docs.write_text(pattern.sub(lambda _: block, text))
