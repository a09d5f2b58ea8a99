"""Tool calls over gRPC, end to end on the simulator: calls stream as deltas that add up
to JSON arguments valid for their tool, the same as Complete's whole calls; forced
choices always call; a conversation carries calls and results back."""

from __future__ import annotations

import json
from collections.abc import Sequence

import grpc
import jsonschema
import pytest

from tokenwire.server.app import Server
from tokenwire.v1 import generation_pb2 as pb
from tokenwire.v1 import generation_pb2_grpc as pb_grpc

from ..conftest import ServerFactory, StubFactory


@pytest.fixture
async def server(make_server: ServerFactory) -> Server:
    return await make_server(sim_ttft_ms=0, sim_itl_ms=0)


WEATHER = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "minLength": 1},
        "unit": {"enum": ["celsius", "fahrenheit"]},
    },
    "required": ["city", "unit"],
    "additionalProperties": False,
}
ADD = {
    "type": "object",
    "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
    "required": ["a", "b"],
    "additionalProperties": False,
}
SCHEMAS = {"get_weather": WEATHER, "add": ADD}
TOOLS = [
    pb.Tool(name=n, description=f"the {n} tool", parameters_json=json.dumps(s))
    for n, s in SCHEMAS.items()
]
USER = pb.ChatMessage(role="user", content="What is the weather in Paris?")


def chat(seed: int, *turns: pb.ChatMessage, **fields: object) -> pb.GenerateRequest:
    return pb.GenerateRequest(
        messages=pb.ChatMessages(messages=[USER, *turns]),
        tools=TOOLS,
        sampling=pb.SamplingParams(seed=seed),
        stopping=pb.StoppingOptions(max_tokens=400),
        **fields,  # type: ignore[arg-type]
    )


async def streamed_calls(
    stub: pb_grpc.GenerationServiceAsyncStub, req: pb.GenerateRequest
) -> tuple[str, list[pb.ToolCall], int]:
    """The stream's content, its calls accumulated from their deltas, and its finish."""
    text: list[str] = []
    calls: list[pb.ToolCall] = []
    finish = 0
    async for msg in stub.Generate(req):
        text.append(msg.text)
        for delta in msg.tool_calls:
            if delta.id:
                assert delta.index == len(calls) and delta.name
                calls.append(pb.ToolCall(id=delta.id, name=delta.name))
            else:
                assert not delta.name
            calls[delta.index].arguments += delta.arguments
        finish = msg.finish_reason or finish
    return "".join(text), calls, finish


def check_valid(calls: Sequence[pb.ToolCall]) -> None:
    for call in calls:
        assert call.id.startswith("call_")
        jsonschema.validate(json.loads(call.arguments), SCHEMAS[call.name])


def same_calls(a: Sequence[pb.ToolCall], b: Sequence[pb.ToolCall]) -> bool:
    """Equal but for their ids, which each call makes afresh."""
    return [(c.name, c.arguments) for c in a] == [(c.name, c.arguments) for c in b]


async def test_auto_calls_for_some_seeds_and_answers_for_others(
    stub: pb_grpc.GenerationServiceAsyncStub,
) -> None:
    called = answered = 0
    for seed in range(24):
        req = chat(seed)
        text, calls, finish = await streamed_calls(stub, req)
        whole = (await stub.Complete(req)).choices[0]
        assert text == whole.text and same_calls(calls, whole.tool_calls), seed
        assert finish == whole.finish_reason
        if calls:
            called += 1
            check_valid(calls)
            assert finish == pb.FINISH_REASON_TOOL_CALLS and text == ""
        else:
            answered += 1
            assert finish in (pb.FINISH_REASON_STOP, pb.FINISH_REASON_LENGTH) and text
    assert called >= 4 and answered >= 4


@pytest.mark.parametrize("choice", ["required", "add", "get_weather"])
async def test_forced_choices_always_call(
    stub: pb_grpc.GenerationServiceAsyncStub, choice: str
) -> None:
    for seed in range(16):
        text, calls, finish = await streamed_calls(stub, chat(seed, tool_choice=choice))
        assert calls and finish == pb.FINISH_REASON_TOOL_CALLS and text == ""
        check_valid(calls)
        if choice != "required":
            assert {c.name for c in calls} == {choice}


