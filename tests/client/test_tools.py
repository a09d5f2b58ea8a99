"""Tool calls through the sync and async clients against a real server: forced calls
validate against their tool's schema, streamed calls agree with whole ones, and a
conversation carries calls and their results back for the answer."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Iterator

import jsonschema
import pytest

from tests.helpers import ServerProcess
from tokenwire.client import (
    AsyncClient,
    Client,
    Completion,
    InvalidRequest,
    Message,
    Tool,
    ToolCall,
    ToolCallAccumulator,
)

WEATHER = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "minLength": 1},
        "unit": {"enum": ["celsius", "fahrenheit"]},
    },
    "required": ["city"],
    "additionalProperties": False,
}
TIME = {"type": "object", "properties": {"zone": {"type": "string"}}, "required": ["zone"]}
SCHEMAS = {"get_weather": WEATHER, "get_time": TIME}
TOOLS: list[Tool] = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather in a city",
            "parameters": WEATHER,
        },
    },
    # The flat shape, and parameters as JSON text, in the same list.
    {"name": "get_time", "description": "Time in a zone", "parameters": json.dumps(TIME)},
]
QUESTION: list[Message] = [{"role": "user", "content": "Weather and time in Paris?"}]
SEEDS = range(12)


@pytest.fixture
def client(instant_server: ServerProcess) -> Iterator[Client]:
    with Client(instant_server.target, timeout=30) as client:
        yield client


@pytest.fixture
async def async_client(instant_server: ServerProcess) -> AsyncIterator[AsyncClient]:
    async with AsyncClient(instant_server.target, timeout=30) as client:
        yield client


def assert_valid(calls: tuple[ToolCall, ...]) -> None:
    assert calls
    for call in calls:
        jsonschema.validate(call.parsed_arguments(), SCHEMAS[call.name])
    ids = [call.id for call in calls]
    assert all(ids) and len(set(ids)) == len(ids)


def same_calls(a: tuple[ToolCall, ...], b: tuple[ToolCall, ...]) -> bool:
    """The same calls: ids are made up by the server for each request."""
    return [(c.name, c.arguments) for c in a] == [(c.name, c.arguments) for c in b]


def round_trip(calls: tuple[ToolCall, ...]) -> list[Message]:
    """The question, the assistant's calls and a result for each: the next request's
    conversation. The assistant turn in OpenAI's shape, as the OpenAI SDK writes it."""
    assistant: Message = {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in calls
        ],
    }
    results: list[Message] = [
        {"role": "tool", "tool_call_id": c.id, "content": f"result of {c.name}"} for c in calls
    ]
    return [*QUESTION, assistant, *results]


def assert_text_answer(answer: Completion) -> None:
    assert answer.text and answer.tool_calls == ()
    assert answer.finish_reason in ("stop", "length")


@pytest.mark.parametrize("seed", SEEDS)
def test_required_calls_validate_and_stream_as_they_come_whole(client: Client, seed: int) -> None:
    accumulated = ToolCallAccumulator()
    stream = client.chat(
        QUESTION, tools=TOOLS, tool_choice="required", seed=seed, on_token=accumulated.add
    )
    whole = client.complete(messages=QUESTION, tools=TOOLS, tool_choice="required", seed=seed)
    assert stream.finish_reason == whole.finish_reason == "tool_calls"
    assert_valid(stream.tool_calls)
    assert_valid(whole.tool_calls)
    assert same_calls(stream.tool_calls, whole.tool_calls)
    assert accumulated.calls() == stream.tool_calls == stream.collect().tool_calls
    assert stream.text == whole.text == ""


def test_each_call_streams_its_id_and_name_first_then_its_arguments(client: Client) -> None:
    chunks = list(client.chat(QUESTION, tools=TOOLS, tool_choice="required", seed=5))
    deltas = [delta for chunk in chunks for delta in chunk.tool_calls]
    starts = [delta for delta in deltas if delta.name]
    assert [delta.index for delta in starts] == list(range(len(starts)))
    assert all(delta.id and not delta.arguments for delta in starts)
    assert all(not delta.id for delta in deltas if not delta.name)
    assert chunks[-1].finish_reason == "tool_calls"


