"""Traces (W3C context, GenAI attributes, events, OTLP export) and structured logs."""

from __future__ import annotations

import json
import threading
from concurrent import futures

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tokenwire.v1 import generation_pb2 as pb
from tokenwire.v1 import generation_pb2_grpc as pb_grpc

from ..helpers import async_wait_for, start_server_process, wait_for
from .test_cancellation import LONG

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = (("traceparent", f"00-{TRACE_ID}-{PARENT_ID}-01"),)


@pytest.fixture
async def traced(make_server):
    server = await make_server(sim_itl_ms=5)
    exporter = InMemorySpanExporter()
    server.tracing.add_exporter(exporter, batch=False)
    return server, exporter


async def test_a_span_per_call_continues_the_callers_trace(traced, stub_for):
    server, exporter = traced
    stub = await stub_for(server)
    req = pb.GenerateRequest(
        request_id="traced-1",
        prompt="x",
        sampling=pb.SamplingParams(temperature=0.5, seed=3),
        stopping=pb.StoppingOptions(max_tokens=6, ignore_eos=True),
    )
    [m async for m in stub.Generate(req, metadata=TRACEPARENT)]
    await async_wait_for(lambda: len(exporter.get_finished_spans()) == 1)
    span = exporter.get_finished_spans()[0]
    assert span.name == "tokenwire.v1.GenerationService/Generate"
    assert f"{span.context.trace_id:032x}" == TRACE_ID
    assert span.parent is not None and f"{span.parent.span_id:016x}" == PARENT_ID
    attrs = dict(span.attributes or {})
    assert attrs["rpc.system"] == "grpc" and attrs["rpc.grpc.status_code"] == "OK"
    assert attrs["gen_ai.operation.name"] == "text_completion"
    assert attrs["gen_ai.request.model"] == "tokenwire-sim"
    assert attrs["gen_ai.response.id"] == "traced-1"
    assert attrs["gen_ai.request.temperature"] == 0.5
    assert attrs["gen_ai.request.max_tokens"] == 6
    assert attrs["gen_ai.usage.output_tokens"] == 6
    assert attrs["gen_ai.usage.input_tokens"] > 0
    assert attrs["gen_ai.response.finish_reasons"] == ("length",)
    first = [e for e in span.events if e.name == "gen_ai.first_token"]
    assert len(first) == 1 and span.start_time < first[0].timestamp < span.end_time


async def test_an_aborted_call_has_an_abort_event_and_error_status(traced, stub_for):
    server, exporter = traced
    stub = await stub_for(server)
    call = stub.Generate(LONG)
    await call.read()
    call.cancel()
    await async_wait_for(lambda: len(exporter.get_finished_spans()) == 1)
    span = exporter.get_finished_spans()[0]
    assert not span.status.is_ok
    assert span.attributes["rpc.grpc.status_code"] == "CANCELLED"
    events = {e.name: dict(e.attributes or {}) for e in span.events}
    assert events["tokenwire.abort"] == {"tokenwire.abort.reason": "cancelled"}


class _Collector(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self) -> None:
        self.spans: list[str] = []
        self.got = threading.Event()

    def Export(self, request, context):  # noqa: N802
        for resource in request.resource_spans:
            for scope in resource.scope_spans:
                self.spans.extend(s.name for s in scope.spans)
        self.got.set()
        return trace_service_pb2.ExportTraceServiceResponse()


def test_spans_are_exported_over_otlp_when_the_endpoint_is_set():
    collector = _Collector()
    sink = grpc.server(futures.ThreadPoolExecutor(2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collector, sink)  # type: ignore[no-untyped-call]
    port = sink.add_insecure_port("127.0.0.1:0")
    sink.start()
    server = start_server_process(env={"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}"})
    try:
        channel = grpc.insecure_channel(server.target)
        pb_grpc.GenerationServiceStub(channel).Complete(
            pb.GenerateRequest(prompt="x", stopping=pb.StoppingOptions(max_tokens=2))
        )
        channel.close()
    finally:
        assert server.stop() == 0  # the exporter flushes on shutdown
        sink.stop(0)
    assert collector.got.wait(5)
    assert "tokenwire.v1.GenerationService/Complete" in collector.spans


def test_json_logs_carry_the_request_id():
    server = start_server_process(["--log-json", "--sim-itl-ms", "20"])
    try:
        channel = grpc.insecure_channel(server.target)
        stub = pb_grpc.GenerationServiceStub(channel)
        call = stub.Generate(
            pb.GenerateRequest(request_id="log-me", prompt="x", stopping=LONG.stopping),
            metadata=TRACEPARENT,
        )
        next(call)
        call.cancel()

        def logged() -> bool:
            return any("aborted the engine request" in line for line in server.log)

        wait_for(logged)
        channel.close()
    finally:
        assert server.stop() == 0
    entries = [json.loads(line) for line in server.log]  # every line
    abort = next(e for e in entries if "aborted the engine request" in e["message"])
    assert abort["request_id"] == "log-me"
    assert abort["trace_id"] == TRACE_ID  # the caller's trace, even with no exporter
    assert abort["level"] == "info" and abort["logger"] == "tokenwire.server"
    assert any("tokenwire serving" in e["message"] for e in entries)
