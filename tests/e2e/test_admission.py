"""Admission over the network: slots, a bounded queue, and deadline-aware refusal."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from tokenwire.server.app import Server
from tokenwire.v1 import generation_pb2 as pb
from tokenwire.v1 import generation_pb2_grpc as pb_grpc

from ..helpers import async_wait_for
from .test_cancellation import LONG, metric

GenerateCall = grpc.aio.UnaryStreamCall[pb.GenerateRequest, pb.GenerateResponse]


async def fill_slots_and_queue(
    server: Server, stub: pb_grpc.GenerationServiceAsyncStub, slots: int, waiting: int
) -> tuple[list[GenerateCall], list[GenerateCall]]:
    """Long streams: ``slots`` running (each has spoken), then ``waiting`` queued."""
    running = [stub.Generate(LONG) for _ in range(slots)]
    for call in running:
        await call.read()
    queued = [stub.Generate(LONG) for _ in range(waiting)]
    await async_wait_for(lambda: server.admission.queue_depth == waiting)
    return running, queued


def retry_info(error: grpc.aio.AioRpcError) -> error_details_pb2.RetryInfo:
    for key, value in error.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            status = status_pb2.Status.FromString(value)
            info = error_details_pb2.RetryInfo()
            assert status.details[0].Unpack(info)
            return info
    raise AssertionError("no status details")


async def test_burst_beyond_the_queue_is_refused_with_a_retry_hint(make_server, stub_for):
    server = await make_server(sim_itl_ms=10, max_concurrent_requests=2, max_queue=3)
    stub = await stub_for(server)
    running, queued = await fill_slots_and_queue(server, stub, 2, 3)
    assert metric(server, "tokenwire_queue_depth") == 3
    assert server.engine.in_flight() == 2  # the queue holds no engine request

    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Complete(LONG)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    hint = retry_info(info.value).retry_delay
    assert hint.seconds > 0 or hint.nanos > 0

    for call in running + queued:
        call.cancel()
    await async_wait_for(lambda: server.engine.in_flight() == 0 and server.admission.busy == 0)
    assert server.admission.queue_depth == 0
    assert (
        metric(server, "tokenwire_requests_total", method="Complete", code="RESOURCE_EXHAUSTED")
        == 1
    )


async def test_queued_requests_run_in_order_when_slots_free(make_server, stub_for):
    server = await make_server(sim_itl_ms=2, max_concurrent_requests=1, max_queue=10)
    stub = await stub_for(server)
    short = pb.GenerateRequest(
        prompt="x", stopping=pb.StoppingOptions(max_tokens=15, ignore_eos=True)
    )
    finished: list[int] = []

    async def run(i: int):
        reply = await stub.Complete(short)
        finished.append(i)
        return reply

    def admitted(count: int) -> Callable[[], bool]:
        return lambda: server.admission.busy + server.admission.queue_depth == count

    tasks = []
    for i in range(4):
        tasks.append(asyncio.create_task(run(i)))
        await async_wait_for(admitted(i + 1))
    replies = await asyncio.gather(*tasks)
    assert finished == [0, 1, 2, 3]
    assert replies[0].timing.queue_ms < replies[3].timing.queue_ms
    assert replies[3].timing.queue_ms > 0
    assert server.admission.busy == 0


async def test_cancel_while_queued_leaves_the_queue(make_server, stub_for):
    server = await make_server(sim_itl_ms=10, max_concurrent_requests=1, max_queue=5)
    stub = await stub_for(server)
    first = stub.Generate(LONG)
    await first.read()
    waiting = stub.Generate(LONG)
    await async_wait_for(lambda: server.admission.queue_depth == 1)
    waiting.cancel()
    await async_wait_for(lambda: server.admission.queue_depth == 0)
    assert server.engine.in_flight() == 1
    first.cancel()
    await async_wait_for(lambda: server.admission.busy == 0 and server.engine.in_flight() == 0)
    # The queue never held an engine request, so only the running one was aborted.
    assert metric(server, "tokenwire_aborts_total", reason="cancelled") == 1


async def test_deadline_too_short_for_the_first_token_is_refused_at_once(make_server, stub_for):
    server = await make_server(sim_ttft_ms=150, sim_itl_ms=1)
    stub = await stub_for(server)
    short = pb.GenerateRequest(prompt="x", stopping=pb.StoppingOptions(max_tokens=2))
    await asyncio.gather(*(stub.Complete(short) for _ in range(8)))  # learn the time to first token
    completions = metric(server, "tokenwire_tokens_total", kind="completion")
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Complete(short, timeout=0.08)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "deadline too short" in (info.value.details() or "")
    assert loop.time() - started < 0.07  # refused, not timed out
    assert metric(server, "tokenwire_tokens_total", kind="completion") == completions
    # A deadline that leaves room goes through.
    assert (await stub.Complete(short, timeout=5)).choices[0].token_ids


async def test_a_high_priority_request_overtakes_a_flood_of_low_ones(make_server, stub_for):
    server = await make_server(sim_itl_ms=2, max_concurrent_requests=1, max_queue=20)
    stub = await stub_for(server)
    short = pb.GenerateRequest(
        prompt="x", stopping=pb.StoppingOptions(max_tokens=20, ignore_eos=True)
    )
    running = stub.Generate(LONG)
    await running.read()
    ended: list[str] = []

    async def complete(name: str, priority: float) -> None:
        req = pb.GenerateRequest()
        req.CopyFrom(short)
        req.priority = priority
        await stub.Complete(req)
        ended.append(name)

    floods = []
    for i in range(8):
        floods.append(asyncio.create_task(complete(f"low-{i}", 0.1)))
        await async_wait_for(lambda: server.admission.queue_depth == len(floods))
    urgent = asyncio.create_task(complete("high", 0.9))
    await async_wait_for(lambda: server.admission.queue_depth == 9)
    running.cancel()  # the slot frees: the high one takes it, the flood after it
    await asyncio.wait_for(asyncio.gather(urgent, *floods), 20)
    assert ended == ["high", *(f"low-{i}" for i in range(8))]
