"""Structured output and tools to protobuf, offline: the shapes callers write, and the
TypeErrors for those that cannot be read."""

from __future__ import annotations

import json
from typing import Any, cast

import pytest

from tokenwire.client import Chunk, GenerateOptions, ToolCall, ToolCallAccumulator, ToolCallDelta
from tokenwire.client._convert import chat_messages, generate_request
from tokenwire.v1 import generation_pb2 as pb

SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}


def request(**options: Any) -> pb.GenerateRequest:
    """Options unchecked by type, as an untyped caller would pass them."""
    return generate_request(None, [("user", "Hi")], None, cast(GenerateOptions, options))


def test_each_constraint_lands_in_its_oneof_field() -> None:
    cases: list[tuple[GenerateOptions, str, object]] = [
        ({"json_schema": SCHEMA}, "json_schema", json.dumps(SCHEMA)),
        ({"json_schema": '{"type": "integer"}'}, "json_schema", '{"type": "integer"}'),
        ({"json_object": True}, "json_object", True),
        ({"regex": "[a-z]+"}, "regex", "[a-z]+"),
        ({"grammar": 'root ::= "a"'}, "ebnf_grammar", 'root ::= "a"'),
    ]
    for options, field, value in cases:
        so = request(**options).structured_output
        assert so.WhichOneof("kind") == field
        assert getattr(so, field) == value
    assert list(request(choice=("yes", "no")).structured_output.choice.choices) == ["yes", "no"]
    # An empty list still goes out, for the server to refuse by name.
    assert request(choice=[]).structured_output.WhichOneof("kind") == "choice"


def test_no_constraint_leaves_the_field_unset() -> None:
    assert not request().HasField("structured_output")
    assert not request(json_object=False).HasField("structured_output")
    assert request(json_object=False, regex="a").structured_output.regex == "a"


def test_more_than_one_constraint_is_a_type_error_naming_them() -> None:
    with pytest.raises(TypeError, match=r"at most one of .*\(got json_schema, regex\)"):
        request(json_schema=SCHEMA, regex="a")
    with pytest.raises(TypeError, match=r"\(got json_object, choice\)"):
        request(json_object=True, choice=["a"])
    with pytest.raises(TypeError, match="choice takes a list of strings"):
        request(choice="yes")
    with pytest.raises(TypeError, match=r"unexpected keyword argument.*: schema"):
        request(schema=SCHEMA)


def test_tools_in_openai_and_flat_shapes_are_the_same_request() -> None:
    openai = {
        "type": "function",
        "function": {"name": "f", "description": "d", "parameters": SCHEMA, "strict": True},
    }
    flat = {"name": "f", "description": "d", "parameters": json.dumps(SCHEMA)}
    a = request(tools=[openai], tool_choice="required", parallel_tool_calls=False)
    b = request(tools=[flat], tool_choice="required", parallel_tool_calls=False)
    assert a == b
    assert a.tools[0].name == "f" and json.loads(a.tools[0].parameters_json) == SCHEMA
    assert a.tool_choice == "required"
    assert a.HasField("parallel_tool_calls") and not a.parallel_tool_calls
    bare = request(tools=[{"name": "g"}])
    assert bare.tools[0].parameters_json == "" and not bare.HasField("parallel_tool_calls")


@pytest.mark.parametrize(
    ("tool", "message"),
    [
        (
            {"type": "function", "function": {"description": "no name"}},
            r"tools\[0\].name is missing",
        ),
        ({"type": "retrieval"}, r'tools\[0\].type must be "function"'),
        ({"name": 7}, r"tools\[0\].name must be a string, not int"),
        ({"name": "f", "parameters": {"default": {1, 2}}}, r"tools\[0\].parameters is not JSON"),
        ("f", r"tools\[0\] must be a dict, not str"),
    ],
)
def test_a_tool_that_cannot_be_read_is_a_type_error_naming_it(tool: object, message: str) -> None:
    with pytest.raises(TypeError, match=message):
        request(tools=[tool])


def test_messages_carry_tool_calls_and_results_in_every_shape() -> None:
    arguments = {"city": "Paris"}
    shapes: list[object] = [
        ToolCall("call_1", "get_weather", json.dumps(arguments)),
        {"id": "call_1", "name": "get_weather", "arguments": arguments},
        {
            "id": "call_1",
            "type": "function",
            "function": {"name": "get_weather", "arguments": json.dumps(arguments)},
        },
    ]
    for call in shapes:
        messages = chat_messages(
            [
                {"role": "user", "content": "Weather in Paris?"},
                {"role": "assistant", "content": None, "tool_calls": [call]},
                {"role": "tool", "tool_call_id": "call_1", "content": "18 degrees"},
            ]
        )
        assistant, tool = messages.messages[1], messages.messages[2]
        assert assistant.content == "" and len(assistant.tool_calls) == 1
        (sent,) = assistant.tool_calls
        assert (sent.id, sent.name, json.loads(sent.arguments)) == (
            "call_1",
            "get_weather",
            arguments,
        )
        assert (tool.role, tool.tool_call_id, tool.content) == ("tool", "call_1", "18 degrees")


def test_a_message_that_cannot_be_read_is_a_type_error_naming_it() -> None:
    with pytest.raises(TypeError, match=r"messages\[1\].role is missing"):
        chat_messages([("user", "Hi"), {"content": "x"}])
    with pytest.raises(TypeError, match=r"messages\[0\].tool_calls must be a list"):
        chat_messages([{"role": "assistant", "tool_calls": "f()"}])
    with pytest.raises(TypeError, match=r"messages\[0\].tool_calls\[0\].name is missing"):
        chat_messages([{"role": "assistant", "tool_calls": [{"id": "c", "arguments": "{}"}]}])


def chunk(index: int, *deltas: ToolCallDelta) -> Chunk:
    return Chunk("r", index, "", (), 0, tool_calls=deltas)


def test_the_accumulator_puts_calls_together_per_sequence() -> None:
    calls = ToolCallAccumulator()
    calls.add(chunk(0, ToolCallDelta(0, "c0", "f", "")))
    calls.add(chunk(1, ToolCallDelta(0, "c9", "g", '{"a"')))
    calls.add(chunk(0, ToolCallDelta(0, "", "", '{"x":'), ToolCallDelta(1, "c1", "h", "")))
    calls.add(chunk(0))  # text only
    calls.add(chunk(0, ToolCallDelta(0, "", "", " 1}"), ToolCallDelta(1, "", "", "{}")))
    calls.add(chunk(1, ToolCallDelta(0, "", "", ": 2}")))
    assert calls.calls() == (ToolCall("c0", "f", '{"x": 1}'), ToolCall("c1", "h", "{}"))
    assert calls.calls(1) == (ToolCall("c9", "g", '{"a": 2}'),)
    assert calls.calls(2) == ()
    assert calls.calls()[0].parsed_arguments() == {"x": 1}


def test_parsed_arguments_refuses_anything_but_an_object() -> None:
    with pytest.raises(ValueError):
        ToolCall("c", "f", '{"cut short').parsed_arguments()
    with pytest.raises(ValueError, match="not a JSON object"):
        ToolCall("c", "f", "[1]").parsed_arguments()
