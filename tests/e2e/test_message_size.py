"""A Complete answer is one message: what cannot fit is refused early and counted as such."""

from __future__ import annotations

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from tokenwire.v1 import generation_pb2 as pb

from ..helpers import async_wait_for
from .test_cancellation import metric

HUGE = pb.GenerateRequest(  # about 48 MB: 16 x 8192 tokens, 20 alternatives each
    prompt="x",
    sampling=pb.SamplingParams(n=16),
    stopping=pb.StoppingOptions(max_tokens=8192, ignore_eos=True),
    output=pb.OutputOptions(top_logprobs=20),
)


async def test_an_answer_sure_not_to_fit_is_refused_before_the_engine_runs(make_server, stub_for):
    server = await make_server()
    stub = await stub_for(server)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Complete(HUGE, timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "4194304-byte message limit" in (info.value.details() or "")
    status = rpc_status.from_call(info.value)  # type: ignore[arg-type]
    assert status is not None
    bad = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(bad)
    assert bad.field_violations[0].field == "stopping.max_tokens"
    code = "INVALID_ARGUMENT"
    assert metric(server, "tokenwire_requests_total", method="Complete", code=code) == 1
    assert metric(server, "tokenwire_tokens_total", kind="completion") == 0  # never submitted
    # Streamed, the same request is fine: each message is small.
    call = stub.Generate(HUGE)
    assert (await call.read()).token_ids
    call.cancel()
    await async_wait_for(lambda: server.engine.in_flight() == 0)


async def test_an_answer_that_outgrows_the_limit_ends_at_once_and_is_aborted(make_server, stub_for):
    server = await make_server(max_message_bytes=64 * 1024, sim_ttft_ms=0, sim_itl_ms=0)
    stub = await stub_for(server)
    request = pb.GenerateRequest(
        prompt="x",
        sampling=pb.SamplingParams(n=4),
        # A stop string could end it early, so it is not refused up front; this one
        # never matches, so the answer grows far past 64 KiB.
        stopping=pb.StoppingOptions(max_tokens=8000, ignore_eos=True, stop=["\x00never"]),
        output=pb.OutputOptions(top_logprobs=5),
    )
    call = stub.Complete(request, timeout=30)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "65536-byte message limit" in (info.value.details() or "")
    receipt = dict(await call.trailing_metadata() or ())
    assert receipt["tokenwire-abort-reason"] == "error"
    assert int(receipt["tokenwire-completion-tokens"]) < 4 * 8000 // 10  # stopped early on
    await async_wait_for(lambda: metric(server, "tokenwire_engine_requests_in_flight") == 0)
    assert metric(server, "tokenwire_aborts_total", reason="error") == 1
    code = "RESOURCE_EXHAUSTED"
    # Counted as the handler ends, which may be just after the client has the status.
    await async_wait_for(
        lambda: metric(server, "tokenwire_requests_total", method="Complete", code=code) == 1
    )
    assert metric(server, "tokenwire_requests_total", method="Complete", code="OK") == 0


async def test_an_answer_that_just_fits_is_sent_and_one_byte_less_is_not(make_server, stub_for):
    request = pb.GenerateRequest(
        request_id="same-answer",  # echoed in the answer: same size on every server
        prompt="x",
        sampling=pb.SamplingParams(n=2, seed=5),
        stopping=pb.StoppingOptions(max_tokens=64, ignore_eos=True),
        output=pb.OutputOptions(top_logprobs=3),
    )
    reference = await (await stub_for(await make_server())).Complete(request)
    size = reference.ByteSize()
    assert size > 1024

    exact = await make_server(max_message_bytes=size)
    answer = await (await stub_for(exact)).Complete(request)
    assert [c.text for c in answer.choices] == [c.text for c in reference.choices]

    short = await make_server(max_message_bytes=size - 1)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await (await stub_for(short)).Complete(request)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    code = "RESOURCE_EXHAUSTED"
    await async_wait_for(
        lambda: metric(short, "tokenwire_requests_total", method="Complete", code=code) == 1
    )
    assert short.engine.in_flight() == 0
