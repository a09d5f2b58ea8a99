"""Resumable streams over gRPC: a dropped connection is not a lost answer (docs/resume.md)."""

from __future__ import annotations

import asyncio
import sys

import grpc
import pytest

from tokenwire.server.app import Server
from tokenwire.v1 import generation_pb2 as pb
from tokenwire.v1 import generation_pb2_grpc as pb_grpc

from ..helpers import async_wait_for
from .test_cancellation import metric


def resumable(
    request_id: str, max_tokens: int = 60, grace_ms: int = 10_000, seed: int = 11
) -> pb.GenerateRequest:
    return pb.GenerateRequest(
        request_id=request_id,
        prompt="tell me a long story",
        sampling=pb.SamplingParams(seed=seed, temperature=1.0),
        stopping=pb.StoppingOptions(max_tokens=max_tokens, ignore_eos=True),
        stream=pb.StreamOptions(resume_grace_ms=grace_ms),
    )


def whole(req: pb.GenerateRequest) -> pb.GenerateRequest:
    """The same request, not resumable (for Complete)."""
    plain = pb.GenerateRequest()
    plain.CopyFrom(req)
    plain.stream.ClearField("resume_grace_ms")
    plain.request_id = ""
    return plain


async def channel_to(server: Server) -> tuple[grpc.aio.Channel, object]:
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
    return channel, pb_grpc.GenerationServiceStub(channel)


def auth(key: str | None) -> tuple[tuple[str, str], ...]:
    return () if key is None else (("authorization", f"Bearer {key}"),)


async def read_some(call: grpc.aio.UnaryStreamCall, count: int) -> list[pb.GenerateResponse]:  # type: ignore[type-arg]
    got = []
    for _ in range(count):
        msg = await call.read()
        assert isinstance(msg, pb.GenerateResponse)
        got.append(msg)
    return got


async def read_all(call: grpc.aio.UnaryStreamCall) -> list[pb.GenerateResponse]:  # type: ignore[type-arg]
    got: list[pb.GenerateResponse] = []
    for _ in range(100_000):  # bounded: no test stream is this long
        msg = await call.read()
        if not isinstance(msg, pb.GenerateResponse):  # grpc.aio.EOF
            return got
        got.append(msg)
    raise AssertionError("the stream did not end")


def check_sequence(messages: list[pb.GenerateResponse]) -> None:
    assert [m.sequence for m in messages] == list(range(1, len(messages) + 1))


async def test_a_closed_channel_resumes_on_another_with_nothing_lost_or_twice(make_server):
    server = await make_server(sim_itl_ms=5)
    req = resumable("story")
    first, stub = await channel_to(server)
    call = stub.Generate(req)  # type: ignore[attr-defined]
    before = await read_some(call, 5)
    await first.close()  # the connection ends without an Abort: the stream detaches
    await async_wait_for(lambda: server.metrics.detached_streams == 1)
    assert server.engine.in_flight() == 1  # still generating, for the grace

    second, stub2 = await channel_to(server)
    try:
        resumed = stub2.Resume(  # type: ignore[attr-defined]
            pb.ResumeRequest(request_id="story", after_sequence=before[-1].sequence)
        )
        after = await read_all(resumed)
        assert await resumed.code() == grpc.StatusCode.OK
        everything = before + after
        check_sequence(everything)  # none missing, none twice
        answer = await stub2.Complete(whole(req))  # type: ignore[attr-defined]
        assert "".join(m.text for m in everything) == answer.choices[0].text
        assert everything[-1].usage.completion_tokens == 60
        assert metric(server, "tokenwire_resumes_total", outcome="resumed") == 1
        assert metric(server, "tokenwire_aborts_total") == 0
        assert server.metrics.detached_streams == 1  # finished, kept for its grace
    finally:
        await second.close()


async def test_plain_streams_carry_no_sequence_and_a_finished_one_is_fetched_again(
    make_server, stub_for
):
    server = await make_server()
    stub = await stub_for(server)
    plain = [m async for m in stub.Generate(whole(resumable("x", max_tokens=5)))]
    assert {m.sequence for m in plain} == {0}
    done = [m async for m in stub.Generate(resumable("done", max_tokens=5))]
    check_sequence(done)
    again = [m async for m in stub.Resume(pb.ResumeRequest(request_id="done", after_sequence=2))]
    assert again == done[2:]  # a finished stream stays for its grace after its end
    assert metric(server, "tokenwire_replayed_messages_total") == len(done) - 2
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.Resume(pb.ResumeRequest(request_id="done", after_sequence=99)).read()
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "after_sequence" in (refused.value.details() or "")


