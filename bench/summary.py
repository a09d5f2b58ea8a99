"""Aggregated figures: the medians of the repetitions, as the report and the targets read them."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from .records import LatencySample, SaturationSample, ServerKind
from .stats import cdf_points, median, quantile, ratio

THROUGHPUT_SERIES: tuple[tuple[ServerKind, int], ...] = (
    ("tokenwire", 1),
    ("tokenwire", 4),
    ("http", 1),
    ("http", 4),
    ("bare", 1),
    ("bare", 4),
    ("sse", 1),
)
"""The engine on demand: the SSE peer streams one event per engine step, so step 1 only;
tokenwire's HTTP door groups as its gRPC door does (``stream_options.streaming_step``)."""

SATURATION_SERIES: tuple[tuple[ServerKind, int], ...] = (
    ("tokenwire", 1),
    ("http", 1),
    ("sse", 1),
)
"""The engine on its own clock, step 1: how many tokens go in a message is the server's
doing. The bare ceiling runs beside them on demand, as the calibration."""


@dataclass(slots=True)
class SaturationPoint:
    """One (server, step, streams) point of a closed-loop scenario, over its repetitions."""

    server: ServerKind
    step: int
    streams: int
    repetitions: int
    tokens_per_s: float
    messages_per_s: float
    tokens_per_message: float
    server_us_per_token: float
    server_us_per_message: float
    client_us_per_message: float
    tokens_per_server_cpu_s: float
    other_cpu_share: float  # other processes' busy CPU / window: the machine's noise
    errors: int
    # Fairness, from each stream's delivered rate (NaN where rates were not recorded):
    # the slowest stream and the 10th percentile against the median stream, per
    # repetition; the median over repetitions, and the worst repetition's slowest.
    slowest_vs_median: float = math.nan
    slowest_vs_median_worst: float = math.nan
    p10_vs_median: float = math.nan
    median_stream_tokens_per_s: float = math.nan


def saturation_points(samples: Sequence[SaturationSample]) -> list[SaturationPoint]:
    """The medians of the repetitions, point by point, in THROUGHPUT_SERIES's order (which
    holds every series of both scenarios)."""
    points = []
    for server, step in THROUGHPUT_SERIES:
        for streams in sorted({s.streams for s in samples}):
            reps = [s for s in samples if (s.server, s.step, s.streams) == (server, step, streams)]
            if reps:
                points.append(_point(server, step, streams, reps))
    return points


def _point(
    server: ServerKind, step: int, streams: int, reps: Sequence[SaturationSample]
) -> SaturationPoint:
    def med(figure: Callable[[SaturationSample], float]) -> float:
        return median([figure(s) for s in reps])

    fair = [fairness(s.stream_rates) for s in reps if s.stream_rates]
    slowest = [f[0] for f in fair]
    return SaturationPoint(
        server=server,
        step=step,
        streams=streams,
        repetitions=len(reps),
        tokens_per_s=med(lambda s: s.tokens_per_s),
        messages_per_s=med(lambda s: s.messages_per_s),
        tokens_per_message=med(lambda s: ratio(s.tokens, s.messages)),
        server_us_per_token=med(lambda s: us_per(s.server_cpu_s, s.tokens)),
        server_us_per_message=med(lambda s: us_per(s.server_cpu_s, s.messages)),
        client_us_per_message=med(lambda s: us_per(s.client_cpu_s, s.messages)),
        tokens_per_server_cpu_s=med(lambda s: ratio(s.tokens, s.server_cpu_s)),
        other_cpu_share=med(lambda s: s.other_cpu_s / s.window_s),
        errors=sum(s.errors for s in reps),
        slowest_vs_median=median(slowest),
        slowest_vs_median_worst=min(slowest, default=math.nan),
        p10_vs_median=median([f[1] for f in fair]),
        median_stream_tokens_per_s=median([f[2] for f in fair]),
    )


@dataclass(slots=True)
class Sweep:
    """A closed-loop scenario's windows and their medians (empty when it was not run)."""

    samples: list[SaturationSample] = field(default_factory=list)
    points: list[SaturationPoint] = field(default_factory=list)

    @classmethod
    def of(cls, samples: list[SaturationSample]) -> Sweep:
        return cls(samples, saturation_points(samples))


def fairness(rates: Sequence[float]) -> tuple[float, float, float]:
    """(slowest / median, 10th percentile / median, median) of one window's stream rates."""
    mid = quantile(rates, 0.5)
    return ratio(min(rates), mid), ratio(quantile(rates, 0.1), mid), mid


def us_per(cpu_s: float, count: int) -> float:
    """Microseconds of CPU per token or message."""
    return cpu_s / count * 1e6 if count else math.nan


def point(
    points: Sequence[SaturationPoint], server: ServerKind, step: int, streams: int
) -> SaturationPoint | None:
    for p in points:
        if (p.server, p.step, p.streams) == (server, step, streams):
            return p
    return None


def paired_ratios(
    samples: Sequence[SaturationSample],
    numerator: tuple[ServerKind, int, int],
    denominator: tuple[ServerKind, int, int],
) -> list[float]:
    """messages/s of one (server, step, streams) point over another's, repetition by
    repetition: a repetition's windows of one concurrency run back to back, so each ratio
    is judged on one state of the machine, which drifts between repetitions."""

    def by_rep(key: tuple[ServerKind, int, int]) -> dict[int, float]:
        return {
            s.repetition: s.messages_per_s for s in samples if (s.server, s.step, s.streams) == key
        }

    top, bottom = by_rep(numerator), by_rep(denominator)
    return [ratio(top[rep], bottom[rep]) for rep in sorted(top.keys() & bottom.keys())]


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
