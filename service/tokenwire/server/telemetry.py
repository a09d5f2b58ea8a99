"""Metrics: OpenTelemetry instruments exported as Prometheus text at /metrics.

Each server owns its MeterProvider and Prometheus registry (no globals), so
several servers in one process (tests) count separately. Hot-path cost is kept
to a few counter updates per request: token counts are added once at the end of
a request, never per token, and the engine's in-flight count is read only when
Prometheus scrapes.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterable
from wsgiref.simple_server import WSGIServer

from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View
from opentelemetry.sdk.resources import Resource
from prometheus_client import CollectorRegistry, generate_latest, start_http_server

AbortReason = str  # one of ABORT_REASONS
ABORT_REASONS = ("cancelled", "deadline", "shutdown", "stalled", "error")

# Seconds; LLM latencies span milliseconds (a token) to minutes (a long answer).
_LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75,
    1.0, 2.5, 5.0, 7.5, 10.0, 30.0, 60.0, 120.0, 300.0,
)  # fmt: skip


# Aborts should take microseconds; the buckets resolve down to 10 us.
_ABORT_BUCKETS = (
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005,
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0,
)  # fmt: skip


class Metrics:
    """The server's instruments (names in shared/CONTRACT.md)."""

    def __init__(
        self,
        model: str,
        engine: str,
        in_flight: Callable[[], int],
        queue_depth: Callable[[], int],
    ) -> None:
        self.registry = CollectorRegistry()
        reader = PrometheusMetricReader(
            registry=self.registry, disable_target_info=True, scope_info_enabled=False
        )
        seconds = ExplicitBucketHistogramAggregation(_LATENCY_BUCKETS)
        self._provider = MeterProvider(
            metric_readers=[reader],
            resource=Resource.create({"service.name": "tokenwire"}),
            views=[View(instrument_name="gen_ai.server.*", aggregation=seconds)],
        )
        meter = self._provider.get_meter("tokenwire")
        self._attrs = {"gen_ai.request.model": model, "gen_ai.system": engine}

        # Counters and gauges are plain integers on the request path, turned into
        # OpenTelemetry observations only when Prometheus scrapes: an SDK counter
        # update costs microseconds, an integer increment nanoseconds.
        self.streams_active = 0
        self._requests: Counter[tuple[str, str]] = Counter()
        # Series exist from the start at 0, so rates and alerts work before the first event.
        self._aborts: Counter[str] = Counter(dict.fromkeys(ABORT_REASONS, 0))
        self._tokens = {"prompt": 0, "completion": 0}

        def observe(
            values: Callable[[], Iterable[tuple[int | float, dict[str, str]]]],
        ) -> Callable[[CallbackOptions], Iterable[Observation]]:
            def callback(_: CallbackOptions) -> Iterable[Observation]:
                return [Observation(value, attrs) for value, attrs in values()]

            return callback

        meter.create_observable_up_down_counter(
            "tokenwire_streams_active",
            callbacks=[observe(lambda: [(self.streams_active, {})])],
            description="Generate/Complete RPCs in progress",
        )
        meter.create_observable_counter(
            "tokenwire_requests",
            callbacks=[
                observe(
                    lambda: [
                        (n, {"method": m, "code": c}) for (m, c), n in list(self._requests.items())
                    ]
                )
            ],
            description="Finished RPCs by method and gRPC status code",
        )
        meter.create_observable_counter(
            "tokenwire_aborts",
            callbacks=[
                observe(lambda: [(n, {"reason": r}) for r, n in list(self._aborts.items())])
            ],
            description="Engine requests aborted, by reason",
        )
        meter.create_observable_counter(
            "tokenwire_tokens",
            callbacks=[observe(lambda: [(n, {"kind": k}) for k, n in list(self._tokens.items())])],
            description="Prompt and completion tokens",
        )
        meter.create_observable_gauge(
            "tokenwire_engine_requests_in_flight",
            callbacks=[observe(lambda: [(in_flight(), {})])],
            description="Engine requests submitted and not yet finished or aborted",
        )
        meter.create_observable_gauge(
            "tokenwire_queue_depth",
            callbacks=[observe(lambda: [(queue_depth(), {})])],
            description="Requests admitted but waiting for an engine slot",
        )
        self.ttft = meter.create_histogram(
            "gen_ai.server.time_to_first_token", unit="s", description="Time to first token"
        )
        self.tpot = meter.create_histogram(
            "gen_ai.server.time_per_output_token",
            unit="s",
            description="Time per output token after the first",
        )
        self.duration = meter.create_histogram(
            "gen_ai.server.request.duration", unit="s", description="Request duration"
        )
        self.abort_latency = meter.create_histogram(
            "tokenwire_abort_latency",
            unit="s",
            description="From a cancel reaching the call, or a deadline passing, to abort()",
            explicit_bucket_boundaries_advisory=_ABORT_BUCKETS,
        )
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    def request_done(self, method: str, code: str) -> None:
        self._requests[method, code] += 1

    def aborted(self, reason: AbortReason, latency_s: float | None = None) -> None:
        self._aborts[reason] += 1
        if latency_s is not None:
            self.abort_latency.record(latency_s, {"reason": reason})

    def generation_done(
        self,
        prompt_tokens: int,
        completion_tokens: int,
        sequence_tokens: int,
        ttft_s: float | None,
        duration_s: float,
    ) -> None:
        """Once per engine request, at its end, whatever the ending."""
        self._tokens["prompt"] += prompt_tokens
        self._tokens["completion"] += completion_tokens
        self.duration.record(duration_s, self._attrs)
        if ttft_s is not None:
            self.ttft.record(ttft_s, self._attrs)
            if sequence_tokens > 1:  # the longest sequence: n of them run side by side
                self.tpot.record((duration_s - ttft_s) / (sequence_tokens - 1), self._attrs)

    def text(self) -> bytes:
        """The Prometheus exposition, as /metrics serves it."""
        return generate_latest(self.registry)

    def serve(self, host: str, port: int) -> int:
        """Serve /metrics over HTTP in a daemon thread; returns the bound port."""
        self._server, self._thread = start_http_server(port, addr=host, registry=self.registry)
        return int(self._server.server_port)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        self._provider.shutdown()