@pytest.mark.parametrize("seed", range(8))
def test_a_named_tool_without_parallel_calls_is_called_once(client: Client, seed: int) -> None:
    answer = client.complete(
        messages=QUESTION, tools=TOOLS, tool_choice="get_time", parallel_tool_calls=False, seed=seed
    )
    assert [call.name for call in answer.tool_calls] == ["get_time"]
    assert_valid(answer.tool_calls)


def test_auto_answers_some_seeds_with_calls_and_others_with_text(client: Client) -> None:
    answers = [client.complete(messages=QUESTION, tools=TOOLS, seed=seed) for seed in range(16)]
    called = [answer for answer in answers if answer.tool_calls]
    assert 0 < len(called) < len(answers)
    for answer in called:
        assert answer.finish_reason == "tool_calls"
        assert_valid(answer.tool_calls)
    for answer in answers:
        if not answer.tool_calls:
            assert answer.finish_reason != "tool_calls"


@pytest.mark.parametrize("seed", range(4))
def test_calls_and_their_results_go_back_for_a_text_answer(client: Client, seed: int) -> None:
    first = client.complete(messages=QUESTION, tools=TOOLS, tool_choice="required", seed=seed)
    conversation = round_trip(first.tool_calls)
    answer = client.complete(messages=conversation, tools=TOOLS, tool_choice="none", seed=seed)
    assert_text_answer(answer)
    # The calls reached the model's prompt: ToolCall objects go back as they are too.
    back = [*QUESTION, {"role": "assistant", "tool_calls": first.tool_calls}, *conversation[2:]]
    without = [*QUESTION, {"role": "assistant", "content": ""}, *conversation[2:]]
    assert client.tokenize(messages=back) == client.tokenize(messages=conversation)
    assert len(client.tokenize(messages=back)) > len(client.tokenize(messages=without))


def test_bad_tools_are_refused_naming_the_field(client: Client) -> None:
    bad_schema: list[Tool] = [{"name": "f", "parameters": {"type": "object", "properties": 3}}]
    bad_call = [*QUESTION, {"role": "assistant", "tool_calls": [{"name": "f", "arguments": "[]"}]}]
    cases: list[tuple[Callable[[], object], str]] = [
        # Tools need a conversation.
        (lambda: client.complete("Hi", tools=TOOLS), "tools"),
        (lambda: client.complete(messages=QUESTION, tools=TOOLS, tool_choice="f"), "tool_choice"),
        (lambda: client.complete(messages=QUESTION, tools=bad_schema), "tools[0].parameters_json"),
        (
            lambda: client.complete(messages=bad_call),
            "messages.messages[1].tool_calls[0].arguments",
        ),
    ]
    for call, field in cases:
        with pytest.raises(InvalidRequest) as caught:
            call()
        assert [violation.field for violation in caught.value.field_violations] == [field]


async def test_async_client_streams_calls_and_carries_them_back(async_client: AsyncClient) -> None:
    stream = await async_client.chat(QUESTION, tools=TOOLS, tool_choice="required", seed=3)
    whole = await async_client.complete(
        messages=QUESTION, tools=TOOLS, tool_choice="required", seed=3
    )
    assert stream.finish_reason == whole.finish_reason == "tool_calls"
    assert_valid(stream.tool_calls)
    assert same_calls(stream.tool_calls, whole.tool_calls)
    conversation = round_trip(stream.tool_calls)
    answer = await async_client.generate(
        messages=conversation, tools=TOOLS, tool_choice="none", seed=3
    ).collect()
    assert_text_answer(answer)


async def test_async_client_answers_satisfy_a_json_schema(async_client: AsyncClient) -> None:
    for seed in range(8):
        answer = await async_client.complete("The weather", json_schema=WEATHER, seed=seed)
        jsonschema.validate(json.loads(answer.text), WEATHER)
        streamed = ""
        async for chunk in async_client.generate("The weather", json_schema=WEATHER, seed=seed):
            streamed += chunk.text
        assert streamed == answer.text
