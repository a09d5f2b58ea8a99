"""Traces: one span per RPC, continuing the caller's W3C ``traceparent``.

Attributes follow the OpenTelemetry GenAI and RPC semantic conventions; events
mark the first token and an abort. Spans are exported over OTLP/gRPC when
``OTEL_EXPORTER_OTLP_ENDPOINT`` is set (the exporter reads the other standard
``OTEL_EXPORTER_OTLP_*`` variables itself); without it they are still created, so
logs can carry trace ids, but go nowhere.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter
from opentelemetry.trace import NonRecordingSpan, Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from ..engines.base import GenerationRequest

log = logging.getLogger("tokenwire.server")

_PROPAGATOR = TraceContextTextMapPropagator()


class Tracing:
    def __init__(self, model: str, engine: str, otlp_endpoint: str | None) -> None:
        self._model = model
        self._engine = engine
        self._provider = TracerProvider(resource=Resource.create({"service.name": "tokenwire"}))
        self._exporting = False
        if otlp_endpoint:
            self.add_exporter(_otlp_exporter(otlp_endpoint))
            log.info("exporting traces over OTLP to %s", otlp_endpoint)
        self._tracer = self._provider.get_tracer("tokenwire")

    def add_exporter(self, exporter: SpanExporter, *, batch: bool = True) -> None:
        """Send spans to ``exporter``: batched in the background, or one by one (tests)."""
        processor = BatchSpanProcessor(exporter) if batch else SimpleSpanProcessor(exporter)
        self._provider.add_span_processor(processor)
        self._exporting = True

    @contextmanager
    def rpc_span(
        self,
        service: str,
        method: str,
        metadata: Iterable[tuple[str, str | bytes]] | None,
        door: str = "grpc",
    ) -> Iterator[Span]:
        """A server span continuing the caller's ``traceparent``: for the gRPC door
        ``service/method`` with rpc.* attributes, for HTTP ``POST route`` with http.*."""
        carrier = {k: v for k, v in metadata or () if isinstance(v, str)}
        parent = _PROPAGATOR.extract(carrier)
        if not self._exporting:
            # Nobody collects spans: skip recording (tens of microseconds a call),
            # but keep the caller's trace id current for the logs.
            caller = NonRecordingSpan(trace.get_current_span(parent).get_span_context())
            with trace.use_span(caller, end_on_exit=False):
                yield caller
            return
        name = f"{service}/{method}" if door == "grpc" else f"POST {method}"
        attributes: dict[str, str] = (
            {"rpc.system": "grpc", "rpc.service": service, "rpc.method": method}
            if door == "grpc"
            else {"http.request.method": "POST", "http.route": method}
        )
        attributes["gen_ai.request.model"] = self._model
        attributes["gen_ai.provider.name"] = self._engine
        with self._tracer.start_as_current_span(
            name,
            context=parent,
            kind=SpanKind.SERVER,
            attributes=attributes,
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            yield span

    @staticmethod
    def request(span: Span, request: GenerationRequest, operation: str) -> None:
        if not span.is_recording():
            return
        attributes: dict[str, str | int | float] = {
            "gen_ai.operation.name": operation,
            "gen_ai.response.id": request.request_id,
            "gen_ai.request.max_tokens": request.max_tokens,
            "gen_ai.request.choice.count": request.sampling.n,
            "gen_ai.usage.input_tokens": len(request.prompt_token_ids),
        }
        s = request.sampling
        for name, value in (
            ("temperature", s.temperature),
            ("top_p", s.top_p),
            ("top_k", s.top_k),
            ("seed", s.seed),
            ("presence_penalty", s.presence_penalty),
            ("frequency_penalty", s.frequency_penalty),
        ):
            if value is not None:
                attributes[f"gen_ai.request.{name}"] = value
        span.set_attributes(attributes)

    @staticmethod
    def ended(
        span: Span,
        code: str,
        output_tokens: int | None,
        finishes: Sequence[str | None],
        abort_reason: str | None,
        first_token_age_s: float | None,
    ) -> None:
        """Close out the span; ``first_token_age_s``: how long ago the first token came."""
        if not span.is_recording():
            return
        span.set_attribute("rpc.grpc.status_code", code)
        if first_token_age_s is not None:
            at = time.time_ns() - int(first_token_age_s * 1e9)
            span.add_event("gen_ai.first_token", timestamp=at)
        if output_tokens is not None:
            span.set_attribute("gen_ai.usage.output_tokens", output_tokens)
            span.set_attribute("gen_ai.response.finish_reasons", [f or "none" for f in finishes])
        if abort_reason is not None:
            span.add_event("tokenwire.abort", {"tokenwire.abort.reason": abort_reason})
        if code != "OK":
            span.set_status(Status(StatusCode.ERROR, code))

    def close(self) -> None:
        self._provider.shutdown()


def _otlp_exporter(endpoint: str) -> SpanExporter:
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter(endpoint=endpoint)


def current_trace_id() -> str | None:
    context = trace.get_current_span().get_span_context()
    return f"{context.trace_id:032x}" if context.is_valid else None
