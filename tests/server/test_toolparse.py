"""Tool calls read out of a streamed text: any split of the text gives the same calls and
content; a malformed call comes back as text; the JSON scanner checks as it reads."""

from __future__ import annotations

import itertools
import json
import random

import pytest

from tokenwire.server.core.jsonscan import CallScanner, ScanError
from tokenwire.server.core.toolcalls import HERMES, LLAMA3_JSON, ToolFormat
from tokenwire.server.core.toolparse import CallParser

NAMES = frozenset({"get_weather", "add"})
Calls = dict[int, dict[str, str]]


def parse(fmt: ToolFormat, text: str, seed: int | None = None) -> tuple[str, Calls]:
    """The content and whole calls of ``text`` fed in random pieces (or one go)."""
    ids = (f"call_{i}" for i in itertools.count())
    parser = CallParser(fmt, NAMES, lambda: next(ids))
    rng = random.Random(seed)
    pieces, at = [], 0
    while at < len(text):
        size = len(text) if seed is None else rng.randint(1, 8)
        pieces.append(text[at : at + size])
        at += size
    content: list[str] = []
    calls: Calls = {}
    for out in [*(parser.push(p) for p in pieces), parser.finish()]:
        content.append(out[0])
        for delta in out[1]:
            if delta.id:
                assert delta.index not in calls, "a call opens once"
                calls[delta.index] = {"id": delta.id, "name": delta.name, "arguments": ""}
            calls[delta.index]["arguments"] += delta.arguments
    return "".join(content), calls


def same_for_every_split(fmt: ToolFormat, text: str) -> tuple[str, Calls]:
    whole = parse(fmt, text)
    for seed in range(40):
        assert parse(fmt, text, seed) == whole, f"seed {seed}"
    return whole


def test_hermes_call_after_text() -> None:
    call = '{"name": "get_weather", "arguments": {"city": "Paris"}}'
    text = f"Let me check.\n<tool_call>\n{call}\n</tool_call>"
    content, calls = same_for_every_split(HERMES, text)
    assert content == "Let me check."
    assert calls == {0: {"id": "call_0", "name": "get_weather", "arguments": '{"city": "Paris"}'}}


def test_hermes_parallel_calls_and_whitespace_between() -> None:
    one = '<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": [2, {"c": null}]}}\n</tool_call>'
    two = '<tool_call>{"arguments": {"x": "}\\"<"}, "name": "get_weather"}</tool_call>'
    content, calls = same_for_every_split(HERMES, f"\n{one}\n\n{two}\n")
    assert content == ""
    assert [c["name"] for c in calls.values()] == ["add", "get_weather"]
    assert json.loads(calls[0]["arguments"]) == {"a": 1, "b": [2, {"c": None}]}
    assert json.loads(calls[1]["arguments"]) == {"x": '}"<'}  # arguments before the name


@pytest.mark.parametrize(
    "text",
    [
        "plain text with < and <tool and <tool_cal and a trailing space ",
        "<tool_call>\nnot json</tool_call> then text",
        '<tool_call>\n{"name": "delete_everything", "arguments": {}}\n</tool_call> after',
        '<tool_call>{"arguments": {}}</tool_call>',  # no name
        '<tool_call>{"name": 5}</tool_call>',
        "<tool_call>\n",  # cut short before anything of the call went out
        "ends with <tool_ca",
    ],
)
def test_what_is_not_a_call_is_returned_as_text(text: str) -> None:
    content, calls = same_for_every_split(HERMES, text)
    assert calls == {}
    assert content == text


def test_a_call_that_breaks_keeps_what_it_streamed_and_the_rest_is_text() -> None:
    text = '<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": oops}} rest'
    content, calls = same_for_every_split(HERMES, text)
    assert calls[0]["arguments"] == '{"a": 1, "b": '
    assert content == "oops}} rest"


def test_arguments_that_are_no_object_end_the_call_there() -> None:
    text = '<tool_call>{"name": "add", "arguments": [1, 2]}</tool_call>'
    content, calls = same_for_every_split(HERMES, text)
    assert calls[0]["name"] == "add" and calls[0]["arguments"] == ""
    assert content == ', "arguments": [1, 2]}</tool_call>'


def test_arguments_written_as_a_string_go_out_whole() -> None:
    text = '<tool_call>{"name": "add", "arguments": "{\\"a\\": 1}"}</tool_call>'
    content, calls = same_for_every_split(HERMES, text)
    assert (content, calls[0]["arguments"]) == ("", '{"a": 1}')
    content, calls = same_for_every_split(HERMES, '<tool_call>{"name": "add", "arguments": "x"}')
    assert calls[0]["arguments"] == "" and content == ', "arguments": "x"}'