async def test_after_the_grace_the_engine_was_freed_and_resume_is_not_found(make_server):
    server = await make_server(sim_itl_ms=5)
    first, stub = await channel_to(server)
    call = stub.Generate(resumable("gone", max_tokens=5000, grace_ms=300))  # type: ignore[attr-defined]
    await read_some(call, 2)
    await first.close()
    await async_wait_for(lambda: server.metrics.detached_streams == 1)
    # Freed at the grace (0.3 s), well before the 5,000 tokens' 25 s.
    await async_wait_for(lambda: server.engine.in_flight() == 0, within=5)
    assert metric(server, "tokenwire_aborts_total", reason="detached") == 1
    assert metric(server, "tokenwire_engine_requests_in_flight") == 0
    assert server.metrics.detached_streams == 0 and len(server.core.resumes) == 0
    second, stub2 = await channel_to(server)
    try:
        with pytest.raises(grpc.aio.AioRpcError) as gone:
            await stub2.Resume(pb.ResumeRequest(request_id="gone")).read()  # type: ignore[attr-defined]
        assert gone.value.code() == grpc.StatusCode.NOT_FOUND
        assert metric(server, "tokenwire_resumes_total", outcome="not_found") == 1
    finally:
        await second.close()


async def test_abort_of_a_detached_stream_frees_it_at_once(make_server, stub_for):
    server = await make_server(sim_itl_ms=5)
    first, stub = await channel_to(server)
    call = stub.Generate(resumable("cut", max_tokens=5000))  # type: ignore[attr-defined]
    await read_some(call, 2)
    await first.close()
    await async_wait_for(lambda: server.metrics.detached_streams == 1)
    other = await stub_for(server)
    assert list((await other.Abort(pb.AbortRequest(request_ids=["cut"]))).aborted) == ["cut"]
    await async_wait_for(lambda: server.engine.in_flight() == 0, within=2)
    assert metric(server, "tokenwire_aborts_total", reason="aborted") == 1
    # What was kept still says how it ended.
    with pytest.raises(grpc.aio.AioRpcError) as ended:
        await read_all(other.Resume(pb.ResumeRequest(request_id="cut")))
    assert ended.value.code() == grpc.StatusCode.CANCELLED


async def test_one_stream_attached_at_a_time(make_server, stub_for):
    server = await make_server(sim_itl_ms=5)
    stub = await stub_for(server)
    call = stub.Generate(resumable("one", max_tokens=5000))
    await read_some(call, 1)
    with pytest.raises(grpc.aio.AioRpcError) as second:
        await stub.Resume(pb.ResumeRequest(request_id="one")).read()
    assert second.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert metric(server, "tokenwire_resumes_total", outcome="conflict") == 1
    assert isinstance(await call.read(), pb.GenerateResponse)  # the first one is untouched
    with pytest.raises(grpc.aio.AioRpcError) as live:
        await stub.Generate(resumable("one")).read()
    assert live.value.code() == grpc.StatusCode.ALREADY_EXISTS
    await stub.Abort(pb.AbortRequest(request_ids=["one"]))
    await async_wait_for(lambda: server.engine.in_flight() == 0)


async def test_only_the_api_key_that_started_it_may_resume(make_server, tmp_path):
    keys = tmp_path / "keys"
    keys.write_text("alice\nbob\n")
    server = await make_server(api_keys_file=keys, sim_itl_ms=5)
    first, stub = await channel_to(server)
    call = stub.Generate(resumable("mine", max_tokens=5000), metadata=auth("alice"))  # type: ignore[attr-defined]
    await read_some(call, 1)
    await first.close()
    await async_wait_for(lambda: server.metrics.detached_streams == 1)
    second, stub2 = await channel_to(server)
    try:
        with pytest.raises(grpc.aio.AioRpcError) as other:
            await stub2.Resume(pb.ResumeRequest(request_id="mine"), metadata=auth("bob")).read()  # type: ignore[attr-defined]
        assert other.value.code() == grpc.StatusCode.NOT_FOUND
        resumed = stub2.Resume(pb.ResumeRequest(request_id="mine"), metadata=auth("alice"))  # type: ignore[attr-defined]
        assert (await resumed.read()).sequence == 1
        resumed.cancel()
        await stub2.Abort(pb.AbortRequest(request_ids=["mine"]), metadata=auth("alice"))  # type: ignore[attr-defined]
        await async_wait_for(lambda: server.engine.in_flight() == 0)
    finally:
        await second.close()


async def test_the_grace_is_capped_by_the_server(make_server, stub_for):
    server = await make_server(max_resume_grace_ms=1000)
    stub = await stub_for(server)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.Generate(resumable("long", grace_ms=1001)).read()
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (refused.value.details() or "").startswith("stream.resume_grace_ms:")
    assert server.engine.in_flight() == 0 and len(server.core.resumes) == 0


