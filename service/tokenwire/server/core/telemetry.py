"""Metrics: Prometheus text at /metrics, named as OpenTelemetry would export them.

Each server owns its MeterProvider and Prometheus registry (no globals), so
several servers in one process (tests) count separately. Hot-path cost is kept
to a few integer updates per request: token counts are added once at the end of
a request, never per token, and counters, gauges and histograms become
Prometheus samples only when Prometheus scrapes.
"""

from __future__ import annotations

import math
import threading
import time
from bisect import bisect_left
from collections import Counter
from collections.abc import Callable, Iterable
from wsgiref.simple_server import WSGIServer

from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.resources import Resource
from prometheus_client import CollectorRegistry, generate_latest, start_http_server
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.registry import Collector

from ..engines.base import EngineLoad

AbortReason = str  # one of ABORT_REASONS
ABORT_REASONS = (
    "cancelled", "deadline", "shutdown", "stalled", "error", "aborted", "detached",
)  # fmt: skip
# How a Resume (gRPC) or GET /v1/requests/{id}/events (HTTP) ended up.
RESUME_OUTCOMES = ("resumed", "not_found", "conflict", "invalid")

# Seconds; LLM latencies span milliseconds (a token) to minutes (a long answer).
_LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75,
    1.0, 2.5, 5.0, 7.5, 10.0, 30.0, 60.0, 120.0, 300.0,
)  # fmt: skip


# Tokens per stream message: 1 while the front end keeps up with the engine, more
# when it falls behind and sends what is ready in one message (or asked for steps).
_MESSAGE_TOKEN_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)

# Aborts should take microseconds; the buckets resolve down to 10 us.
_ABORT_BUCKETS = (
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005,
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0,
)  # fmt: skip


class _Histogram:
    """A Prometheus histogram whose ``record`` costs a bisect and two additions.

    An OpenTelemetry SDK histogram costs about 5 us a measurement (attribute
    hashing, exemplar filters, locks): three of them per request were a fifth
    of a short request's whole cost in the server. Names, labels and buckets
    are what OpenTelemetry's Prometheus exporter wrote for the same instruments.
    """

    def __init__(
        self, name: str, description: str, labels: tuple[str, ...], buckets: tuple[float, ...]
    ) -> None:
        self.name = name
        self.description = description
        self._labels = labels
        self._bounds = buckets
        self._series: dict[tuple[str, ...], _Series] = {}  # by label values

    def labelled(self, *values: str) -> _Series:
        """The series for these label values, to record into without a lookup."""
        if len(values) != len(self._labels):
            raise ValueError(f"{self.name} takes labels {self._labels}, got {values}")
        series = self._series.get(values)
        if series is None:
            series = self._series[values] = _Series(self._bounds)
        return series

    def family(self) -> HistogramMetricFamily:
        family = HistogramMetricFamily(self.name, self.description, labels=self._labels)
        bounds = [repr(float(b)) for b in self._bounds] + ["+Inf"]
        for key, series in list(self._series.items()):
            # The scrape runs in the metrics server's thread: one copy of the counts
            # keeps buckets and count consistent (the sum may lag by one record).
            counts, total = list(series.counts), series.total
            cumulative, buckets = 0.0, []
            for bound, count in zip(bounds, counts, strict=True):
                cumulative += count
                buckets.append((bound, cumulative))
            family.add_metric(list(key), buckets, total)
        return family


