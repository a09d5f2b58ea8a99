"""The scenarios, orchestrated: servers up, the load generator driven, figures collected.

The baselines run in the same scenario as tokenwire, on the same engine settings,
interleaved point by point (the order rotates every repetition), so that noise
from anything else on the machine falls on all of them alike. tokenwire runs
twice: one server measured on its gRPC door ("tokenwire"), another, started with
the same flags, on its HTTP door ("http").
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

from . import promtext
from .procs import TOKENWIRE_KINDS, ServerProcess, Worker, servers
from .records import (
    CancelSample,
    LatencySample,
    SaturationSample,
    ServerKind,
    StreamSpec,
)
from .sizes import Sizes
from .stats import median, quantile, ratio
from .summary import (
    SATURATION_SERIES,
    THROUGHPUT_SERIES,
    CancelSummary,
    LatencySummary,
    fairness,
    latency_summary,
    us_per,
)

MANY = ["--max-concurrent-requests=4096", "--max-queue=4096"]  # no admission limit in the way
KINDS: tuple[ServerKind, ...] = ("tokenwire", "http", "bare", "sse")
T = TypeVar("T")


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def _rotated(items: Sequence[T], by: int) -> list[T]:
    by %= len(items)
    return [*items[by:], *items[:by]]


def wait_idle(server: ServerProcess, within: float = 10.0) -> None:
    """Between points: tokenwire's engine and calls back to 0 (bounded); a pause otherwise."""
    if server.metrics_url is None:
        time.sleep(0.2)
        return
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        text = promtext.scrape(server.metrics_url)
        busy = promtext.value(text, "tokenwire_engine_requests_in_flight") + promtext.value(
            text, "tokenwire_streams_active"
        )
        if busy == 0:
            return
        time.sleep(0.05)
    log(f"warning: tokenwire still busy {within:.0f}s after a point")


Point = tuple[ServerKind, int, int]
"""A closed-loop point: server, streaming step, concurrent streams."""


def throughput(sizes: Sizes, worker: Worker) -> list[SaturationSample]:
    """The engine on demand (``--sim-itl-ms 0``): every server as fast as it can go."""

    def plan(rep: int) -> list[Point]:
        return [
            (kind, step, streams)
            for streams in sizes.throughput_streams
            for kind, step in _rotated(THROUGHPUT_SERIES, rep)
            if step in sizes.throughput_steps
        ]

    return _sweep("throughput", sizes, worker, _engine_at(0.0), plan, sizes.throughput_max_tokens)


def saturation(sizes: Sizes, worker: Worker) -> list[SaturationSample]:
    """The engine on its own clock: a token falls due every ``saturation_itl_ms`` whether
    or not anyone reads, and a reader that fell behind gets every overdue token in one
    step (at most 64). Each repetition also measures the bare ceiling on demand at
    ``ceiling_streams``, among the other points, as the calibration of the targets."""

    def plan(rep: int) -> list[Point]:
        levels = [
            [(kind, step, streams) for kind, step in _rotated(SATURATION_SERIES, rep)]
            for streams in sizes.saturation_streams
        ]
        calibration: list[Point] = [("bare", 1, sizes.ceiling_streams)]
        return [p for level in _rotated([*levels, calibration], rep) for p in level]

    return _sweep(
        "saturation",
        sizes,
        worker,
        _engine_at(sizes.saturation_itl_ms),
        plan,
        sizes.saturation_max_tokens,
        per_stream=True,
    )


def _engine_at(itl_ms: float) -> dict[ServerKind, list[str]]:
    """Every server's flags for an engine whose first token is due at once and then one
    every ``itl_ms`` (0: on demand); the bare ceiling, which has no engine, on demand."""
    tokenwire = ["--sim-ttft-ms=0", f"--sim-itl-ms={itl_ms:g}", *MANY]
    return {
        "tokenwire": tokenwire,
        "http": tokenwire,
        "bare": [],
        "sse": ["--ttft-ms=0", f"--itl-ms={itl_ms:g}"],
    }