async def test_500_detached_streams_stay_within_the_store_bound(make_server):
    total = 64 * 1024
    server = await make_server(sim_itl_ms=20, resume_total_bytes=total, max_concurrent_requests=600)
    first, stub = await channel_to(server)
    calls = [
        stub.Generate(resumable(f"r{i}", max_tokens=5000))  # type: ignore[attr-defined]
        for i in range(500)
    ]
    for call in calls:
        await call.read()
    await first.close()
    await async_wait_for(lambda: server.metrics.detached_streams + _evicted(server) >= 500, 20)
    resumes = server.core.resumes
    peak = 0
    for _ in range(50):  # half a second of generation, ~25 tokens a stream
        peak = max(peak, resumes.bytes)
        assert resumes.bytes <= total + 1024  # at most one message over, just before eviction
        await asyncio.sleep(0.01)
    assert peak > total // 2  # the bound was what held it, not a lack of messages
    # What the count says is what Python holds for the kept messages (no more).
    held = sum(
        sys.getsizeof(data) + 56 + 8 for kept in resumes.streams() for data, _ in kept.messages
    )
    assert held <= resumes.bytes
    assert _evicted(server) > 0  # the oldest detached ones gave way
    # Each one once, kept or evicted; the engine runs the kept ones only. (An
    # eviction's abort lands when its task runs next: polled, bounded.)
    await async_wait_for(
        lambda: (
            server.metrics.detached_streams + _evicted(server) == 500
            and server.engine.in_flight() == server.metrics.detached_streams
        )
    )
    _evicted_before = server.metrics._aborts["detached"]
    await server.stop(grace=0)
    assert server.engine.in_flight() == 0
    assert server.metrics._aborts["shutdown"] + _evicted_before == 500


def detached(server: Server, request_id: str) -> bool:
    """Whether that request's stream is kept with nobody attached."""
    kept = {k.request_id: k for k in server.core.resumes.streams()}.get(request_id)
    return kept is not None and not kept.attached


def _evicted(server: Server) -> float:
    return metric(server, "tokenwire_aborts_total", reason="detached")


async def test_a_drain_aborts_detached_streams_with_reason_shutdown(make_server):
    server = await make_server(sim_itl_ms=5)
    first, stub = await channel_to(server)
    call = stub.Generate(resumable("drained", max_tokens=5000))  # type: ignore[attr-defined]
    await read_some(call, 1)
    await first.close()
    await async_wait_for(lambda: server.metrics.detached_streams == 1)
    await server.stop(grace=5)  # no live door: the drain does not wait for the grace
    assert server.engine.in_flight() == 0
    assert server.metrics._aborts["shutdown"] == 1  # the exporter is closed by now


async def test_the_generate_deadline_bounds_the_generation_a_resume_deadline_its_call(
    make_server, stub_for
):
    server = await make_server(sim_itl_ms=5)
    first, stub = await channel_to(server)
    timed = stub.Generate(resumable("timed", max_tokens=5000), timeout=0.5)  # type: ignore[attr-defined]
    await read_some(timed, 1)
    await first.close()  # detached; its deadline still stands
    await async_wait_for(lambda: server.engine.in_flight() == 0, within=5)
    assert metric(server, "tokenwire_aborts_total", reason="deadline") == 1

    other, stub2 = await channel_to(server)
    try:
        await read_some(stub2.Generate(resumable("open", max_tokens=5000)), 1)  # type: ignore[attr-defined]
        await other.close()
        await async_wait_for(lambda: detached(server, "open"))
        again = await stub_for(server)
        short = again.Resume(pb.ResumeRequest(request_id="open"), timeout=0.3)
        with pytest.raises(grpc.aio.AioRpcError) as expired:
            await read_all(short)
        assert expired.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        # Only the Resume call ended: the stream detached again and goes on.
        await async_wait_for(lambda: detached(server, "open"))
        assert server.engine.in_flight() == 1
        await again.Abort(pb.AbortRequest(request_ids=["open"]))
        await async_wait_for(lambda: server.engine.in_flight() == 0)
    finally:
        await other.close()


async def test_a_drain_cuts_attached_resumable_streams_with_reason_shutdown(make_server, stub_for):
    server = await make_server(sim_itl_ms=5)
    stub = await stub_for(server)
    call = stub.Generate(resumable("attached", max_tokens=5000))
    await read_some(call, 1)
    await server.stop(grace=0.2)
    with pytest.raises(grpc.aio.AioRpcError) as cut:
        await read_all(call)
    assert cut.value.code() == grpc.StatusCode.UNAVAILABLE
    assert server.engine.in_flight() == 0
    assert server.metrics._aborts["shutdown"] == 1  # the exporter is closed by now
