"""Structured output, tools and chat turns, from the shapes callers write them in to protobuf.

The part of `_convert.py` that reads caller-made JSON: a schema as a dict or as
text, tools and tool calls in OpenAI's nested shape or flat, chat turns that carry
tool calls or a tool's result. Shapes that cannot be
read raise TypeError naming where (``tools[1].name``); what the shapes say (a
schema that does not compile, an unknown tool) is the server's to refuse, with
InvalidRequest naming the field.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from tokenwire.client._models import ToolCall
from tokenwire.client._types import GenerateOptions
from tokenwire.v1 import generation_pb2 as pb

CONSTRAINTS = ("json_schema", "json_object", "regex", "grammar", "choice")
OPTION_NAMES = frozenset(CONSTRAINTS).union({"tools", "tool_choice", "parallel_tool_calls"})


def apply(request: pb.GenerateRequest, options: GenerateOptions) -> None:
    """Set the request's structured_output, tools, tool_choice and parallel_tool_calls
    from the options given; TypeError for more than one constraint."""
    _structured_output(request.structured_output, options)
    for i, value in enumerate(options.get("tools", ())):
        request.tools.append(tool(value, f"tools[{i}]"))
    if "tool_choice" in options:
        request.tool_choice = options["tool_choice"]
    if "parallel_tool_calls" in options:
        request.parallel_tool_calls = options["parallel_tool_calls"]


def chat_message(message: Mapping[str, object], where: str) -> pb.ChatMessage:
    """A chat turn as a dict: ``role`` and ``content``, and ``tool_calls`` (an assistant
    turn's) or ``tool_call_id`` (a tool turn's)."""
    calls = message.get("tool_calls") or ()
    if not isinstance(calls, list | tuple):
        raise TypeError(f"{where}.tool_calls must be a list, not {type(calls).__name__}")
    return pb.ChatMessage(
        role=_text(message.get("role"), f"{where}.role", required=True),
        # An assistant turn that only calls tools may leave content out (OpenAI: null).
        content=_text(message.get("content"), f"{where}.content"),
        tool_calls=[_tool_call(call, f"{where}.tool_calls[{i}]") for i, call in enumerate(calls)],
        tool_call_id=_text(message.get("tool_call_id"), f"{where}.tool_call_id"),
    )


def _tool_call(call: object, where: str) -> pb.ToolCall:
    """An earlier assistant turn's call: a `ToolCall`, ``{"id", "name", "arguments"}``
    or OpenAI's ``{"id", "type": "function", "function": {"name", "arguments"}}``."""
    if isinstance(call, ToolCall):
        return pb.ToolCall(id=call.id, name=call.name, arguments=call.arguments)
    call = _mapping(call, where)
    function = _mapping(call.get("function", call), f"{where}.function")
    return pb.ToolCall(
        id=_text(call.get("id"), f"{where}.id"),
        name=_text(function.get("name"), f"{where}.name", required=True),
        arguments=_json(function.get("arguments"), f"{where}.arguments"),
    )


def _structured_output(target: pb.StructuredOutput, options: GenerateOptions) -> None:
    given = [name for name in CONSTRAINTS if name in options]
    if options.get("json_object") is False:
        given.remove("json_object")  # the flag turned off: no constraint
    if len(given) > 1:
        raise TypeError(f"pass at most one of {', '.join(CONSTRAINTS)} (got {', '.join(given)})")
    if "json_schema" in given:
        target.json_schema = _json(options["json_schema"], "json_schema")
    elif "json_object" in given:
        target.json_object = True
    elif "regex" in given:
        target.regex = options["regex"]
    elif "grammar" in given:
        target.ebnf_grammar = options["grammar"]
    elif "choice" in given:
        choices = options["choice"]
        if isinstance(choices, str):
            # A string is a sequence of one-letter strings: surely not what was meant.
            raise TypeError("choice takes a list of strings, not a string")
        target.choice.SetInParent()  # an empty list is sent, for the server to refuse
        target.choice.choices.extend(choices)


def tool(value: object, where: str) -> pb.Tool:
    """A tool in OpenAI's shape or flat (see `Tool`)."""
    tool = _mapping(value, where)
    kind = tool.get("type", "function")
    if kind != "function":
        raise TypeError(f'{where}.type must be "function", not {kind!r}')
    # OpenAI's shape nests the function; the flat one is the function itself.
    function = _mapping(tool.get("function", tool), f"{where}.function")
    return pb.Tool(
        name=_text(function.get("name"), f"{where}.name", required=True),
        description=_text(function.get("description"), f"{where}.description"),
        parameters_json=_json(function.get("parameters"), f"{where}.parameters"),
    )


def _mapping(value: object, where: str) -> Mapping[str, object]:
    if not isinstance(value, Mapping):
        raise TypeError(f"{where} must be a dict, not {type(value).__name__}")
    return value


def _text(value: object, where: str, *, required: bool = False) -> str:
    if value is None:
        if required:
            raise TypeError(f"{where} is missing")
        return ""
    if not isinstance(value, str):
        raise TypeError(f"{where} must be a string, not {type(value).__name__}")
    return value


def _json(value: object, where: str) -> str:
    """JSON text as given, or a dict (any JSON value) written as JSON; None: ""."""
    if value is None or isinstance(value, str):
        return value or ""
    try:
        return json.dumps(value)
    except (TypeError, ValueError) as error:
        raise TypeError(f"{where} is not JSON: {error}") from None
