"""The performance targets (docs/performance.md), judged on one run's figures.

Each is a ratio to a baseline measured in the same run.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .records import ServerKind
from .stats import ratio
from .summary import CancelSummary, LatencySummary, MemorySummary, SaturationPoint, point

SLOW_READER_BOUND_KB = 1024.0  # RSS growth over the sample; unbounded buffering is MB/s
HTTP_GROUPING_GOAL = 2.0  # step 4 vs step 1, per server CPU-second, on the HTTP door
HTTP_LATENCY_GOAL = 1.2  # tokenwire HTTP's added delay per token p99, against the SSE peer's


@dataclass(frozen=True, slots=True)
class TargetRow:
    name: str
    target: str
    measured: str
    passed: bool | None  # None: not measured in this run (n/a)


def _row(name: str, target: str, value: float, ok: bool, measured: str) -> TargetRow:
    if math.isnan(value):
        return TargetRow(name, target, "n/a", None)
    return TargetRow(name, target, measured, ok)


def evaluate(
    points: Sequence[SaturationPoint],
    latency: Mapping[ServerKind, LatencySummary],
    cancel: Mapping[ServerKind, CancelSummary],
    memory: Mapping[ServerKind, MemorySummary],
) -> list[TargetRow]:
    nan = math.nan

    def get(server: ServerKind, step: int, streams: int, attr: str) -> float:
        p = point(points, server, step, streams)
        return float(getattr(p, attr)) if p is not None else nan

    rows: list[TargetRow] = []
    tw, bare = get("tokenwire", 1, 128, "messages_per_s"), get("bare", 1, 128, "messages_per_s")
    r = ratio(tw, bare)
    rows.append(
        _row(
            "128 streams, step 1: messages/s vs the bare grpc.aio ceiling",
            ">= 0.8x",
            r,
            r >= 0.8,
            f"{r:.2f}x ({tw:,.0f} vs {bare:,.0f} msgs/s)",
        )
    )
    tw1 = get("tokenwire", 1, 128, "tokens_per_server_cpu_s")
    sse = get("sse", 1, 128, "tokens_per_server_cpu_s")
    r = ratio(tw1, sse)
    rows.append(
        _row(
            "128 streams, step 1: tokens per server CPU-second vs the SSE peer",
            ">= 1.0x",
            r,
            r >= 1.0,
            f"{r:.2f}x ({tw1:,.0f} vs {sse:,.0f})",
        )
    )
    t1, t4 = get("tokenwire", 1, 128, "tokens_per_s"), get("tokenwire", 4, 128, "tokens_per_s")
    r = ratio(t4, t1)
    rows.append(
        _row(
            "128 streams: tokens/s at step 4 vs step 1",
            ">= 3x",
            r,
            r >= 3.0,
            f"{r:.2f}x ({t4:,.0f} vs {t1:,.0f} tokens/s)",
        )
    )
    tw4 = get("tokenwire", 4, 128, "tokens_per_server_cpu_s")
    r = ratio(tw4, sse)
    rows.append(
        _row(
            "128 streams, step 4: tokens per server CPU-second vs the SSE peer",
            ">= 3x",
            r,
            r >= 3.0,
            f"{r:.2f}x ({tw4:,.0f} vs {sse:,.0f})",
        )
    )
    for step in (1, 4):
        hi, lo = (
            get("tokenwire", step, 1024, "tokens_per_s"),
            get("tokenwire", step, 128, "tokens_per_s"),
        )
        r = ratio(hi, lo)
        rows.append(
            _row(
                f"No collapse, step {step}: tokens/s at 1,024 streams vs 128",
                ">= 0.8x",
                r,
                r >= 0.8,
                f"{r:.2f}x ({hi:,.0f} vs {lo:,.0f} tokens/s)",
            )
        )
    rows += _http_rows(points, latency)
    rows += _latency_rows(latency)
    rows += _cancel_rows(cancel)
    rows += _memory_rows(memory)
    return rows


def _http_rows(
    points: Sequence[SaturationPoint], latency: Mapping[ServerKind, LatencySummary]
) -> list[TargetRow]:
    """tokenwire's HTTP door against the SSE peer, the way OpenAI-compatible servers stream."""

    def cpu(server: ServerKind, step: int) -> float:
        p = point(points, server, step, 128)
        return p.tokens_per_server_cpu_s if p is not None else math.nan

    http1, http4, sse = cpu("http", 1), cpu("http", 4), cpu("sse", 1)
    vs_peer, grouping = ratio(http1, sse), ratio(http4, http1)
    lat_http, lat_sse = latency.get("http"), latency.get("sse")
    p99_http = lat_http.token_p99_ms if lat_http else math.nan
    p99_sse = lat_sse.token_p99_ms if lat_sse else math.nan
    vs_lat = ratio(p99_http, p99_sse)
    return [
        _row(
            "HTTP SSE, 128 streams, step 1: tokens per server CPU-second vs the SSE peer",
            ">= 1.0x",
            vs_peer,
            vs_peer >= 1.0,
            f"{vs_peer:.2f}x ({http1:,.0f} vs {sse:,.0f})",
        ),
        _row(
            "HTTP SSE, 128 streams: tokens per server CPU-second at step 4 vs step 1",
            f">= {HTTP_GROUPING_GOAL:.0f}x",
            grouping,
            grouping >= HTTP_GROUPING_GOAL,
            f"{grouping:.2f}x ({http4:,.0f} vs {http1:,.0f})",
        ),
        _row(
            "HTTP SSE, latency: added delay per token p99 vs the SSE peer",
            f"<= {HTTP_LATENCY_GOAL:.1f}x",
            vs_lat,
            vs_lat <= HTTP_LATENCY_GOAL,
            f"{vs_lat:.2f}x ({p99_http:.2f} vs {p99_sse:.2f} ms)"
            + (f"; from the first token {lat_http.stream_p99_ms:.2f} ms" if lat_http else ""),
        ),
    ]


