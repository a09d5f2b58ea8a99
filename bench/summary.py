"""Aggregated figures: the medians of the repetitions, as the report and the targets read them."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from .records import LatencySample, SaturationSample, ServerKind
from .stats import cdf_points, median, quantile

SERIES: tuple[tuple[ServerKind, int], ...] = (
    ("tokenwire", 1),
    ("tokenwire", 4),
    ("http", 1),
    ("http", 4),
    ("bare", 1),
    ("bare", 4),
    ("sse", 1),
)
"""Saturation series: the SSE peer streams one event per engine step, so step 1 only;
tokenwire's HTTP door groups as its gRPC door does (``stream_options.streaming_step``)."""


@dataclass(slots=True)
class SaturationPoint:
    server: ServerKind
    step: int
    streams: int
    repetitions: int
    tokens_per_s: float
    messages_per_s: float
    server_us_per_token: float
    server_us_per_message: float
    client_us_per_message: float
    tokens_per_server_cpu_s: float
    other_cpu_share: float  # other processes' busy CPU / window: the machine's noise
    errors: int


def saturation_points(samples: Sequence[SaturationSample]) -> list[SaturationPoint]:
    points = []
    for server, step in SERIES:
        for streams in sorted({s.streams for s in samples}):
            reps = [s for s in samples if (s.server, s.step, s.streams) == (server, step, streams)]
            if not reps:
                continue
            points.append(
                SaturationPoint(
                    server=server,
                    step=step,
                    streams=streams,
                    repetitions=len(reps),
                    tokens_per_s=median([s.tokens_per_s for s in reps]),
                    messages_per_s=median([s.messages_per_s for s in reps]),
                    server_us_per_token=median([_per(s.server_cpu_s, s.tokens) for s in reps]),
                    server_us_per_message=median([_per(s.server_cpu_s, s.messages) for s in reps]),
                    client_us_per_message=median([_per(s.client_cpu_s, s.messages) for s in reps]),
                    tokens_per_server_cpu_s=median(
                        [s.tokens / s.server_cpu_s if s.server_cpu_s else math.nan for s in reps]
                    ),
                    other_cpu_share=median([s.other_cpu_s / s.window_s for s in reps]),
                    errors=sum(s.errors for s in reps),
                )
            )
    return points


def _per(cpu_s: float, count: int) -> float:
    return cpu_s / count * 1e6 if count else math.nan


def point(
    points: Sequence[SaturationPoint], server: ServerKind, step: int, streams: int
) -> SaturationPoint | None:
    for p in points:
        if (p.server, p.step, p.streams) == (server, step, streams):
            return p
    return None


@dataclass(slots=True)
class LatencySummary:
    server: ServerKind
    repetitions: int
    token_samples: int
    ttft_samples: int
    token_p50_ms: float
    token_p99_ms: float
    ttft_p50_ms: float
    ttft_p99_ms: float
    stream_p50_ms: float  # per token after the first, against the first token's arrival
    stream_p99_ms: float
    token_cdf_ms: list[float] = field(default_factory=list)  # 101 quantiles, all reps pooled
    ttft_cdf_ms: list[float] = field(default_factory=list)
    stream_cdf_ms: list[float] = field(default_factory=list)
    server_cpu_share: float = math.nan  # of one core, over the window
    other_cpu_share: float = math.nan  # other processes on the machine: the noise
    errors: int = 0


def latency_summary(server: ServerKind, reps: Sequence[LatencySample]) -> LatencySummary:
    def per_rep(attr: str, q: float) -> float:
        return median([quantile(getattr(r, attr), q) * 1000.0 for r in reps])

    tokens = [d * 1000.0 for r in reps for d in r.token_delays]
    ttfts = [d * 1000.0 for r in reps for d in r.ttft_delays]
    return LatencySummary(
        server=server,
        repetitions=len(reps),
        token_samples=len(tokens),
        ttft_samples=len(ttfts),
        token_p50_ms=per_rep("token_delays", 0.5),
        token_p99_ms=per_rep("token_delays", 0.99),
        ttft_p50_ms=per_rep("ttft_delays", 0.5),
        ttft_p99_ms=per_rep("ttft_delays", 0.99),
        stream_p50_ms=per_rep("stream_delays", 0.5),
        stream_p99_ms=per_rep("stream_delays", 0.99),
        token_cdf_ms=cdf_points(tokens),
        ttft_cdf_ms=cdf_points(ttfts),
        stream_cdf_ms=cdf_points([d * 1000.0 for r in reps for d in r.stream_delays]),
        server_cpu_share=median([r.server_cpu_s / r.window_s for r in reps if r.window_s]),
        other_cpu_share=median([r.other_cpu_s / r.window_s for r in reps if r.window_s]),
        errors=sum(r.errors for r in reps),
    )


@dataclass(slots=True)
class CancelSummary:
    server: ServerKind  # tokenwire (gRPC cancels) or http (connections closed)
    rounds: int
    streams_per_round: int
    cancelled: int
    aborts_counted: float  # tokenwire_aborts_total{reason="cancelled"} over the scenario
    abort_histogram: bool  # whether the server exports tokenwire_abort_latency_seconds
    abort_count: float
    abort_p50_ms: float
    abort_p99_ms: float
    idle_p50_ms: float
    idle_p99_ms: float
    idle_max_ms: float
    idle_timeouts: int
    scrape_p50_ms: float  # the resolution of the client's idle measurement


@dataclass(slots=True)
class MemorySummary:
    server: ServerKind
    idle_streams: int
    idle_base_mb: float
    idle_kb_per_stream: float
    slow_readers: int
    slow_tokens_read: int  # by the client before it was stopped
    slow_tokens_generated: float  # tokenwire: tokens_total over the readers' lives; else NaN
    slow_sample_s: float
    slow_rss_mb: list[float] = field(default_factory=list)
    slow_slope_kb_per_s: float = math.nan
    slow_growth_kb: float = math.nan  # slope x sample length