def _sweep(
    label: str,
    sizes: Sizes,
    worker: Worker,
    flags: dict[ServerKind, list[str]],
    plan: Callable[[int], list[Point]],
    max_tokens: int,
    per_stream: bool = False,
) -> list[SaturationSample]:
    """Measure each repetition's points, in the order ``plan(rep)`` gives, on servers
    started once with ``flags``."""
    samples: list[SaturationSample] = []
    timeout = sizes.warmup_s + sizes.window_s + 60.0
    with servers(flags) as running:
        for rep in range(sizes.repetitions):
            for kind, step, streams in plan(rep):
                raw = worker.call(
                    "saturate",
                    timeout,
                    target=running[kind].target,
                    spec=StreamSpec(max_tokens, step),
                    streams=streams,
                    warmup_s=sizes.warmup_s,
                    window_s=sizes.window_s,
                    per_stream=per_stream,
                )
                sample = SaturationSample(**raw)
                sample.repetition = rep
                samples.append(sample)
                log(f"{label} {rep + 1}/{sizes.repetitions} {_describe(sample)}")
                wait_idle(running[kind])
        worker.call("close", 30.0)
    return samples


def _describe(s: SaturationSample) -> str:
    fair = ""
    if s.stream_rates:
        fair = f", slowest stream {fairness(s.stream_rates)[0]:.2f}x the median"
    return (
        f"{s.server:9} step {s.step} {s.streams:5} streams: {s.tokens_per_s:9,.0f} tokens/s "
        f"{s.messages_per_s:9,.0f} msgs/s ({ratio(s.tokens, s.messages):5.1f} tokens/msg), "
        f"server {us_per(s.server_cpu_s, s.messages):5.1f} us/msg, client "
        f"{us_per(s.client_cpu_s, s.messages):5.1f} us/msg, others "
        f"{s.other_cpu_s / s.window_s:4.0%} CPU{fair}"
        + (f", {s.errors} errors" if s.errors else "")
    )


def latency_and_cancellation(
    sizes: Sizes, worker: Worker, latency: bool = True, cancel: bool = True
) -> tuple[dict[ServerKind, LatencySummary], dict[ServerKind, CancelSummary]]:
    """The latency scenario on every server, and cancellation on tokenwire's doors, on the
    same servers (at the latency settings); either may be left out."""
    ttft, itl = sizes.latency_ttft_ms, sizes.latency_itl_ms
    tokenwire = [f"--sim-ttft-ms={ttft}", f"--sim-itl-ms={itl}", *MANY]
    flags: dict[ServerKind, list[str]] = {
        "tokenwire": tokenwire,
        "http": tokenwire,
        "bare": [f"--ttft-ms={ttft}", f"--itl-ms={itl}"],
        "sse": [f"--ttft-ms={ttft}", f"--itl-ms={itl}"],
    }
    kinds = KINDS if latency else TOKENWIRE_KINDS  # cancellation needs tokenwire's alone
    spec = StreamSpec(sizes.latency_max_tokens, 1)
    summaries: dict[ServerKind, LatencySummary] = {}
    cancels: dict[ServerKind, CancelSummary] = {}
    with servers({kind: flags[kind] for kind in kinds}) as running:
        if latency:
            summaries = _latency(sizes, worker, running, spec)
        if cancel:
            cancels = {
                kind: cancellation(sizes, worker, running[kind], spec) for kind in TOKENWIRE_KINDS
            }
        worker.call("close", 30.0)
    return summaries, cancels


