"""OpenAI's structured output and tool fields -> ``GenerateRequest``.

Structured output comes as ``response_format`` (``json_object``, ``json_schema``) or
vLLM's ``guided_json``, ``guided_regex``, ``guided_choice`` and ``guided_grammar``,
one of them at a time; tools as ``tools``, ``tool_choice`` and
``parallel_tool_calls`` (chat only). The core validates what they say (schemas,
names, choices); here only their JSON shapes are checked, naming the parameter.
"""

from __future__ import annotations

from typing import Any

import orjson

from tokenwire.v1 import generation_pb2 as pb

from ..core.errors import InvalidArgument
from .jsonargs import boolean, get, text, text_list

# vLLM's structured-output extensions: (their field, the StructuredOutput kind).
_GUIDED = (
    ("guided_json", "json_schema"),
    ("guided_regex", "regex"),
    ("guided_choice", "choice"),
    ("guided_grammar", "ebnf_grammar"),
)


def function_of(item: object, where: str) -> dict[str, Any]:
    """The ``function`` of a tool or a call (``{"type": "function", "function": {...}}``)."""
    if not isinstance(item, dict):
        raise InvalidArgument(where, "must be an object")
    if item.get("type", "function") != "function":
        raise InvalidArgument(f"{where}.type", "only 'function' is supported")
    function = item.get("function")
    if not isinstance(function, dict):
        raise InvalidArgument(f"{where}.function", "must be an object")
    return function


def tools(body: dict[str, Any], req: pb.GenerateRequest, params: dict[str, str]) -> None:
    tools = body.get("tools")
    if tools is not None:
        if not isinstance(tools, list):
            raise InvalidArgument("tools", "must be an array")
        for i, tool in enumerate(tools):
            where = f"tools[{i}]"
            function = function_of(tool, where)
            parameters = function.get("parameters")
            if parameters is not None and not isinstance(parameters, dict):
                raise InvalidArgument(
                    f"{where}.function.parameters", "must be a JSON Schema object"
                )
            req.tools.add(
                name=text(function, "name", f"{where}.function.name"),
                description=text(
                    function, "description", f"{where}.function.description", required=False
                ),
                parameters_json=""
                if parameters is None
                else _json_text(parameters, f"{where}.function.parameters"),
            )
            params[f"tools[{i}].name"] = f"{where}.function.name"
            params[f"tools[{i}].description"] = f"{where}.function.description"
            params[f"tools[{i}].parameters_json"] = f"{where}.function.parameters"
    choice = body.get("tool_choice")
    if isinstance(choice, str):
        req.tool_choice = choice
    elif choice is not None:
        req.tool_choice = text(
            function_of(choice, "tool_choice"), "name", "tool_choice.function.name"
        )
    parallel = boolean(body, "parallel_tool_calls")
    if parallel is not None:
        req.parallel_tool_calls = parallel


def _json_text(value: object, where: str) -> str:
    """A schema back to JSON text; one nested too deep for that is refused (orjson stops
    at 254 levels, which no real schema nears)."""
    try:
        return orjson.dumps(value).decode()
    except orjson.JSONEncodeError:
        raise InvalidArgument(where, "is nested too deeply") from None


def structured(body: dict[str, Any], req: pb.GenerateRequest, params: dict[str, str]) -> None:
    """``response_format`` or one of vLLM's ``guided_*`` -> ``structured_output``."""
    so = req.structured_output
    given: str | None = None
    response_format = body.get("response_format")
    if response_format is not None:
        kind = get(response_format, "type", "response_format")
        if kind == "json_object":
            so.json_object = True
            params["structured_output.json_object"] = "response_format"
            given = "response_format"
        elif kind == "json_schema":
            spec = get(response_format, "json_schema", "response_format")
            if not isinstance(spec, dict):
                raise InvalidArgument("response_format.json_schema", "must be an object")
            schema = spec.get("schema", {})
            if not isinstance(schema, dict):
                raise InvalidArgument("response_format.json_schema.schema", "must be an object")
            so.json_schema = _json_text(schema, "response_format.json_schema.schema")
            params["structured_output.json_schema"] = "response_format.json_schema.schema"
            given = "response_format"
        elif kind != "text":
            raise InvalidArgument(
                "response_format.type", "must be text, json_object or json_schema"
            )
    for name, kind_ in _GUIDED:
        value = body.get(name)
        if value is None:
            continue
        if given is not None:
            raise InvalidArgument(name, f"cannot be combined with {given}: give one constraint")
        given = name
        if kind_ == "json_schema":
            if isinstance(value, dict):
                value = _json_text(value, name)
            elif not isinstance(value, str):
                raise InvalidArgument(name, "must be a JSON Schema (an object or its text)")
            so.json_schema = value
        elif kind_ == "choice":
            so.choice.choices.extend(text_list(value, name))
            params["structured_output.choice.choices"] = name
            continue
        elif not isinstance(value, str):
            raise InvalidArgument(name, "must be a string")
        else:
            setattr(so, kind_, value)
        params[f"structured_output.{kind_}"] = name
    if given is not None:
        params.setdefault("structured_output", given)
