"""Bad input gets a clear status naming the field, and leaves no trace on the server."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from tokenwire.v1 import generation_pb2 as pb

from .test_cancellation import metric

OK_STOP = pb.StoppingOptions(max_tokens=4)
INVALID = grpc.StatusCode.INVALID_ARGUMENT


def gen(**fields: object) -> pb.GenerateRequest:
    fields.setdefault("prompt", "hello")
    return pb.GenerateRequest(**fields)  # type: ignore[arg-type]


CASES = [
    ("no input", pb.GenerateRequest(), INVALID, "input"),
    ("empty prompt", gen(prompt=""), INVALID, "prompt"),
    ("empty token ids", gen(prompt=None, token_ids=pb.TokenIds()), INVALID, "token_ids.ids"),
    (
        "token id beyond vocab",
        gen(prompt=None, token_ids=pb.TokenIds(ids=[5, 10_000_000])),
        INVALID,
        "token_ids.ids[1]",
    ),
    (
        "no chat messages",
        gen(prompt=None, messages=pb.ChatMessages()),
        INVALID,
        "messages.messages",
    ),
    (
        "chat role missing",
        gen(
            prompt=None,
            messages=pb.ChatMessages(
                messages=[pb.ChatMessage(role="user", content="a"), pb.ChatMessage(content="b")]
            ),
        ),
        INVALID,
        "messages.messages[1].role",
    ),
    (
        "max_tokens 0",
        gen(stopping=pb.StoppingOptions(max_tokens=0)),
        INVALID,
        "stopping.max_tokens",
    ),
    (
        "max_tokens above limit",
        gen(stopping=pb.StoppingOptions(max_tokens=10**9)),
        INVALID,
        "stopping.max_tokens",
    ),
    (
        "min above max",
        gen(stopping=pb.StoppingOptions(max_tokens=5, min_tokens=6)),
        INVALID,
        "stopping.min_tokens",
    ),
    ("empty stop", gen(stopping=pb.StoppingOptions(stop=["ok", ""])), INVALID, "stopping.stop[1]"),
    ("too many stops", gen(stopping=pb.StoppingOptions(stop=["s"] * 17)), INVALID, "stopping.stop"),
    (
        "stop too long",
        gen(stopping=pb.StoppingOptions(stop=["x" * 257])),
        INVALID,
        "stopping.stop[0]",
    ),
    (
        "stop token beyond vocab",
        gen(stopping=pb.StoppingOptions(stop_token_ids=[3, 99_999_999])),
        INVALID,
        "stopping.stop_token_ids[1]",
    ),
    ("n 0", gen(sampling=pb.SamplingParams(n=0)), INVALID, "sampling.n"),
    ("n too big", gen(sampling=pb.SamplingParams(n=1000)), INVALID, "sampling.n"),
    (
        "negative temperature",
        gen(sampling=pb.SamplingParams(temperature=-1)),
        INVALID,
        "sampling.temperature",
    ),
    (
        "nan temperature",
        gen(sampling=pb.SamplingParams(temperature=float("nan"))),
        INVALID,
        "sampling.temperature",
    ),
    ("top_p 0", gen(sampling=pb.SamplingParams(top_p=0)), INVALID, "sampling.top_p"),
    ("priority above 1", gen(priority=1.5), INVALID, "priority"),
    ("priority below 0", gen(priority=-0.1), INVALID, "priority"),
    ("top_p above 1", gen(sampling=pb.SamplingParams(top_p=1.5)), INVALID, "sampling.top_p"),
    ("min_p above 1", gen(sampling=pb.SamplingParams(min_p=2)), INVALID, "sampling.min_p"),
    (
        "repetition penalty 0",
        gen(sampling=pb.SamplingParams(repetition_penalty=0)),
        INVALID,
        "sampling.repetition_penalty",
    ),
    (
        "presence penalty out of range",
        gen(sampling=pb.SamplingParams(presence_penalty=3)),
        INVALID,
        "sampling.presence_penalty",
    ),
    (
        "frequency penalty infinite",
        gen(sampling=pb.SamplingParams(frequency_penalty=float("-inf"))),
        INVALID,
        "sampling.frequency_penalty",
    ),
    (
        "top_logprobs too big",
        gen(output=pb.OutputOptions(top_logprobs=1000)),
        INVALID,
        "output.top_logprobs",
    ),
    (
        "step too big",
        gen(stream=pb.StreamOptions(streaming_step=10**6)),
        INVALID,
        "stream.streaming_step",
    ),
    (
        "delay too long",
        gen(stream=pb.StreamOptions(max_batch_delay_ms=10**8)),
        INVALID,
        "stream.max_batch_delay_ms",
    ),
    ("request id too long", gen(request_id="r" * 500), INVALID, "request_id"),
    ("request id unprintable", gen(request_id="a\nb"), INVALID, "request_id"),
    (
        "prompt beyond the context",
        gen(prompt="the " * 40, stopping=pb.StoppingOptions(max_tokens=30)),
        INVALID,
        "stopping.max_tokens",
    ),
    ("prompt above the prompt limit", gen(prompt="the " * 100), INVALID, "prompt"),
    ("unknown model", gen(model="gpt-7"), grpc.StatusCode.NOT_FOUND, None),
]


@pytest.fixture
async def small_server(make_server):
    # A small context and prompt limit make the length checks cheap to reach.
    return await make_server(sim_max_context=64, max_prompt_tokens=50)


@pytest.mark.parametrize("method", ["Generate", "Complete"])
async def test_bad_requests_get_a_status_naming_the_field(small_server, stub_for, method):
    stub = await stub_for(small_server)
    for name, req, code, field in CASES:
        call = stub.Generate(req) if method == "Generate" else stub.Complete(req)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            if method == "Generate":
                async for _ in call:
                    pass
            else:
                await call
        error = info.value
        assert error.code() == code, name
        if field is None:
            continue
        assert field in (error.details() or ""), name
        status = rpc_status.from_call(call_like(error))  # type: ignore[arg-type]
        assert status is not None, name
        bad = error_details_pb2.BadRequest()
        assert status.details[0].Unpack(bad), name
        assert [v.field for v in bad.field_violations] == [field], name
        assert bad.field_violations[0].description, name

    # Nothing leaked and the server still serves.
    assert small_server.engine.in_flight() == 0
    assert not small_server.core.live
    assert metric(small_server, "tokenwire_streams_active") == 0
    assert (
        metric(small_server, "tokenwire_requests_total", method=method, code="INVALID_ARGUMENT")
        == len(CASES) - 1
    )
    ok = await stub.Complete(gen(stopping=OK_STOP))
    assert ok.usage.completion_tokens > 0
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{small_server.port}")
    health: Any = health_pb2_grpc.HealthStub(channel)
    reply = await health.Check(health_pb2.HealthCheckRequest(service=""))
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    await channel.close()


class call_like:  # noqa: N801 - adapts an AioRpcError to what rpc_status.from_call reads
    def __init__(self, error: grpc.aio.AioRpcError) -> None:
        self._error = error

    def code(self) -> grpc.StatusCode:
        return self._error.code()

    def details(self) -> str | None:
        return self._error.details()

    def trailing_metadata(self) -> object:
        return tuple((k, v) for k, v in (self._error.trailing_metadata() or ()))


async def test_tokenize_without_input_is_invalid(stub):
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Tokenize(pb.TokenizeRequest())
    assert info.value.code() == INVALID
    assert "input" in (info.value.details() or "")


async def test_garbage_bytes_do_not_take_the_server_down(server, channel, stub):
    # A body that is not a GenerateRequest at all: a clear refusal, and the server lives.
    raw = channel.unary_unary(
        "/tokenwire.v1.GenerationService/Complete",
        request_serializer=lambda b: b,
        response_deserializer=lambda b: b,
    )
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await raw(b"\xff\xff\xff\xff garbage")
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "GenerationService/Complete" in (info.value.details() or "")
    assert (await stub.Complete(gen(stopping=OK_STOP))).choices
    assert server.engine.in_flight() == 0


async def test_garbage_bytes_on_a_stream_are_refused(server, channel):
    raw = channel.unary_stream(
        "/tokenwire.v1.GenerationService/Generate",
        request_serializer=lambda b: b,
        response_deserializer=lambda b: b,
    )
    with pytest.raises(grpc.aio.AioRpcError) as info:
        async for _ in raw(b"\x0a\xff"):
            pass
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert server.engine.in_flight() == 0


async def test_oversized_requests_are_refused_before_parsing(make_server, stub_for):
    server = await make_server(max_message_bytes=64 * 1024)
    stub = await stub_for(server)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Complete(gen(prompt="x" * 100_000))
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert server.engine.in_flight() == 0
    assert (await stub.Complete(gen(stopping=OK_STOP))).choices


async def test_model_info_limits_fit_the_models_context(make_server, stub_for):
    server = await make_server(sim_max_context=512, sim_itl_ms=0)
    stub = await stub_for(server)
    limits = (await stub.GetModelInfo(pb.GetModelInfoRequest())).limits
    # A prompt takes at least one token of the 512, so does the answer.
    assert (limits.max_tokens, limits.max_prompt_tokens) == (511, 511)
    assert limits.default_max_tokens == 256  # fits already
    # What ModelInfo promises holds: the largest max_tokens, after a one-token prompt...
    stopping = pb.StoppingOptions(max_tokens=limits.max_tokens, ignore_eos=True)
    one = pb.TokenIds(ids=[5])
    answer = await stub.Complete(gen(prompt=None, token_ids=one, stopping=stopping))
    assert answer.usage.completion_tokens == 511
    # ...and one more is refused.
    stopping.max_tokens += 1
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Complete(gen(prompt=None, token_ids=one, stopping=stopping))
    assert info.value.code() == INVALID


async def test_model_info_limits_below_the_context_are_left_alone(make_server, stub_for):
    server = await make_server(max_tokens_limit=100, default_max_tokens=50)
    limits = (await (await stub_for(server)).GetModelInfo(pb.GetModelInfoRequest())).limits
    assert (limits.max_tokens, limits.default_max_tokens) == (100, 50)
    assert limits.max_prompt_tokens == 32767  # the simulator's 32768-token context, less one