class _Series:
    """One label set's counts, a count per bucket (the last one +Inf), and its sum."""

    __slots__ = ("_bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self._bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0

    def record(self, value: float) -> None:
        # Durations only: a negative or non-finite value would corrupt the sum for
        # good (the OpenTelemetry SDK drops them too).
        if 0.0 <= value < math.inf:
            self.counts[bisect_left(self._bounds, value)] += 1
            self.total += value


class _Histograms(Collector):
    def __init__(self, histograms: list[_Histogram]) -> None:
        self._histograms = histograms

    def collect(self) -> Iterable[HistogramMetricFamily]:
        return [h.family() for h in self._histograms]

    def describe(self) -> Iterable[HistogramMetricFamily]:
        # Lets the registry refuse a second collector exporting the same names.
        return self.collect()


class AdapterUse:
    """Which LoRA adapters have requests running, and waiting for a slot: what
    ``tokenwire_lora_requests_info`` reports (llm-d's LoRA-affinity scorer reads it)."""

    def __init__(self, max_lora: int) -> None:
        self.max_lora = max_lora
        self.running: Counter[str] = Counter()
        self.waiting: Counter[str] = Counter()
        self.updated = time.time()  # the metric's value: when the sets last changed

    def enter(self, use: Counter[str], adapter: str | None) -> None:
        if adapter is not None:
            use[adapter] += 1
            self.updated = time.time()

    def leave(self, use: Counter[str], adapter: str | None) -> None:
        if adapter is not None:
            use[adapter] -= 1
            if use[adapter] <= 0:
                del use[adapter]
            self.updated = time.time()

    def labels(self) -> dict[str, str]:
        return {
            "max_lora": str(self.max_lora),
            "running_lora_adapters": ",".join(sorted(self.running)),
            "waiting_lora_adapters": ",".join(sorted(self.waiting)),
        }


class Metrics:
    """The server's instruments. Their names and labels are a public contract:
    dashboards and alerts rely on them (docs/operations.md, "Metrics")."""

    def __init__(
        self,
        model: str,
        engine: str,
        in_flight: Callable[[], int],
        queue_depth: Callable[[], int],
        load: Callable[[], EngineLoad],
        max_lora: int = 0,
    ) -> None:
        self.registry = CollectorRegistry()
        reader = PrometheusMetricReader(
            registry=self.registry, disable_target_info=True, scope_info_enabled=False
        )
        self._provider = MeterProvider(
            metric_readers=[reader],
            resource=Resource.create({"service.name": "tokenwire"}),
        )
        meter = self._provider.get_meter("tokenwire")

        # Counters and gauges are plain integers on the request path, turned into
        # OpenTelemetry observations only when Prometheus scrapes: an SDK counter
        # update costs microseconds, an integer increment nanoseconds.
        self.streams_active = 0
        self._requests: Counter[tuple[str, str]] = Counter()
        self._http_requests: Counter[tuple[str, str]] = Counter()
        # Series exist from the start at 0, so rates and alerts work before the first event.
        self._aborts: Counter[str] = Counter(dict.fromkeys(ABORT_REASONS, 0))
        self._tokens = {"prompt": 0, "completion": 0}
        # Resumable streams (core/resume.py keeps these up to date).
        self.detached_streams = 0
        self.resumes: Counter[str] = Counter(dict.fromkeys(RESUME_OUTCOMES, 0))
        self.replayed_messages = 0

        def observe(
            values: Callable[[], Iterable[tuple[int | float, dict[str, str]]]],
        ) -> Callable[[CallbackOptions], Iterable[Observation]]:
            def callback(_: CallbackOptions) -> Iterable[Observation]:
                return [Observation(value, attrs) for value, attrs in values()]

            return callback

        meter.create_observable_up_down_counter(
            "tokenwire_streams_active",
            callbacks=[observe(lambda: [(self.streams_active, {})])],
            description="Generations in progress, through either door",
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
            "tokenwire_http_requests",
            callbacks=[
                observe(
                    lambda: [
                        (n, {"route": r, "status": c})
                        for (r, c), n in list(self._http_requests.items())
                    ]
                )
            ],
            description="Finished HTTP requests by route and outcome status",
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
            "tokenwire_detached_streams",
            callbacks=[observe(lambda: [(self.detached_streams, {})])],
            description="Resumable streams kept with no client attached, within their grace",
        )
        meter.create_observable_counter(
            "tokenwire_resumes",
            callbacks=[
                observe(lambda: [(n, {"outcome": o}) for o, n in list(self.resumes.items())])
            ],
            description="Attempts to resume a stream, by outcome",
        )
        meter.create_observable_counter(
            "tokenwire_replayed_messages",
            callbacks=[observe(lambda: [(self.replayed_messages, {})])],
            description="Kept stream messages sent again to a client that resumed",
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
        # Load signals for routers (llm-d's endpoint picker scrapes every 50 ms):
        # read from the engine when scraped, so they cost nothing in between.
        meter.create_observable_gauge(
            "tokenwire_num_requests_waiting",
            callbacks=[observe(lambda: [(queue_depth() + load().waiting, {})])],
            description="Requests waiting: the admission queue plus the engine's own queue",
        )
        meter.create_observable_gauge(
            "tokenwire_num_requests_running",
            callbacks=[observe(lambda: [(load().running, {})])],
            description="Requests the engine is generating for",
        )
        meter.create_observable_gauge(
            "tokenwire_kv_cache_utilization",
            callbacks=[observe(lambda: [(load().kv_cache_utilization, {})])],
            description="Fraction (0-1) of the engine's KV-cache blocks in use",
        )

        def cache_config() -> list[tuple[int, dict[str, str]]]:
            now = load()
            labels = {"block_size": str(now.kv_block_size)}
            labels["num_gpu_blocks"] = str(now.kv_total_blocks)
            return [(1, labels)]

        self.adapters = AdapterUse(max_lora)
        meter.create_observable_gauge(
            "tokenwire_lora_requests_info",
            callbacks=[observe(lambda: [(self.adapters.updated, self.adapters.labels())])],
            description="LoRA adapters with requests running and waiting (labels, "
            "comma-separated); the value is when they last changed, in Unix seconds",
        )
        meter.create_observable_gauge(
            "tokenwire_cache_config_info",
            callbacks=[observe(cache_config)],
            description="The engine's KV cache: tokens per block and blocks in all (value 1)",
        )
        # Names and labels as OpenTelemetry's Prometheus exporter writes them.
        model_labels = ("gen_ai_request_model", "gen_ai_system")

        def seconds(name: str, description: str) -> _Histogram:
            return _Histogram(name, description, model_labels, _LATENCY_BUCKETS)

        ttft = seconds("gen_ai_server_time_to_first_token_seconds", "Time to first token")
        tpot = seconds(
            "gen_ai_server_time_per_output_token_seconds",
            "Time per output token after the first",
        )
        duration = seconds("gen_ai_server_request_duration_seconds", "Request duration")
        abort_latency = _Histogram(
            "tokenwire_abort_latency_seconds",
            "From a cancel reaching the call, or a deadline passing, to abort()",
            ("reason",),
            _ABORT_BUCKETS,
        )
        self._ttft = ttft.labelled(model, engine)
        self._tpot = tpot.labelled(model, engine)
        self._duration = duration.labelled(model, engine)
        self._abort_latency = {r: abort_latency.labelled(r) for r in ABORT_REASONS}
        message_tokens = _Histogram(
            "tokenwire_stream_message_tokens",
            "Tokens per stream message (gRPC message, SSE event or NDJSON line)",
            (),
            _MESSAGE_TOKEN_BUCKETS,
        )
        self._message_tokens = message_tokens.labelled()
        self.message_tokens = self._message_tokens.record  # bound once: called per message
        self.registry.register(_Histograms([ttft, tpot, duration, abort_latency, message_tokens]))
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    def request_done(self, method: str, code: str) -> None:
        self._requests[method, code] += 1

    def http_request_done(self, route: str, status: int) -> None:
        self._http_requests[route, str(status)] += 1

    def aborted(self, reason: AbortReason, latency_s: float | None = None) -> None:
        self._aborts[reason] += 1
        if latency_s is not None:
            self._abort_latency[reason].record(latency_s)

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
        self._duration.record(duration_s)
        if ttft_s is not None:
            self._ttft.record(ttft_s)
            if sequence_tokens > 1:  # the longest sequence: n of them run side by side
                self._tpot.record((duration_s - ttft_s) / (sequence_tokens - 1))

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
