"""Abort by id, as a gateway uses it on behalf of the clients it fronts."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from tokenwire.v1 import generation_pb2 as pb

from ..helpers import async_wait_for
from ..http.conftest import open_stream
from .test_cancellation import LONG, metric


def long(request_id: str) -> pb.GenerateRequest:
    req = pb.GenerateRequest()
    req.CopyFrom(LONG)
    req.request_id = request_id
    return req


async def ending(call: grpc.aio.UnaryStreamCall) -> grpc.StatusCode:  # type: ignore[type-arg]
    for _ in range(100_000):  # bounded: a stream of LONG has 5,000 tokens
        try:
            if await call.read() is grpc.aio.EOF:
                break
        except grpc.aio.AioRpcError:
            break
    return await call.code()


async def test_abort_ends_the_named_streams_at_once_and_only_them(make_server, stub_for):
    server = await make_server(sim_itl_ms=5)
    stub = await stub_for(server)
    calls = {rid: stub.Generate(long(rid)) for rid in ("a", "b", "c")}
    for call in calls.values():
        await call.read()
    answer = await stub.Abort(pb.AbortRequest(request_ids=["a", "b", "not-live", "a"]))
    assert list(answer.aborted) == ["a", "b"]  # each live one once; the rest ignored

    for rid in ("a", "b"):
        assert await asyncio.wait_for(ending(calls[rid]), 5) == grpc.StatusCode.CANCELLED
        assert "aborted" in (await calls[rid].details() or "")
    await async_wait_for(lambda: server.engine.in_flight() == 1)
    assert metric(server, "tokenwire_aborts_total", reason="aborted") == 2
    assert metric(server, "tokenwire_requests_total", method="Generate", code="CANCELLED") == 2
    assert isinstance(await calls["c"].read(), pb.GenerateResponse)  # untouched, still going
    assert set(server.core.live) == {"c"}

    calls["c"].cancel()
    await async_wait_for(lambda: server.engine.in_flight() == 0 and not server.core.live)
    assert metric(server, "tokenwire_aborts_total", reason="cancelled") == 1


async def test_abort_takes_a_request_out_of_the_queue(make_server, stub_for):
    server = await make_server(sim_itl_ms=5, max_concurrent_requests=1, max_queue=4)
    stub = await stub_for(server)
    running = stub.Generate(long("running"))
    await running.read()
    queued = stub.Generate(long("queued"))
    await async_wait_for(lambda: server.admission.queue_depth == 1)
    assert list((await stub.Abort(pb.AbortRequest(request_ids=["queued"]))).aborted) == ["queued"]
    assert await asyncio.wait_for(ending(queued), 5) == grpc.StatusCode.CANCELLED
    assert server.admission.queue_depth == 0
    assert server.engine.in_flight() == 1  # it never reached the engine; the other runs on
    running.cancel()
    await async_wait_for(lambda: server.engine.in_flight() == 0 and server.admission.busy == 0)


async def test_abort_ends_an_http_stream_with_an_error_event(make_server, stub_for):
    server = await make_server(sim_itl_ms=5)
    stub = await stub_for(server)
    body = {
        "model": server.engine.description.name,
        "messages": [{"role": "user", "content": "go on"}],
        "max_tokens": 5000,
        "ignore_eos": True,
        "stream": True,
    }
    reader, writer = await open_stream(server.http_port, body, "X-Request-Id: web-1\r\n")
    try:
        assert list((await stub.Abort(pb.AbortRequest(request_ids=["web-1"]))).aborted) == ["web-1"]
        # The stream ends: an error event, then the chunked body's last chunk.
        rest = await asyncio.wait_for(reader.readuntil(b"\r\n0\r\n\r\n"), 5)
        assert b'"code":"aborted"' in rest.replace(b" ", b"")
        await async_wait_for(lambda: server.engine.in_flight() == 0)
        assert metric(server, "tokenwire_aborts_total", reason="aborted") == 1
    finally:
        writer.close()


async def test_abort_needs_a_key_like_every_rpc(make_server, stub_for):
    server = await make_server(api_key="k")
    stub = await stub_for(server)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Abort(pb.AbortRequest(request_ids=["x"]))
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    answer = await stub.Abort(
        pb.AbortRequest(request_ids=["x"]), metadata=(("authorization", "Bearer k"),)
    )
    assert list(answer.aborted) == []
