"""Structured output and tool calls over the HTTP door, with the official openai SDK:
response_format and vLLM's guided_* fields, tools as the SDK sends them, and calls
streamed as ``delta.tool_calls`` that the SDK's own helpers accumulate and parse."""

from __future__ import annotations

import json
import re
from typing import Any, Literal

import jsonschema
import openai
import pydantic
import pytest

from tokenwire.server.app import Server

from .conftest import HttpServerFactory, base_url, curl

CITY = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "minLength": 1},
        "population": {"type": "integer", "minimum": 0},
        "kind": {"enum": ["town", "city"]},
    },
    "required": ["name", "population", "kind"],
    "additionalProperties": False,
}
WEATHER = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "unit": {"enum": ["celsius", "fahrenheit"]}},
    "required": ["city", "unit"],
    "additionalProperties": False,
}
TOOLS: list[Any] = [
    {
        "type": "function",
        "function": {"name": "get_weather", "description": "Weather now", "parameters": WEATHER},
    },
    {"type": "function", "function": {"name": "get_time", "description": "The time"}},
]
SCHEMAS = {"get_weather": WEATHER, "get_time": {"type": "object", "properties": {}}}
MODEL = "tokenwire-sim"
ASK: list[Any] = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture
async def http_server(make_http_server: HttpServerFactory) -> Server:
    return await make_http_server(sim_ttft_ms=0, sim_itl_ms=0)


async def test_json_schema_answers_validate_streamed_and_whole(oai: openai.AsyncOpenAI) -> None:
    response_format: Any = {"type": "json_schema", "json_schema": {"name": "city", "schema": CITY}}
    for seed in range(16):
        args: dict[str, Any] = {"model": MODEL, "messages": ASK, "seed": seed}
        whole = await oai.chat.completions.create(**args, response_format=response_format)
        text = whole.choices[0].message.content or ""
        jsonschema.validate(json.loads(text), CITY)
        assert whole.choices[0].finish_reason == "stop"
        stream = await oai.chat.completions.create(
            **args, response_format=response_format, stream=True
        )
        parts = [c.choices[0].delta.content or "" async for c in stream if c.choices]
        assert "".join(parts) == text


async def test_the_sdks_parse_helper_gets_its_model(oai: openai.AsyncOpenAI) -> None:
    class City(pydantic.BaseModel):
        name: str
        population: int
        kind: Literal["town", "city"]

    for seed in range(8):
        parsed = await oai.chat.completions.parse(
            model=MODEL, messages=ASK, response_format=City, seed=seed
        )
        city = parsed.choices[0].message.parsed
        assert isinstance(city, City) and city.kind in ("town", "city")


@pytest.mark.parametrize(
    ("extra", "check"),
    [
        ({"guided_regex": r"[a-z]{3,10}"}, r"[a-z]{3,10}"),
        ({"guided_choice": ["yes", "no", "not sure"]}, "yes|no|not sure"),
        ({"guided_grammar": 'root ::= "A" [0-9] [0-9]'}, "A[0-9][0-9]"),
        ({"guided_json": {"type": "array", "items": {"type": "integer"}}}, r"\[[-0-9,eE+. ]*\]"),
        ({"response_format": {"type": "json_object"}}, r"\{.*\}"),
    ],
)
async def test_guided_fields_on_both_apis(
    http_server: Server, extra: dict[str, Any], check: str
) -> None:
    url = base_url(http_server)
    for path, body in (
        ("/v1/chat/completions", {"messages": ASK}),
        ("/v1/completions", {"prompt": "The answer:"}),
    ):
        for seed in range(6):
            result = await curl(
                "-s", f"{url}{path}", "-H", "content-type: application/json",
                "-d", json.dumps({**body, **extra, "seed": seed, "max_tokens": 300}),
            )  # fmt: skip
            choice = json.loads(result.stdout)["choices"][0]
            text = choice["message"]["content"] if "message" in choice else choice["text"]
            assert re.fullmatch(check, text, re.DOTALL), (path, seed, text)


