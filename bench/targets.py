"""The performance targets (docs/performance.md), judged on one run's figures.

Each throughput target is a ratio to a baseline measured in the same run. A row
whose inputs were not run is n/a. ``measured`` is what the verdict is judged on;
``figures`` are the absolute numbers behind it, which move with the machine.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from .records import ServerKind
from .sizes import Sizes
from .stats import median, ratio
from .summary import (
    CancelSummary,
    LatencySummary,
    MemorySummary,
    SaturationPoint,
    Sweep,
    paired_ratios,
    point,
)

CEILING_GOAL = 0.8  # on demand, step 1: messages/s against the bare ceiling, every repetition
SATURATION_GOAL = 6.0  # own clock: tokens/s against the bare ceiling's messages/s
FAIRNESS_GOAL = 0.5  # own clock: the slowest stream's rate against the median stream's
SATURATION_CPU_GOAL = 1.5  # own clock: tokens per server CPU-second against the SSE peer
HTTP_GROUPING_GOAL = 2.0  # step 4 vs step 1, per server CPU-second, on the HTTP door
LATENCY_GOAL = 1.2  # a p99 against the baseline's in the same run
SLOW_READER_BOUND_KB = 1024.0  # RSS growth over the sample; unbounded buffering is MB/s


@dataclass(frozen=True, slots=True)
class TargetRow:
    name: str
    target: str
    measured: str  # the ratio or value the verdict is judged on
    figures: str  # the absolute figures behind it
    passed: bool | None  # None: not measured in this run (n/a)


def _row(name: str, target: str, value: float, ok: bool, measured: str, figures: str) -> TargetRow:
    if math.isnan(value):
        return TargetRow(name, target, "n/a", "n/a", None)
    return TargetRow(name, target, measured, figures, ok)


def _na(name: str, target: str) -> TargetRow:
    return _row(name, target, math.nan, False, "", "")


Point = SaturationPoint | None
Figure = Callable[[SaturationPoint], str]


def _msgs(p: SaturationPoint) -> str:
    return f"{p.messages_per_s:,.0f} msgs/s at {p.server_us_per_message:.1f} us/msg"


def _tokens(p: SaturationPoint) -> str:
    return (
        f"{p.tokens_per_s:,.0f} tokens/s at {p.server_us_per_token:.2f} us/token, "
        f"{p.tokens_per_message:.1f} tokens/msg"
    )


def _cpu(p: SaturationPoint) -> str:
    return (
        f"{p.tokens_per_server_cpu_s:,.0f} tokens per server CPU-s "
        f"({p.server_us_per_message:.1f} us/msg, {p.tokens_per_message:.1f} tokens/msg)"
    )


def _fig(figure: Figure, label: str, p: Point) -> str:
    return f"{label} {figure(p) if p is not None else 'n/a'}"


def _get(p: Point, attr: str) -> float:
    return float(getattr(p, attr)) if p is not None else math.nan


def _vs(
    name: str, goal: float, a: tuple[str, Point], b: tuple[str, Point], attr: str, figure: Figure
) -> TargetRow:
    """``attr`` of point a over point b, at least ``goal``."""
    r = ratio(_get(a[1], attr), _get(b[1], attr))
    figures = f"{_fig(figure, *a)}; {_fig(figure, *b)}"
    return _row(name, f">= {goal:g}x", r, r >= goal, f"{r:.2f}x", figures)


def evaluate(
    sizes: Sizes,
    throughput: Sweep,
    saturation: Sweep,
    latency: Mapping[ServerKind, LatencySummary],
    cancel: Mapping[ServerKind, CancelSummary],
    memory: Mapping[ServerKind, MemorySummary],
) -> list[TargetRow]:
    return [
        *_throughput_rows(sizes, throughput),
        *_http_rows(sizes, throughput.points, latency),
        *_saturation_rows(sizes, saturation.points),
        *_latency_rows(latency),
        *_cancel_rows(cancel),
        *_memory_rows(memory),
    ]


def _throughput_rows(sizes: Sizes, sweep: Sweep) -> list[TargetRow]:
    """The engine on demand: the gRPC door against the bare ceiling and the SSE peer."""
    ref, many = sizes.ceiling_streams, max(sizes.throughput_streams)
    points = sweep.points
    tw1, tw4 = point(points, "tokenwire", 1, ref), point(points, "tokenwire", 4, ref)
    bare, sse = point(points, "bare", 1, ref), ("sse", point(points, "sse", 1, ref))
    # Judged in every repetition: a median can hide one repetition below the goal.
    ratios = paired_ratios(sweep.samples, ("tokenwire", 1, ref), ("bare", 1, ref))
    low = min(ratios, default=math.nan)
    rows = [
        _row(
            f"On demand, {ref:,} streams, step 1: messages/s vs the bare grpc.aio ceiling, "
            "in every repetition",
            f">= {CEILING_GOAL:g}x",
            low,
            low >= CEILING_GOAL,
            f"{low:.2f}x at the lowest (median {median(ratios):.2f}x)",
            f"{_fig(_msgs, 'tokenwire', tw1)}; {_fig(_msgs, 'bare', bare)} (medians); "
            f"by repetition {', '.join(f'{r:.2f}x' for r in ratios)}",
        ),
        _vs(
            f"On demand, {ref:,} streams, step 1: tokens per server CPU-second vs the SSE peer",
            1.0,
            ("tokenwire", tw1),
            sse,
            "tokens_per_server_cpu_s",
            _cpu,
        ),
        _vs(
            f"On demand, {ref:,} streams: tokens/s at step 4 vs step 1",
            3.0,
            ("step 4", tw4),
            ("step 1", tw1),
            "tokens_per_s",
            _tokens,
        ),
        _vs(
            f"On demand, {ref:,} streams, step 4: tokens per server CPU-second vs the SSE peer",
            3.0,
            ("tokenwire", tw4),
            sse,
            "tokens_per_server_cpu_s",
            _cpu,
        ),
    ]
    for step in (1, 4):
        rows.append(
            _vs(
                f"No collapse, step {step}: tokens/s at {many:,} streams vs {ref:,}",
                0.8,
                (f"{many:,} streams", point(points, "tokenwire", step, many)),
                (f"{ref:,} streams", point(points, "tokenwire", step, ref)),
                "tokens_per_s",
                _tokens,
            )
        )
    return rows


def _latency(latency: Mapping[ServerKind, LatencySummary], kind: ServerKind, attr: str) -> float:
    summary = latency.get(kind)
    return float(getattr(summary, attr)) if summary is not None else math.nan


def _http_rows(
    sizes: Sizes, points: Sequence[SaturationPoint], latency: Mapping[ServerKind, LatencySummary]
) -> list[TargetRow]:
    """tokenwire's HTTP door against the SSE peer, the way OpenAI-compatible servers stream."""
    ref = sizes.ceiling_streams
    http1, http4 = point(points, "http", 1, ref), point(points, "http", 4, ref)
    p99_http, p99_sse = (_latency(latency, k, "token_p99_ms") for k in ("http", "sse"))
    first_http, first_sse = (_latency(latency, k, "stream_p99_ms") for k in ("http", "sse"))
    vs_lat = ratio(p99_http, p99_sse)
    return [
        _vs(
            f"HTTP SSE, on demand, {ref:,} streams, step 1: tokens per server CPU-second "
            "vs the SSE peer",
            1.0,
            ("http", http1),
            ("sse", point(points, "sse", 1, ref)),
            "tokens_per_server_cpu_s",
            _cpu,
        ),
        _vs(
            f"HTTP SSE, on demand, {ref:,} streams: tokens per server CPU-second at step 4 "
            "vs step 1",
            HTTP_GROUPING_GOAL,
            ("step 4", http4),
            ("step 1", http1),
            "tokens_per_server_cpu_s",
            _cpu,
        ),
        _row(
            "HTTP SSE, latency: added delay per token p99 vs the SSE peer",
            f"<= {LATENCY_GOAL:g}x",
            vs_lat,
            vs_lat <= LATENCY_GOAL,
            f"{vs_lat:.2f}x",
            f"http {p99_http:.2f} vs sse {p99_sse:.2f} ms; from the first token "
            f"{first_http:.2f} vs {first_sse:.2f} ms",
        ),
    ]


