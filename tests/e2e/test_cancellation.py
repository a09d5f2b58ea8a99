"""Every way a client can leave frees the engine request at once, and metrics prove it."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap

import grpc
import pytest

from tokenwire.server.app import Server
from tokenwire.v1 import generation_pb2 as pb
from tokenwire.v1 import generation_pb2_grpc as pb_grpc

from ..helpers import async_wait_for, metric_value, sample, wait_for

LONG = pb.GenerateRequest(
    prompt="go on forever", stopping=pb.StoppingOptions(max_tokens=5000, ignore_eos=True)
)


def metric(server: Server, name: str, **labels: str) -> float:
    return sample(server.metrics.text().decode(), name, labels)


async def test_many_concurrent_cancels_free_every_engine_request(make_server, stub_for):
    server = await make_server(sim_ttft_ms=1, sim_itl_ms=10)
    stub = await stub_for(server)
    calls = [stub.Generate(LONG) for _ in range(100)]
    for call in calls:  # each stream is mid-way: it has produced tokens
        assert (await call.read()).token_ids
    assert metric(server, "tokenwire_engine_requests_in_flight") == 100
    assert metric(server, "tokenwire_streams_active") == 100
    for call in calls:
        call.cancel()
    await async_wait_for(lambda: server.engine.in_flight() == 0, within=5)
    await async_wait_for(
        lambda: metric(server, "tokenwire_aborts_total", reason="cancelled") == 100
    )
    assert metric(server, "tokenwire_engine_requests_in_flight") == 0
    await async_wait_for(lambda: metric(server, "tokenwire_streams_active") == 0)
    assert metric(server, "tokenwire_requests_total", method="Generate", code="CANCELLED") == 100
    assert not server.core.live


@pytest.mark.parametrize("method", ["Generate", "Complete"])
async def test_expired_deadlines_abort_with_reason_deadline(make_server, stub_for, method):
    server = await make_server(sim_ttft_ms=1, sim_itl_ms=10)
    stub = await stub_for(server)

    async def run() -> grpc.StatusCode:
        try:
            if method == "Generate":
                async for _ in stub.Generate(LONG, timeout=0.3):
                    pass
            else:
                await stub.Complete(LONG, timeout=0.3)
        except grpc.aio.AioRpcError as error:
            return error.code()
        return grpc.StatusCode.OK

    codes = await asyncio.gather(*(run() for _ in range(20)))
    assert set(codes) == {grpc.StatusCode.DEADLINE_EXCEEDED}
    await async_wait_for(lambda: server.engine.in_flight() == 0)
    await async_wait_for(lambda: metric(server, "tokenwire_aborts_total", reason="deadline") == 20)
    assert metric(server, "tokenwire_aborts_total", reason="cancelled") == 0
    assert metric(server, "tokenwire_requests_total", method=method, code="DEADLINE_EXCEEDED") == 20


async def test_cancelled_complete_aborts(make_server, stub_for):
    server = await make_server(sim_ttft_ms=1, sim_itl_ms=10)
    stub = await stub_for(server)
    call = stub.Complete(LONG)
    await async_wait_for(lambda: server.engine.in_flight() == 1)
    call.cancel()
    await async_wait_for(lambda: server.engine.in_flight() == 0)
    await async_wait_for(lambda: metric(server, "tokenwire_aborts_total", reason="cancelled") == 1)


async def test_finished_requests_are_not_counted_as_aborts(stub, server):
    req = pb.GenerateRequest(prompt="x", stopping=pb.StoppingOptions(max_tokens=5))
    for _ in range(5):
        [m async for m in stub.Generate(req)]
        await stub.Complete(req)
    assert server.engine.in_flight() == 0
    assert metric(server, "tokenwire_aborts_total") == 0
    assert metric(server, "tokenwire_requests_total", method="Generate", code="OK") == 5
    assert metric(server, "tokenwire_tokens_total", kind="completion") == 50


async def test_duplicate_live_request_id_is_refused(make_server, stub_for):
    server = await make_server(sim_ttft_ms=1, sim_itl_ms=10)
    stub = await stub_for(server)
    live = stub.Generate(pb.GenerateRequest(request_id="dup", prompt="a", stopping=LONG.stopping))
    await live.read()
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Complete(pb.GenerateRequest(request_id="dup", prompt="b"))
    assert info.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert "dup" in (info.value.details() or "")
    live.cancel()
    await async_wait_for(lambda: server.engine.in_flight() == 0)
    # Once the first is gone, the id is free again.
    again = await stub.Complete(
        pb.GenerateRequest(request_id="dup", prompt="b", stopping=pb.StoppingOptions(max_tokens=2))
    )
    assert again.request_id == "dup"


CLIENT = textwrap.dedent(
    """
    import sys, grpc
    from tokenwire.v1 import generation_pb2 as pb, generation_pb2_grpc as pb_grpc
    stub = pb_grpc.GenerationServiceStub(grpc.insecure_channel(sys.argv[1]))
    stopping = pb.StoppingOptions(max_tokens=5000, ignore_eos=True)
    for msg in stub.Generate(pb.GenerateRequest(prompt="x", stopping=stopping)):
        print("token", flush=True)
    """
)


def test_killed_client_process_frees_its_request(slow_sim_server):
    url = slow_sim_server.metrics_url
    client = subprocess.Popen(
        [sys.executable, "-c", CLIENT, slow_sim_server.target], stdout=subprocess.PIPE, text=True
    )
    assert client.stdout is not None
    try:
        assert client.stdout.readline() == "token\n"  # mid-stream
        wait_for(lambda: metric_value(url, "tokenwire_engine_requests_in_flight") == 1)
        os.kill(client.pid, signal.SIGKILL)  # no goodbye: the connection just drops
        client.wait(10)
    finally:
        client.stdout.close()
        if client.poll() is None:
            client.kill()
            client.wait(10)
    wait_for(lambda: metric_value(url, "tokenwire_engine_requests_in_flight") == 0, timeout=10)
    assert metric_value(url, "tokenwire_aborts_total", {"reason": "cancelled"}) == 1
    assert metric_value(url, "tokenwire_streams_active") == 0


async def test_a_thousand_concurrent_cancels(make_server, stub_for):
    # Slow tokens: a thousand streams stay live without flooding this 2-core box.
    server = await make_server(sim_ttft_ms=1, sim_itl_ms=1000, max_concurrent_requests=1000)
    stub = await stub_for(server)
    calls = [stub.Generate(LONG) for _ in range(1000)]
    await asyncio.gather(*(call.read() for call in calls))  # every one of them is streaming
    assert server.engine.in_flight() == 1000
    for call in calls:
        call.cancel()
    await async_wait_for(lambda: server.engine.in_flight() == 0, within=10)
    await async_wait_for(
        lambda: metric(server, "tokenwire_aborts_total", reason="cancelled") == 1000, within=10
    )
    await async_wait_for(lambda: metric(server, "tokenwire_streams_active") == 0, within=10)
    assert server.admission.busy == 0 and not server.core.live
    one = pb.GenerateRequest(prompt="x", stopping=pb.StoppingOptions(max_tokens=1))
    assert (await stub.Complete(one)).choices


async def test_abort_latency_is_measured(make_server, stub_for):
    server = await make_server(sim_itl_ms=5)
    stub = await stub_for(server)
    calls = [stub.Generate(LONG) for _ in range(10)]
    for call in calls:
        await call.read()
        call.cancel()
    await async_wait_for(lambda: server.engine.in_flight() == 0)
    count = "tokenwire_abort_latency_seconds_count"
    await async_wait_for(lambda: metric(server, count, reason="cancelled") == 10)
    # How fast is the benchmark's business (bench/); here: every abort is measured.
    assert metric(server, "tokenwire_abort_latency_seconds_sum", reason="cancelled") > 0


async def test_shutdown_counts_cut_streams_as_unavailable_and_client_cancels_as_cancelled():
    from tokenwire.server.settings import Settings

    server = Server(Settings(port=0, metrics_port=0, http_port=0, sim_ttft_ms=1, sim_itl_ms=10))
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
    stub = pb_grpc.GenerationServiceStub(channel)
    cut, left = stub.Generate(LONG), stub.Generate(LONG)
    await cut.read()
    await left.read()
    stopping = asyncio.create_task(server.stop(grace=0.5))
    await async_wait_for(lambda: server.core.grace_ends_at is not None)
    left.cancel()  # its client leaves during the grace: a plain cancel
    await async_wait_for(lambda: metric(server, "tokenwire_aborts_total", reason="cancelled") == 1)
    await asyncio.wait_for(stopping, 10)  # the other one is cut when the grace runs out
    # The server has stopped, and with it its exporter: read the counters behind it.
    assert server.metrics._aborts["shutdown"] == 1
    assert server.metrics._aborts["cancelled"] == 1
    assert server.metrics._requests["Generate", "UNAVAILABLE"] == 1
    assert server.metrics._requests["Generate", "CANCELLED"] == 1
    await channel.close()