async def test_forced_calls_accumulate_in_the_sdks_stream_helper(oai: openai.AsyncOpenAI) -> None:
    for seed in range(8):
        async with oai.chat.completions.stream(
            model=MODEL, messages=ASK, tools=TOOLS, tool_choice="required", seed=seed
        ) as stream:
            done = [e async for e in stream if e.type == "tool_calls.function.arguments.done"]
            final = await stream.get_final_completion()
        choice = final.choices[0]
        assert choice.finish_reason == "tool_calls"
        calls = choice.message.tool_calls or []
        assert calls and len(done) == len(calls)
        for call in calls:
            assert call.type == "function" and call.id.startswith("call_")
            jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])


async def test_a_strict_pydantic_tool_gets_parsed_arguments(oai: openai.AsyncOpenAI) -> None:
    class GetWeather(pydantic.BaseModel):
        city: str
        unit: Literal["celsius", "fahrenheit"]

    tool = openai.pydantic_function_tool(GetWeather)
    completion = await oai.chat.completions.parse(
        model=MODEL, messages=ASK, tools=[tool], tool_choice="required", seed=2
    )
    call = (completion.choices[0].message.tool_calls or [])[0]
    assert isinstance(call.function.parsed_arguments, GetWeather)


async def test_auto_streams_calls_or_text_as_openai_shapes_them(http_server: Server) -> None:
    kinds = set()
    for seed in range(16):
        result = await curl(
            "-sN", base_url(http_server) + "/v1/chat/completions",
            "-H", "content-type: application/json",
            "-d", json.dumps({"messages": ASK, "tools": TOOLS, "seed": seed, "stream": True,
                              "max_tokens": 400}),
        )  # fmt: skip
        events = [
            json.loads(line[6:])
            for line in result.stdout.splitlines()
            if line.startswith("data: {")
        ]
        calls: dict[int, dict[str, str]] = {}
        content, finish = "", None
        for event in events:
            choice = event["choices"][0]
            delta = choice["delta"]
            assert delta or choice["finish_reason"], "no empty chunk (markup, split characters)"
            content += delta.get("content") or ""
            for part in delta.get("tool_calls", ()):
                if part["index"] not in calls:  # a call's first part says what it is
                    assert part["type"] == "function" and part["id"].startswith("call_")
                    assert part["function"]["name"] in SCHEMAS
                    calls[part["index"]] = {"name": part["function"]["name"], "arguments": ""}
                else:
                    assert set(part) == {"index", "function"} and set(part["function"]) == {
                        "arguments"
                    }
                calls[part["index"]]["arguments"] += part["function"]["arguments"]
            finish = choice["finish_reason"] or finish
        assert result.stdout.rstrip().endswith("data: [DONE]")
        if calls:
            kinds.add("calls")
            assert finish == "tool_calls" and content == ""
            for call in calls.values():
                jsonschema.validate(json.loads(call["arguments"]), SCHEMAS[call["name"]])
        else:
            kinds.add("text")
            assert content and finish in ("stop", "length")
    assert kinds == {"calls", "text"}


async def test_a_round_trip_with_the_sdk(oai: openai.AsyncOpenAI) -> None:
    first = await oai.chat.completions.create(
        model=MODEL, messages=ASK, tools=TOOLS, tool_choice="required", seed=4
    )
    message = first.choices[0].message
    assert message.content is None and message.tool_calls
    turns: list[Any] = [*ASK, message.model_dump(exclude_none=True)]
    for call in message.tool_calls:
        turns.append({"role": "tool", "tool_call_id": call.id, "content": '{"temperature": 21}'})
    final = await oai.chat.completions.create(
        model=MODEL, messages=turns, tools=TOOLS, tool_choice="none", seed=4
    )
    assert final.choices[0].message.content and not final.choices[0].message.tool_calls


async def test_parallel_tool_calls_false(oai: openai.AsyncOpenAI) -> None:
    for seed in range(8):
        completion = await oai.chat.completions.create(
            model=MODEL,
            messages=ASK,
            tools=TOOLS,
            tool_choice="required",
            parallel_tool_calls=False,
            seed=seed,
        )
        assert len(completion.choices[0].message.tool_calls or []) == 1


async def test_a_named_tool_is_the_one_called(oai: openai.AsyncOpenAI) -> None:
    completion = await oai.chat.completions.create(
        model=MODEL,
        messages=ASK,
        tools=TOOLS,
        tool_choice={"type": "function", "function": {"name": "get_time"}},
    )
    calls = completion.choices[0].message.tool_calls or []
    assert {c.function.name for c in calls} == {"get_time"}  # type: ignore[union-attr]
