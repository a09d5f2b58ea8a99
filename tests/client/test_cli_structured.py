"""The ``tokenwire`` command's structured-output and tool flags, run as a real
subprocess against a real server."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import jsonschema
import pytest

from tests.helpers import BIN, ServerProcess
from tokenwire.client import Chunk, Client, ToolCallDelta
from tokenwire.client._cli_output import _write_live
from tokenwire.client.cli import main

PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer", "minimum": 0}},
    "required": ["name", "age"],
}
WEATHER = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
TOOLS = [
    {
        "type": "function",
        "function": {"name": "get_weather", "description": "Weather", "parameters": WEATHER},
    }
]
CALL_LINE = re.compile(r"tool call (\w+) \((call_\w+)\): (.*)", re.DOTALL)


def tokenwire(server: ServerProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "tokenwire"), "--target", server.target, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ),
    )


@pytest.fixture
def files(tmp_path: Path) -> Path:
    (tmp_path / "person.json").write_text(json.dumps(PERSON))
    (tmp_path / "tools.json").write_text(json.dumps(TOOLS))
    (tmp_path / "yes-no.gbnf").write_text('root ::= "yes" | "no"\n')
    (tmp_path / "not-json.json").write_text("[{")
    return tmp_path


@pytest.mark.parametrize("seed", range(4))
def test_json_schema_file_prints_valid_json(
    instant_server: ServerProcess, files: Path, seed: int
) -> None:
    schema = str(files / "person.json")
    done = tokenwire(
        instant_server, "generate", "A person:", "--json-schema", schema, "--seed", str(seed)
    )
    assert done.returncode == 0, done.stderr
    jsonschema.validate(json.loads(done.stdout), PERSON)
    with Client(instant_server.target, timeout=30) as client:
        assert (
            done.stdout == client.complete("A person:", json_schema=PERSON, seed=seed).text + "\n"
        )


def test_the_other_constraints(instant_server: ServerProcess, files: Path) -> None:
    def answer(*flags: str) -> str:
        done = tokenwire(instant_server, "generate", "Well?", "--seed", "2", *flags)
        assert done.returncode == 0, done.stderr
        return done.stdout.removesuffix("\n")

    assert re.fullmatch(r"[0-9]{3}", answer("--regex", "[0-9]{3}"))
    assert answer("--choice", "red", "--choice", "light blue") in ("red", "light blue")
    assert answer("--grammar", str(files / "yes-no.gbnf")) in ("yes", "no")
    assert isinstance(json.loads(answer("--json-object")), dict)


@pytest.mark.parametrize("seed", range(3))
def test_tools_with_tool_choice_required_print_a_call(
    instant_server: ServerProcess, files: Path, seed: int
) -> None:
    done = tokenwire(
        instant_server, "chat", "Weather in Paris?", "--tools", str(files / "tools.json"),
        "--tool-choice", "required", "--no-parallel-tool-calls", "--seed", str(seed), "--stats",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    match = CALL_LINE.fullmatch(done.stdout.removesuffix("\n"))
    assert match is not None, done.stdout
    name, _, arguments = match.groups()
    assert name == "get_weather"
    jsonschema.validate(json.loads(arguments), WEATHER)
    assert "finish_reason=tool_calls" in done.stderr
    with Client(instant_server.target, timeout=30) as client:
        expected = client.complete(
            messages=[("user", "Weather in Paris?")],
            tools=TOOLS,
            tool_choice="required",
            parallel_tool_calls=False,
            seed=seed,
        )
    assert [(c.name, c.arguments) for c in expected.tool_calls] == [(name, arguments)]


def test_several_sequences_print_their_calls_whole(
    instant_server: ServerProcess, files: Path
) -> None:
    done = tokenwire(
        instant_server, "chat", "Weather?", "--tools", str(files / "tools.json"),
        "--tool-choice", "get_weather", "--n", "2", "--seed", "1",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    # Each under its index, in the order they finished.
    sections = re.split(r"^--- (\d) ---\n", done.stdout, flags=re.MULTILINE)
    assert sections[0] == "" and sorted(sections[1::2]) == ["0", "1"]
    for section in sections[2::2]:
        assert section.startswith("tool call get_weather (call_")


def test_json_lines_carry_the_call_deltas(instant_server: ServerProcess, files: Path) -> None:
    done = tokenwire(
        instant_server, "chat", "Weather?", "--tools", str(files / "tools.json"),
        "--tool-choice", "required", "--seed", "1", "--json",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    chunks = [json.loads(line) for line in done.stdout.splitlines()]
    deltas = [delta for chunk in chunks for delta in chunk["tool_calls"]]
    assert deltas[0]["name"] == "get_weather" and deltas[0]["id"]
    json.loads("".join(delta["arguments"] for delta in deltas if delta["index"] == 0))
    assert chunks[-1]["finish_reason"] == "tool_calls"


def test_a_schema_the_server_refuses_exits_2_naming_the_field(
    instant_server: ServerProcess, files: Path
) -> None:
    done = tokenwire(
        instant_server, "generate", "Hi", "--json-schema", str(files / "not-json.json")
    )
    assert done.returncode == 2
    assert done.stderr.startswith("error: INVALID_ARGUMENT: structured_output.json_schema")


@pytest.mark.parametrize(
    "argv",
    [
        ["generate", "Hi", "--regex", "a", "--json-object"],  # one constraint at most
        ["generate", "Hi", "--json-schema", "/no/such/file.json"],
        ["generate", "Hi", "--tools", "tools.json"],  # tools need chat's conversation
        ["chat", "Hi", "--tools", "not-json.json"],
        ["chat", "Hi", "--tools", "person.json"],  # not a list
    ],
)
def test_bad_flags_are_usage_errors(
    argv: list[str],
    files: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(files)
    with pytest.raises(SystemExit) as caught:
        main(argv, environ={})
    assert caught.value.code == 2
    assert "usage: tokenwire" in capsys.readouterr().err


def test_a_tool_the_client_cannot_read_is_a_usage_error_naming_it(
    files: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (files / "nameless.json").write_text(json.dumps([{"type": "function", "function": {}}]))
    with pytest.raises(SystemExit):
        main(["chat", "Hi", "--tools", str(files / "nameless.json")], environ={})
    assert "tools[0].name is missing" in capsys.readouterr().err


def test_a_call_after_text_starts_a_line_of_its_own(capsys: pytest.CaptureFixture[str]) -> None:
    chunks = [
        Chunk("r", 0, "Let me look", (), 1),
        Chunk("r", 0, ".", (), 2, tool_calls=(ToolCallDelta(0, "call_1", "f", ""),)),
        Chunk("r", 0, "", (), 3, tool_calls=(ToolCallDelta(0, "", "", "{}"),)),
        Chunk("r", 0, "", (), 4, tool_calls=(ToolCallDelta(1, "call_2", "g", '{"a": 1}'),)),
    ]
    line_open = False
    for chunk in chunks:
        line_open = _write_live(chunk, line_open)
    assert capsys.readouterr().out == (
        'Let me look.\ntool call f (call_1): {}\ntool call g (call_2): {"a": 1}'
    )
