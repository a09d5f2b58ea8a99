"""Tool calls, the request side: ``tools`` and ``tool_choice`` validated, and the grammar
that makes a model's answer a valid call in the server's tool-call format.

    plan = plan_tools(request, input_field, "hermes", max_grammar_bytes)   # or None
    plan.forced      # required / a tool's name: the answer must be a call (a constraint)
    plan.offered     # auto: what a call looks like, for the simulator
    plan.format      # how calls are written, for the parser (``toolparse.py``)

How a model writes calls is a property of the model, chosen by a setting
(``--tool-call-parser``): its chat template tells it to, and the parser reads it.

- ``hermes`` (Hermes, Qwen 2.5/3 and most open models since):
  ``<tool_call>\\n{"name": "f", "arguments": {...}}\\n</tool_call>``, one block per
  call, text before them is the answer's content;
- ``llama3_json`` (Llama 3.1+ with JSON tool calling): the answer is the call,
  ``{"name": "f", "parameters": {...}}``, several separated by ``; ``.

A forced call is a Lark grammar (llguidance's dialect): per tool, the call's text
up to its arguments written out (its name included), then the tool's own
parameters schema as an inline JSON Schema. So the arguments always validate
against the tool's schema.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass

from tokenwire.v1 import generation_pb2 as pb

from ..engines.base import Constraint, ToolSpec
from ..engines.grammar import JSON_WHITESPACE
from . import constraints
from .errors import InvalidArgument

MAX_TOOLS = 128  # OpenAI's limit
_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
_WHITESPACE = {"whitespace_pattern": JSON_WHITESPACE}
_CHOICES = frozenset({"none", "auto", "required"})  # tool_choice's words: no tool's name
_CACHED = 64


@dataclass(frozen=True, slots=True)
class ToolFormat:
    """How a model writes its calls."""

    name: str
    start: str  # what opens a call ("" : calls open the answer itself)
    end: str  # what closes one ("" : the JSON object's own end)
    separator: str  # what goes between two calls, as the grammar writes it
    arguments_key: str  # the call object's key for the arguments, as the format writes it

    @property
    def arguments_keys(self) -> tuple[str, ...]:
        """Keys a parser accepts for the arguments (models mix them up)."""
        return (self.arguments_key, "arguments", "parameters")

    def grammar(self, tools: Sequence[ToolSpec], parallel: bool) -> str:
        """A Lark grammar whose sentences are one call (or several, with ``parallel``)
        of ``tools``, each with arguments valid for its tool.

        A call is literal text around the tool's own schema as an inline ``%json``,
        which stays its own root (its ``$ref``s, ``$id`` and anchors mean what they
        did), with the whitespace rule of structured output."""
        rules = []
        for i, tool in enumerate(tools):
            schema = json.loads(tool.parameters_json) if tool.parameters_json else {}
            schema = {"type": "object", **schema, "x-guidance": _WHITESPACE}
            head = f'{self.start}{chr(10) if self.start else ""}{{"name": "{tool.name}", '
            head += f'"{self.arguments_key}": '
            tail = "}" + (chr(10) + self.end if self.end else "")
            rules.append(
                f"call_{i}: {json.dumps(head)} %json {json.dumps(schema)} {json.dumps(tail)}"
            )
        more = f" ({json.dumps(self.separator)} call)*" if parallel else ""
        alternatives = " | ".join(f"call_{i}" for i in range(len(tools)))
        return "\n".join([f"start: call{more}", f"call: {alternatives}", *rules]) + "\n"


HERMES = ToolFormat("hermes", "<tool_call>", "</tool_call>", "\n", "arguments")
LLAMA3_JSON = ToolFormat("llama3_json", "", "", "; ", "parameters")
FORMATS = {f.name: f for f in (HERMES, LLAMA3_JSON)}


@dataclass(frozen=True, slots=True)
class ToolPlan:
    """A request's tools, validated, and what its choice means."""

    tools: tuple[ToolSpec, ...]
    choice: str  # "none", "auto", "required", or a tool's name
    format: ToolFormat
    forced: Constraint | None  # the answer must be a call (required, a name)
    offered: Constraint | None  # auto: a call, should the engine make up its answers

    @property
    def names(self) -> frozenset[str]:
        return frozenset(tool.name for tool in self.tools)

    @property
    def parses(self) -> bool:
        """Calls are read out of the answer (any choice but none)."""
        return self.choice != "none"


