"""The ``tokenwire`` command's structured-output and tool flags, and the options they make.

    tokenwire generate "A person:" --json-schema person.schema.json
    tokenwire chat "Weather in Paris?" --tools tools.json --tool-choice required

Files are read when the flags are parsed, so that a missing or malformed file is a
usage error (exit 2) before any call; what is in them (a schema that does not
compile, a tool's name) is the server's to refuse, naming the field.
"""

from __future__ import annotations

import argparse
import json
from typing import cast

from tokenwire.client import GenerateOptions
from tokenwire.client._structured import tool

# Flags whose argparse dest is the name of a generation option.
_FLAGS = (
    "json_schema",
    "json_object",
    "regex",
    "grammar",
    "choice",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
)


def add_structured_flags(parser: argparse.ArgumentParser, *, tools: bool) -> None:
    """The structured-output flags, one at most, and with `tools` the tool flags
    (tools need a conversation: ``chat``, not ``generate``)."""
    group = parser.add_argument_group(
        "structured output", "constrain the answer; one of these at most"
    )
    one = group.add_mutually_exclusive_group()
    one.add_argument(
        "--json-schema",
        type=_text_file,
        metavar="FILE",
        help="the answer is JSON valid against the JSON Schema in FILE (default: none)",
    )
    one.add_argument(
        "--json-object",
        action="store_true",
        default=None,
        help="the answer is a JSON object, any object (default: off)",
    )
    one.add_argument("--regex", metavar="RE", help="the whole answer matches RE (default: none)")
    one.add_argument(
        "--grammar",
        type=_text_file,
        metavar="FILE",
        help="the answer matches the root rule of the GBNF grammar in FILE (default: none)",
    )
    one.add_argument(
        "--choice",
        action="append",
        metavar="TEXT",
        help="the answer is exactly one of the --choice texts; repeatable (default: none)",
    )
    if not tools:
        return
    group = parser.add_argument_group(
        "tools", "offer functions to call; calls print as `tool call NAME (ID): ARGUMENTS`"
    )
    group.add_argument(
        "--tools",
        type=_tools_file,
        metavar="FILE",
        help='a JSON list of tools in OpenAI\'s shape, [{"type": "function", "function": '
        '{"name", "description", "parameters"}}] (default: none)',
    )
    group.add_argument(
        "--tool-choice",
        metavar="CHOICE",
        help="auto, none, required (at least one call) or a tool's name (a call of it) "
        "(default: auto)",
    )
    group.add_argument(
        "--no-parallel-tool-calls",
        dest="parallel_tool_calls",
        action="store_const",
        const=False,
        help="one call at most, not several (default: several may be made)",
    )


def structured_options(args: argparse.Namespace) -> GenerateOptions:
    """The structured-output and tool flags the user gave (``generate`` has no tool flags)."""
    given = {name: getattr(args, name, None) for name in _FLAGS}
    return cast(
        GenerateOptions, {name: value for name, value in given.items() if value is not None}
    )


def _text_file(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as file:
            return file.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise argparse.ArgumentTypeError(f"cannot read {path}: {exc}") from exc


def _tools_file(path: str) -> list[object]:
    try:
        tools = json.loads(_text_file(path))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{path} is not JSON: {exc}") from exc
    if not isinstance(tools, list):
        raise argparse.ArgumentTypeError(f"{path} must hold a JSON list of tools")
    for i, value in enumerate(tools):
        try:
            tool(value, f"tools[{i}]")  # the client's own reading, to fail before a call
        except TypeError as exc:
            raise argparse.ArgumentTypeError(f"{path}: {exc}") from exc
    return tools