def _beside(latency: Mapping[ServerKind, LatencySummary], attr: str) -> str:
    parts = [
        f"{kind} {getattr(latency[kind], attr):.2f} ms"
        for kind in ("http", "bare", "sse")
        if kind in latency
    ]
    return f" ({', '.join(parts)})" if parts else ""


def _latency_rows(latency: Mapping[ServerKind, LatencySummary]) -> list[TargetRow]:
    tw = latency.get("tokenwire")
    token = tw.token_p99_ms if tw else math.nan
    ttft = tw.ttft_p99_ms if tw else math.nan
    return [
        _row(
            "Latency: added delay per token, p99",
            "< 2 ms",
            token,
            token < 2.0,
            f"{token:.2f} ms"
            + _beside(latency, "token_p99_ms")
            + (f"; from the first token {tw.stream_p99_ms:.2f} ms" if tw else ""),
        ),
        _row(
            "Latency: added time to first token, p99",
            "< 5 ms",
            ttft,
            ttft < 5.0,
            f"{ttft:.2f} ms" + _beside(latency, "ttft_p99_ms"),
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
        cancel = cancels.get(kind)
        if cancel is None:
            continue
        abort = cancel.abort_p99_ms
        rows += [
            _row(
                f"{abort_name}, p99 (server's tokenwire_abort_latency_seconds)",
                "< 5 ms",
                abort,
                abort < 5.0,
                f"{abort:.2f} ms (p50 {cancel.abort_p50_ms:.2f} ms, "
                f"{cancel.abort_count:.0f} aborts)",
            ),
            _row(
                f"{idle_name} (client, worst round)",
                "< 50 ms",
                cancel.idle_max_ms,
                cancel.idle_max_ms < 50.0 and cancel.idle_timeouts == 0,
                f"{cancel.idle_max_ms:.1f} ms (p50 {cancel.idle_p50_ms:.1f} ms, "
                f"{cancel.rounds} rounds, polls took {cancel.scrape_p50_ms:.1f} ms)",
            ),
        ]
    return rows


def _memory_rows(memory: Mapping[ServerKind, MemorySummary]) -> list[TargetRow]:
    tw = memory.get("tokenwire")
    kb = tw.idle_kb_per_stream if tw else math.nan
    growth = tw.slow_growth_kb if tw else math.nan
    return [
        _row(
            "Server RSS per idle open stream",
            "< 50 KB",
            kb,
            kb < 50.0,
            f"{kb:.1f} KB ({tw.idle_streams if tw else 0} streams)",
        ),
        _row(
            "Stopped readers on a fast engine: RSS growth over the sample",
            f"< {SLOW_READER_BOUND_KB:.0f} KB",
            growth,
            growth < SLOW_READER_BOUND_KB,
            f"{growth:.0f} KB ({tw.slow_slope_kb_per_s if tw else math.nan:.1f} KB/s, "
            f"{tw.slow_tokens_generated if tw else math.nan:,.0f} tokens generated)",
        ),
    ]