def plan_tools(
    req: pb.GenerateRequest, input_field: str, parser: str, max_bytes: int
) -> ToolPlan | None:
    """Validate ``tools``, ``tool_choice`` and ``parallel_tool_calls``; None without tools."""
    choice = req.tool_choice
    if not req.tools:
        if choice not in ("", "none", "auto"):
            raise InvalidArgument("tool_choice", "names a tool, but tools is empty")
        return None
    if input_field != "messages":
        raise InvalidArgument("tools", "need a conversation: send messages, not a prompt")
    if len(req.tools) > MAX_TOOLS:
        raise InvalidArgument("tools", f"at most {MAX_TOOLS} tools")
    tools = tuple(_tool(tool, i, max_bytes) for i, tool in enumerate(req.tools))
    seen: dict[str, int] = {}
    for i, tool in enumerate(tools):
        if tool.name in seen:
            raise InvalidArgument(f"tools[{i}].name", f"repeats tools[{seen[tool.name]}]'s name")
        seen[tool.name] = i
    choice = choice or "auto"
    if choice not in _CHOICES and choice not in seen:
        raise InvalidArgument(
            "tool_choice", "must be none, auto, required or the name of one of the tools"
        )
    if choice != "none" and req.structured_output.WhichOneof("kind"):
        raise InvalidArgument(
            "structured_output", "cannot be combined with tools unless tool_choice is none"
        )
    total = sum(len(tool.parameters_json.encode()) for tool in tools)
    if total > max_bytes:
        raise InvalidArgument(
            "tools", f"the parameters schemas are {total} bytes in all, more than {max_bytes}"
        )
    fmt = FORMATS[parser]
    parallel = req.parallel_tool_calls if req.HasField("parallel_tool_calls") else True
    forced = offered = None
    if choice == "required" or choice in seen:
        chosen = tools if choice == "required" else (tools[seen[choice]],)
        forced = calls_grammar(fmt, chosen, parallel)
    elif choice == "auto":
        # Only an engine that makes up its answers uses it: one that will not compile
        # (each tool's schema did) leaves the simulator answering in text, no refusal.
        try:
            offered = calls_grammar(fmt, tools, parallel)
        except InvalidArgument:
            offered = None
    return ToolPlan(tools, choice, fmt, forced, offered)


@functools.lru_cache(maxsize=_CACHED)
def calls_grammar(fmt: ToolFormat, tools: tuple[ToolSpec, ...], parallel: bool) -> Constraint:
    """The constraint of calls of ``tools``, built once per tool set (a client sends the
    same tools with every turn of a conversation)."""
    return constraints.lark(fmt.grammar(tools, parallel), "tools")


def _tool(tool: pb.Tool, i: int, max_bytes: int) -> ToolSpec:
    if not _NAME.fullmatch(tool.name):
        raise InvalidArgument(
            f"tools[{i}].name", "must be 1 to 64 letters, digits, underscores or dashes"
        )
    if tool.name in _CHOICES:
        raise InvalidArgument(f"tools[{i}].name", f"{tool.name!r} is a tool_choice of its own")
    if len(tool.description.encode()) > max_bytes:
        raise InvalidArgument(f"tools[{i}].description", f"is longer than {max_bytes} bytes")
    where = f"tools[{i}].parameters_json"
    if tool.parameters_json:
        try:
            schema = json.loads(tool.parameters_json)
        except (ValueError, RecursionError):
            schema = None
        if not isinstance(schema, dict):
            raise InvalidArgument(where, "must be a JSON Schema object (for the arguments)")
        if schema.get("type", "object") != "object":
            raise InvalidArgument(where, "must describe an object: the arguments are one")
        constraints.json_schema(tool.parameters_json, where, max_bytes)
    return ToolSpec(tool.name, tool.description, tool.parameters_json)
