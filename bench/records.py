"""What crosses the pipe between the orchestrator and a load generator: plain, JSON-able records.

Commands go one JSON object per line on the worker's stdin (``{"op": ..., **args}``),
replies one per line on its stdout (``{"ok": true, "result": {...}}``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

ServerKind = Literal["tokenwire", "http", "bare", "sse"]
"""tokenwire over gRPC, tokenwire's HTTP door (SSE), and the two baselines."""


@dataclass(frozen=True, slots=True)
class Target:
    """A server under load: what it is, where, and its pid (for CPU time and RSS)."""

    kind: ServerKind
    address: str  # host:port
    pid: int
    metrics_url: str | None = None  # tokenwire and http only


@dataclass(frozen=True, slots=True)
class StreamSpec:
    """One stream's request: the same on every server."""

    max_tokens: int
    step: int = 1
    # The constraints scenario's request (bench/workloads.py); "" is the plain prompt of
    # every other scenario. Its streams take ``seeds`` in turn (none: unseeded).
    workload: str = ""
    seeds: tuple[int, ...] = ()

    @classmethod
    def of(cls, raw: dict[str, Any]) -> StreamSpec:
        """From its JSON form (where ``seeds`` is a list)."""
        return cls(**{**raw, "seeds": tuple(raw.get("seeds", ()))})


@dataclass(slots=True)
class SaturationSample:
    """One measured window of closed-loop streams (the throughput and saturation scenarios)."""

    server: ServerKind
    step: int
    streams: int
    window_s: float
    tokens: int
    messages: int
    server_cpu_s: float
    client_cpu_s: float
    other_cpu_s: float  # busy CPU of everything else on the machine: the noise
    errors: int
    first_error: str | None = None
    repetition: int = 0  # set by the scenario: pairs a server's window with the ceiling's
    # Each closed-loop slot's delivered tokens/s over the window (when asked for): fairness.
    stream_rates: list[float] = field(default_factory=list)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.window_s

    @property
    def messages_per_s(self) -> float:
        return self.messages / self.window_s


@dataclass(slots=True)
class LatencySample:
    """Added delays in seconds, measured by the client, within one window."""

    server: ServerKind
    token_delays: list[float] = field(default_factory=list)  # tokens after the first
    stream_delays: list[float] = field(default_factory=list)  # the same, from the first's arrival
    ttft_delays: list[float] = field(default_factory=list)
    streams_started: int = 0
    window_s: float = 0.0
    server_cpu_s: float = 0.0
    client_cpu_s: float = 0.0
    other_cpu_s: float = 0.0  # the machine's noise, as for saturation
    errors: int = 0
    first_error: str | None = None


@dataclass(slots=True)
class CancelSample:
    """Rounds of streams cancelled together, then /metrics polled until the engine is idle."""

    idle_s: list[float] = field(default_factory=list)  # last cancel -> in_flight seen at 0
    scrape_s: list[float] = field(default_factory=list)  # each poll's round trip: resolution
    cancelled: int = 0
    timeouts: int = 0  # rounds whose engine was not idle within the bound


@dataclass(slots=True)
class HoldResult:
    opened: int
    tokens_read: int  # tokens the client took before it stopped reading


@dataclass(slots=True)
class Tally:
    """How one workload's finished streams ended, as the load generator read them."""

    streams: int = 0
    tokens: int = 0
    with_tool_calls: int = 0  # streams that made at least one call
    finish: dict[str, int] = field(default_factory=dict)  # finish reason -> streams

    def add(self, other: Tally) -> None:
        self.streams += other.streams
        self.tokens += other.tokens
        self.with_tool_calls += other.with_tool_calls
        for reason, n in other.finish.items():
            self.finish[reason] = self.finish.get(reason, 0) + n


@dataclass(slots=True)
class FirstTokens:
    """Times to first token, one request at a time on an idle server: no constraint, the
    workload's schema (compiled already), and that schema made new (compiled first)."""

    plain_s: list[float] = field(default_factory=list)
    cached_s: list[float] = field(default_factory=list)
    fresh_s: list[float] = field(default_factory=list)