def _saturation_rows(sizes: Sizes, points: Sequence[SaturationPoint]) -> list[TargetRow]:
    """The engine on its own clock: a front end that falls behind must send fewer, larger
    messages, at a cost per token below the peer's, and starve no stream."""
    ref, big = sizes.ceiling_streams, max(sizes.saturation_streams)
    tw, http = point(points, "tokenwire", 1, big), point(points, "http", 1, big)
    sse = ("sse", point(points, "sse", 1, big))
    bare = point(points, "bare", 1, ref)
    r = ratio(_get(tw, "tokens_per_s"), _get(bare, "messages_per_s"))
    rows = [
        _row(
            f"Own clock, {big:,} streams, step 1: tokens/s vs the bare ceiling's messages/s "
            f"(on demand, {ref:,} streams)",
            f">= {SATURATION_GOAL:g}x",
            r,
            r >= SATURATION_GOAL,
            f"{r:.2f}x",
            f"{_fig(_tokens, 'tokenwire', tw)}; {_fig(_msgs, 'bare', bare)}",
        )
    ]
    for door, p in (("tokenwire gRPC", tw), ("tokenwire HTTP SSE", http)):
        fair = _get(p, "slowest_vs_median")
        rows.append(
            _row(
                f"Own clock, {big:,} streams: slowest stream's rate vs the median stream's "
                f"({door})",
                f">= {FAIRNESS_GOAL:g}x",
                fair,
                fair >= FAIRNESS_GOAL,
                f"{fair:.2f}x (worst repetition {_get(p, 'slowest_vs_median_worst'):.2f}x)",
                f"median stream {_get(p, 'median_stream_tokens_per_s'):,.0f} tokens/s, "
                f"10th percentile {_get(p, 'p10_vs_median'):.2f}x the median",
            )
        )
    for prefix, name, p in (("Own", "tokenwire", tw), ("HTTP SSE, own", "http", http)):
        rows.append(
            _vs(
                f"{prefix} clock, {big:,} streams, step 1: tokens per server CPU-second "
                "vs the SSE peer",
                SATURATION_CPU_GOAL,
                (name, p),
                sse,
                "tokens_per_server_cpu_s",
                _cpu,
            )
        )
    return rows