async def test_parallel_tool_calls_false_makes_one_call(
    stub: pb_grpc.GenerationServiceAsyncStub,
) -> None:
    counts = set()
    for seed in range(16):
        for parallel in (True, False):
            req = chat(seed, tool_choice="required", parallel_tool_calls=parallel)
            calls = (await stub.Complete(req)).choices[0].tool_calls
            counts.add((parallel, len(calls)))
    assert {n for p, n in counts if not p} == {1}
    assert max(n for p, n in counts if p) > 1  # several calls do happen when allowed


async def test_tool_choice_none_answers_in_text(stub: pb_grpc.GenerationServiceAsyncStub) -> None:
    for seed in range(8):
        choice = (await stub.Complete(chat(seed, tool_choice="none"))).choices[0]
        assert not choice.tool_calls and choice.text


async def test_a_round_trip_call_result_answer(stub: pb_grpc.GenerationServiceAsyncStub) -> None:
    first = (await stub.Complete(chat(5, tool_choice="get_weather"))).choices[0]
    call = first.tool_calls[0]
    # The model's turn with its call, then the tool's result, back to the model.
    assistant = pb.ChatMessage(role="assistant", tool_calls=[call])
    result = pb.ChatMessage(role="tool", tool_call_id=call.id, content='{"temperature": 21}')
    final = (await stub.Complete(chat(5, assistant, result, tool_choice="none"))).choices[0]
    assert final.text and not final.tool_calls
    assert final.finish_reason in (pb.FINISH_REASON_STOP, pb.FINISH_REASON_LENGTH)
    # The call and the result reached the chat template: other arguments, another prompt
    # (and the simulator's answer is a function of its prompt).
    other = pb.ToolCall(id=call.id, name=call.name, arguments='{"city": "Oslo"}')
    assistant_ = pb.ChatMessage(role="assistant", tool_calls=[other])
    changed = (await stub.Complete(chat(5, assistant_, result, tool_choice="none"))).choices[0]
    assert changed.text != final.text


async def test_tools_reach_the_prompt(stub: pb_grpc.GenerationServiceAsyncStub) -> None:
    plain = (await stub.Complete(chat(1, tool_choice="none"))).usage.prompt_tokens
    req = chat(1, tool_choice="none")
    del req.tools[:]
    assert plain > (await stub.Complete(req)).usage.prompt_tokens


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"tool_choice": "subtract"}, "tool_choice"),
        ({"tools": [pb.Tool(name="has space")]}, "tools[0].name"),
        ({"tools": [pb.Tool(name="f", parameters_json="{")]}, "tools[0].parameters_json"),
        ({"structured_output": pb.StructuredOutput(json_object=True)}, "structured_output"),
    ],
)
async def test_bad_tools_are_refused(
    stub: pb_grpc.GenerationServiceAsyncStub, fields: dict[str, object], field: str
) -> None:
    req = chat(1)
    if "tools" in fields:
        del req.tools[:]
    for name, value in fields.items():
        if name == "tools":
            req.tools.extend(value)  # type: ignore[arg-type]
        elif name == "structured_output":
            req.structured_output.CopyFrom(value)  # type: ignore[arg-type]
        else:
            setattr(req, name, value)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Complete(req)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (caught.value.details() or "").startswith(field + ":")


async def test_llama3_json_format(make_server: ServerFactory, stub_for: StubFactory) -> None:
    server = await make_server(tool_call_parser="llama3_json", sim_itl_ms=0, sim_ttft_ms=0)
    stub = await stub_for(server)
    for seed in range(8):
        text, calls, finish = await streamed_calls(stub, chat(seed, tool_choice="required"))
        assert calls and text == "" and finish == pb.FINISH_REASON_TOOL_CALLS
        check_valid(calls)
