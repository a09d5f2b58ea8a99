"""Fault tests: each ends with no engine request in flight and a healthy server."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap

import grpc
import psutil
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tokenwire.server.app import Server
from tokenwire.server.settings import Settings
from tokenwire.v1 import generation_pb2 as pb

from ..faulty import FaultyEngine
from ..helpers import async_wait_for
from .test_cancellation import LONG, metric

SHORT = pb.GenerateRequest(prompt="x", stopping=pb.StoppingOptions(max_tokens=5))


async def assert_healthy(server: Server, stub) -> None:
    await async_wait_for(lambda: server.engine.in_flight() == 0)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        reply = await health.Check(health_pb2.HealthCheckRequest())  # type: ignore[attr-defined]
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


@pytest.fixture
async def faulty_server(request):
    fault, settings = request.param
    server = Server(
        Settings(port=0, metrics_port=0, http_port=0, **settings), engine=FaultyEngine(fault)
    )
    await server.start()
    yield server
    await server.stop(grace=0)


@pytest.mark.parametrize("faulty_server", [("raise", {})], indirect=True)
@pytest.mark.parametrize("method", ["Generate", "Complete"])
async def test_engine_error_mid_stream_is_internal_and_the_server_goes_on(
    faulty_server, stub_for, method
):
    stub = await stub_for(faulty_server)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        if method == "Generate":
            async for _ in stub.Generate(LONG):
                pass
        else:
            await stub.Complete(LONG)
    assert info.value.code() == grpc.StatusCode.INTERNAL
    assert "injected failure" in (info.value.details() or "")
    # The engine ended the request itself: nothing left for the server to abort.
    assert metric(faulty_server, "tokenwire_aborts_total", reason="error") == 0
    assert faulty_server.engine.in_flight() == 0
    code = "INTERNAL"
    assert metric(faulty_server, "tokenwire_requests_total", method=method, code=code) == 1
    faulty_server.engine.fault = "none"  # the engine recovers; the server never went down
    assert (await stub.Complete(SHORT)).choices
    await assert_healthy(faulty_server, stub)


@pytest.mark.parametrize(
    "faulty_server", [("hang", {"engine_stall_timeout_s": 0.3})], indirect=True
)
async def test_a_hung_engine_request_is_aborted_with_unavailable(faulty_server, stub_for):
    stub = await stub_for(faulty_server)
    call = stub.Generate(LONG)
    first = await call.read()
    assert first.token_ids
    with pytest.raises(grpc.aio.AioRpcError) as info:
        while True:  # bounded by the engine stall timeout
            await call.read()
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    receipt = dict(await call.trailing_metadata())
    assert receipt["tokenwire-abort-reason"] == "error"
    assert metric(faulty_server, "tokenwire_aborts_total", reason="error") == 1
    await assert_healthy(faulty_server, stub)


STOPPED_CLIENT = textwrap.dedent(
    """
    import sys, time, grpc
    from tokenwire.v1 import generation_pb2 as pb, generation_pb2_grpc as pb_grpc
    stub = pb_grpc.GenerationServiceStub(grpc.insecure_channel(sys.argv[1]))
    stopping = pb.StoppingOptions(max_tokens=8000, ignore_eos=True)
    calls = [stub.Generate(pb.GenerateRequest(prompt="x", stopping=stopping)) for _ in range(20)]
    for call in calls:
        next(call)
    print("reading no more", flush=True)
    time.sleep(120)
    """
)


async def test_readers_that_stop_reading_are_bounded_then_aborted(make_server):
    # The engine is as fast as it gets; the readers take nothing after their first message.
    server = await make_server(sim_ttft_ms=0, sim_itl_ms=0, stall_timeout_s=2.0)
    client = await asyncio.create_subprocess_exec(
        sys.executable, "-c", STOPPED_CLIENT, f"127.0.0.1:{server.port}", stdout=subprocess.PIPE
    )
    assert client.stdout is not None
    try:
        line = await asyncio.wait_for(client.stdout.readline(), 30)
        assert line == b"reading no more\n"
        os.kill(client.pid, signal.SIGSTOP)  # its socket buffers fill; flow control holds us
        me = psutil.Process()
        await async_wait_for(lambda: server.engine.in_flight() == 20)
        before = me.memory_info().rss
        generated: list[int] = []

        def plateaued() -> bool:  # flow control holds the writes, so generation stops
            generated.append(sum(h._sequences[0].count for h in list(server.engine._live)))
            return len(generated) > 3 and generated[-1] == generated[-3] > 0

        await async_wait_for(plateaued, within=5, interval=0.05)
        assert me.memory_info().rss - before < 20 * 2**20
        assert generated[-1] < 20 * 8000 / 2  # far from the requests' natural end
        await async_wait_for(lambda: server.engine.in_flight() == 0, within=5)
        assert metric(server, "tokenwire_aborts_total", reason="stalled") == 20
    finally:
        client.kill()
        await asyncio.wait_for(client.wait(), 10)
    await async_wait_for(lambda: metric(server, "tokenwire_streams_active") == 0)
    assert (await asyncio.wait_for(_complete(server), 5)).choices


async def _complete(server: Server) -> pb.CompleteResponse:
    from tokenwire.v1 import generation_pb2_grpc as pb_grpc

    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        return await pb_grpc.GenerationServiceStub(channel).Complete(SHORT)


async def test_health_turns_not_serving_when_the_engine_dies(make_server, stub_for):
    server = await make_server()
    stub = await stub_for(server)
    assert (await stub.Complete(SHORT)).choices
    await server.engine.close()  # the engine is gone: it reports itself unhealthy

    async def status() -> int:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            reply = await health.Check(health_pb2.HealthCheckRequest())  # type: ignore[attr-defined]
            return int(reply.status)

    async def not_serving() -> bool:
        return await status() == health_pb2.HealthCheckResponse.NOT_SERVING

    await async_wait_for(not_serving, within=5)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Complete(SHORT)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
