"""What crosses the pipe between the orchestrator and a load generator: plain, JSON-able records.

Commands go one JSON object per line on the worker's stdin (``{"op": ..., **args}``),
replies one per line on its stdout (``{"ok": true, "result": {...}}``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

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