def _latency(
    sizes: Sizes, worker: Worker, running: dict[ServerKind, ServerProcess], spec: StreamSpec
) -> dict[ServerKind, LatencySummary]:
    reps: dict[ServerKind, list[LatencySample]] = {k: [] for k in KINDS}
    timeout = sizes.latency_warmup_s + sizes.latency_window_s + 60.0
    for rep in range(sizes.repetitions):
        for kind in _rotated(KINDS, rep):
            raw = worker.call(
                "latency",
                timeout,
                target=running[kind].target,
                spec=spec,
                streams=sizes.latency_streams,
                ttft_s=sizes.latency_ttft_ms / 1000.0,
                itl_s=sizes.latency_itl_ms / 1000.0,
                warmup_s=sizes.latency_warmup_s,
                window_s=sizes.latency_window_s,
            )
            sample = LatencySample(**raw)
            reps[kind].append(sample)
            log(
                f"latency {rep + 1}/{sizes.repetitions} {kind:9}: added per token p50 "
                f"{quantile(sample.token_delays, 0.5) * 1e3:.2f} ms p99 "
                f"{quantile(sample.token_delays, 0.99) * 1e3:.2f} ms, from the first token p99 "
                f"{quantile(sample.stream_delays, 0.99) * 1e3:.2f} ms, TTFT p99 "
                f"{quantile(sample.ttft_delays, 0.99) * 1e3:.2f} ms"
            )
            wait_idle(running[kind])
    return {kind: latency_summary(kind, reps[kind]) for kind in KINDS}


def cancellation(
    sizes: Sizes, worker: Worker, server: ServerProcess, spec: StreamSpec
) -> CancelSummary:
    """Rounds of streams cancelled together on one of tokenwire's doors (at the latency
    settings): gRPC cancels, or HTTP clients that close their connections."""
    assert server.metrics_url is not None
    before = promtext.scrape(server.metrics_url)
    samples: list[CancelSample] = []
    for rep in range(sizes.repetitions):
        raw = worker.call(
            "cancel",
            30.0 + sizes.cancel_rounds * 15.0,
            target=server.target,
            spec=spec,
            rounds=sizes.cancel_rounds,
            streams=sizes.cancel_streams,
        )
        sample = CancelSample(**raw)
        samples.append(sample)
        log(
            f"cancellation {rep + 1}/{sizes.repetitions} {server.kind:9}: engine idle after "
            "the last cancel "
            f"p50 {quantile(sample.idle_s, 0.5) * 1e3:.1f} ms, max "
            f"{max(sample.idle_s, default=math.nan) * 1e3:.1f} ms"
        )
    wait_idle(server)
    after = promtext.scrape(server.metrics_url)
    hist_after = promtext.buckets(after, promtext.ABORT_LATENCY)
    counts = None
    if hist_after is not None:
        counts = promtext.delta(hist_after, promtext.buckets(before, promtext.ABORT_LATENCY))
    idle = [s for sample in samples for s in sample.idle_s]
    cancelled_label = {"reason": "cancelled"}
    return CancelSummary(
        server=server.kind,
        rounds=sizes.cancel_rounds * sizes.repetitions,
        streams_per_round=sizes.cancel_streams,
        cancelled=sum(s.cancelled for s in samples),
        aborts_counted=promtext.value(after, "tokenwire_aborts_total", cancelled_label)
        - promtext.value(before, "tokenwire_aborts_total", cancelled_label),
        abort_histogram=counts is not None,
        abort_count=max(counts.values()) if counts else 0.0,
        abort_p50_ms=promtext.histogram_quantile(0.5, counts) * 1e3 if counts else math.nan,
        abort_p99_ms=promtext.histogram_quantile(0.99, counts) * 1e3 if counts else math.nan,
        idle_p50_ms=quantile(idle, 0.5) * 1e3,
        idle_p99_ms=quantile(idle, 0.99) * 1e3,
        idle_max_ms=max(idle, default=math.nan) * 1e3,
        idle_timeouts=sum(s.timeouts for s in samples),
        scrape_p50_ms=median([quantile(s.scrape_s, 0.5) * 1e3 for s in samples]),
    )
