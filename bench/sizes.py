"""How big each scenario is: the full run (``make bench``) and the smoke run (tests/bench).

The full sizes keep ``make bench`` under 10 minutes on our 2-core machines; the
smoke sizes run every code path in well under a minute.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Sizes:
    name: str
    repetitions: int
    warmup_s: float  # before each closed-loop window: streams open, loops warm
    window_s: float  # the measured window of each closed-loop point
    # The bare grpc.aio ceiling's concurrency: the throughput targets' reference point,
    # and the saturation scenario's calibration (on demand, step 1).
    ceiling_streams: int
    # Throughput: the engine on demand (--sim-itl-ms 0), closed loop (a finished stream
    # is replaced at once).
    throughput_streams: tuple[int, ...]
    throughput_steps: tuple[int, ...]
    throughput_max_tokens: int
    # Saturation: the engine on its own clock (a token falls due every itl_ms whether or
    # not anyone reads), step 1, closed loop.
    saturation_streams: tuple[int, ...]
    saturation_itl_ms: float
    saturation_max_tokens: int
    # Latency: streams at one token every itl_ms, first token after ttft_ms.
    latency_streams: int
    latency_ttft_ms: float
    latency_itl_ms: float
    latency_max_tokens: int
    latency_warmup_s: float
    latency_window_s: float
    # Cancellation: rounds of streams cancelled together (on the latency server).
    cancel_rounds: int  # per repetition
    cancel_streams: int
    # Memory.
    idle_streams: int
    slow_readers: int
    slow_sample_s: float
    # Constraints: closed-loop streams of every workload (bench/workloads.py) on the engine
    # on demand, each stream a seed from a list of this many; then, one at a time, this
    # many rounds of first tokens (plain, cached schema, new schema). Its own window: six
    # workloads a repetition, where the other scenarios' smoke windows would be slow.
    constraint_warmup_s: float
    constraint_window_s: float
    constraint_streams: int
    constraint_max_tokens: int
    constraint_seeds: int
    compile_rounds: int


FULL = Sizes(
    name="full",
    repetitions=3,
    warmup_s=0.5,
    window_s=3.0,
    ceiling_streams=128,
    throughput_streams=(1, 128, 1024),
    throughput_steps=(1, 4),
    throughput_max_tokens=8192,
    saturation_streams=(64, 256, 512),
    saturation_itl_ms=1.0,
    saturation_max_tokens=8192,
    latency_streams=64,
    latency_ttft_ms=20.0,
    latency_itl_ms=20.0,
    latency_max_tokens=50,
    latency_warmup_s=1.0,
    latency_window_s=3.0,
    cancel_rounds=10,
    cancel_streams=32,
    idle_streams=1000,
    slow_readers=100,
    slow_sample_s=3.0,
    constraint_warmup_s=0.5,
    constraint_window_s=3.0,
    constraint_streams=32,
    constraint_max_tokens=64,
    constraint_seeds=16,
    compile_rounds=20,
)

# The smoke sizes keep the full run's shape: the ceiling's concurrency is one of the
# throughput levels and below the largest, so every target has figures to judge.
SMOKE = Sizes(
    name="smoke",
    repetitions=1,
    warmup_s=0.1,
    window_s=0.4,
    ceiling_streams=8,
    throughput_streams=(1, 8, 16),
    throughput_steps=(1, 4),
    throughput_max_tokens=512,
    saturation_streams=(4, 16),
    saturation_itl_ms=1.0,
    saturation_max_tokens=512,
    latency_streams=4,
    latency_ttft_ms=10.0,
    latency_itl_ms=10.0,
    latency_max_tokens=10,
    latency_warmup_s=0.1,
    latency_window_s=0.4,
    cancel_rounds=3,
    cancel_streams=4,
    idle_streams=20,
    slow_readers=4,
    slow_sample_s=0.4,
    constraint_warmup_s=0.05,
    constraint_window_s=0.1,
    constraint_streams=4,
    constraint_max_tokens=16,
    constraint_seeds=4,
    compile_rounds=1,
)