def test_arguments_string_nested_past_the_parser_is_no_call() -> None:
    nested = "[" * 5000 + "]" * 5000
    text = f'<tool_call>{{"name": "add", "arguments": "{nested}"}}</tool_call>'
    content, calls = parse(HERMES, text)
    assert calls[0]["arguments"] == "" and content.startswith(', "arguments": "[[[')


def test_the_character_that_breaks_a_call_is_read_again() -> None:
    call = '<tool_call>{"name": "add", "arguments": {}}</tool_call>'
    content, calls = same_for_every_split(HERMES, f"<tool_call>{call}")
    assert content == "<tool_call>" and calls[0]["name"] == "add"


def test_text_before_the_end_marker_is_content_but_the_marker_is_not() -> None:
    text = '<tool_call>{"name": "add", "arguments": {}} oops</tool_call> after'
    content, calls = same_for_every_split(HERMES, text)
    assert content == "oops after" and calls[0]["arguments"] == "{}"


def test_a_call_cut_short_keeps_its_partial_arguments() -> None:
    content, calls = same_for_every_split(HERMES, '<tool_call>{"name": "add", "arguments": {"a": 1')
    assert content == ""
    assert calls[0]["arguments"] == '{"a": '  # the number might go on: not sent yet


def test_a_call_without_arguments_gets_an_empty_object() -> None:
    _, calls = same_for_every_split(HERMES, '<tool_call>{"name": "add"}</tool_call>')
    assert calls[0]["arguments"] == "{}"


def test_llama3_json_calls_separated_by_semicolons() -> None:
    first = '{"name": "get_weather", "parameters": {"city": "Rome"}}'
    text = f' {first}; {{"name": "add", "arguments": {{"a": 2}}}}'
    content, calls = same_for_every_split(LLAMA3_JSON, text)
    assert content == ""
    assert [(c["name"], json.loads(c["arguments"])) for c in calls.values()] == [
        ("get_weather", {"city": "Rome"}),
        ("add", {"a": 2}),
    ]


def test_llama3_json_python_tag_and_plain_answers() -> None:
    _, calls = same_for_every_split(LLAMA3_JSON, '<|python_tag|>{"name": "add", "parameters": {}}')
    assert calls[0]["name"] == "add"
    for text in (
        "  The answer is 4.",
        '{"x": 1} is JSON, not a call',
        "<|python_tag|> no call",
        '<|python_tag|>{"name": "unknown"}',
    ):
        assert same_for_every_split(LLAMA3_JSON, text) == (text, {})
    _, calls = same_for_every_split(LLAMA3_JSON, '{"name": "add", "parameters": {}}; ')
    assert len(calls) == 1
    assert same_for_every_split(LLAMA3_JSON, '{"name": "add", "parameters": {}}; ')[0] == ""


@pytest.mark.parametrize("fmt", [HERMES, LLAMA3_JSON])
def test_text_without_calls_passes_unchanged(fmt: ToolFormat) -> None:
    rng = random.Random(1)
    alphabet = "ab <>{}\"'\n/_tolcal:;"
    for _ in range(300):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
        if "<tool_call>" in text or text.lstrip().startswith("{"):
            continue
        content, calls = parse(fmt, text, seed=rng.randint(0, 99))
        assert (content, calls) == (text, {})


@pytest.mark.parametrize(
    ("text", "name", "arguments"),
    [
        ('{"name": "f", "arguments": {"a": [1, 2.5e-3, {"b": null}], "c": "x\\"}"}}', "f", True),
        ('{"na\\u006de": "g", "parameters": {}}', "g", True),
        ('{"name": "f", "extra": [true, false], "arguments": {"k": -0}}', "f", True),
    ],
)
def test_scanner_reads_valid_calls(text: str, name: str, arguments: bool) -> None:
    scan = CallScanner(("arguments", "parameters"))
    for ch in text:
        scan.feed(ch)
    assert scan.done and scan.name == name
    assert json.loads(scan.arguments_text() or "") == json.loads(text).get(
        "arguments", json.loads(text).get("parameters")
    )


@pytest.mark.parametrize(
    "text",
    [
        "[1]",
        '{"name" 1}',
        '{"name": "f",}',
        '{"a": 01}',
        '{"a": tru}',
        '{"a": "\\x"}',
        '{"a": "\\u12g4"}',
        '{"a": [1 2]}',
        '{"a": 1]',
        '{"a": "line\nbreak"}',
        '{"arguments": 12}',
        "{'a': 1}",
    ],
)
def test_scanner_finds_bad_json_where_it_goes_wrong(text: str) -> None:
    scan = CallScanner(("arguments",))
    with pytest.raises(ScanError):
        for ch in text:
            scan.feed(ch)
        scan.feed(" ")  # a number or literal at the end ends here
    assert scan.error