def _beside(latency: Mapping[ServerKind, LatencySummary], attr: str) -> str:
    return ", ".join(
        f"{kind} {_latency(latency, kind, attr):.2f} ms"
        for kind in ("http", "bare", "sse")
        if kind in latency
    )


def _latency_rows(latency: Mapping[ServerKind, LatencySummary]) -> list[TargetRow]:
    stream = _latency(latency, "tokenwire", "stream_p99_ms")
    ttft, bare = (_latency(latency, k, "ttft_p99_ms") for k in ("tokenwire", "bare"))
    vs_bare = ratio(ttft, bare)
    return [
        _row(
            "Latency: added delay per token from the first token, p99",
            "< 2 ms",
            stream,
            stream < 2.0,
            f"{stream:.2f} ms",
            f"from the send {_latency(latency, 'tokenwire', 'token_p99_ms'):.2f} ms; from the "
            f"first token {_beside(latency, 'stream_p99_ms')}",
        ),
        _row(
            "Latency: added time to first token p99 vs the bare grpc.aio ceiling's",
            f"<= {LATENCY_GOAL:g}x",
            vs_bare,
            vs_bare <= LATENCY_GOAL,
            f"{vs_bare:.2f}x",
            f"tokenwire {ttft:.2f} ms; {_beside(latency, 'ttft_p99_ms')}",
        ),
    ]


_CANCEL_NAMES: dict[ServerKind, tuple[str, str]] = {
    "tokenwire": (
        "Cancel to engine abort",
        "Engine idle after the last cancel of a round",
    ),
    "http": (
        "HTTP SSE: client disconnect to engine abort",
        "HTTP SSE: engine idle after the last disconnect of a round",
    ),
}


def _cancel_rows(cancels: Mapping[ServerKind, CancelSummary]) -> list[TargetRow]:
    rows = []
    for kind, (abort_name, idle_name) in _CANCEL_NAMES.items():
        abort_name = f"{abort_name}, p99 (server's tokenwire_abort_latency_seconds)"
        idle_name = f"{idle_name} (client, worst round)"
        cancel = cancels.get(kind)
        if cancel is None:
            rows += [_na(abort_name, "< 5 ms"), _na(idle_name, "< 50 ms")]
            continue
        rows += [
            _row(
                abort_name,
                "< 5 ms",
                cancel.abort_p99_ms,
                cancel.abort_p99_ms < 5.0,
                f"{cancel.abort_p99_ms:.2f} ms",
                f"p50 {cancel.abort_p50_ms:.2f} ms, {cancel.abort_count:.0f} aborts",
            ),
            _row(
                idle_name,
                "< 50 ms",
                cancel.idle_max_ms,
                cancel.idle_max_ms < 50.0 and cancel.idle_timeouts == 0,
                f"{cancel.idle_max_ms:.1f} ms",
                f"p50 {cancel.idle_p50_ms:.1f} ms, {cancel.rounds} rounds, "
                f"polls took {cancel.scrape_p50_ms:.1f} ms",
            ),
        ]
    return rows


def _memory_rows(memory: Mapping[ServerKind, MemorySummary]) -> list[TargetRow]:
    idle_name = "Server RSS per idle open stream"
    slow_name = "Stopped readers on a fast engine: RSS growth over the sample"
    slow_goal = f"< {SLOW_READER_BOUND_KB:.0f} KB"
    tw = memory.get("tokenwire")
    if tw is None:
        return [_na(idle_name, "< 50 KB"), _na(slow_name, slow_goal)]
    return [
        _row(
            idle_name,
            "< 50 KB",
            tw.idle_kb_per_stream,
            tw.idle_kb_per_stream < 50.0,
            f"{tw.idle_kb_per_stream:.1f} KB",
            f"{tw.idle_streams} streams, {tw.idle_base_mb:.1f} MB before",
        ),
        _row(
            slow_name,
            slow_goal,
            tw.slow_growth_kb,
            tw.slow_growth_kb < SLOW_READER_BOUND_KB,
            f"{tw.slow_growth_kb:.0f} KB",
            f"{tw.slow_slope_kb_per_s:.1f} KB/s over {tw.slow_sample_s:.1f} s, "
            f"{tw.slow_tokens_generated:,.0f} tokens generated",
        ),
    ]
