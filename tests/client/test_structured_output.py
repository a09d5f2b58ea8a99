"""Structured output through the sync `Client` against a real server: answers satisfy
their constraint for many seeds, streamed or whole, and a bad constraint is refused
naming its field."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import jsonschema
import pytest

from tests.helpers import ServerProcess
from tokenwire.client import Client, GenerateOptions, InvalidRequest

SEEDS = range(16)
PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "minLength": 1},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "role": {"enum": ["admin", "user", "guest"]},
        "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 3},
    },
    "required": ["name", "age", "role"],
    "additionalProperties": False,
}
PLATE = r"[A-Z]{2}-[0-9]{3}"
YES_NO = 'root ::= answer "."\nanswer ::= "yes" | "no"\n'


@pytest.fixture
def client(instant_server: ServerProcess) -> Iterator[Client]:
    with Client(instant_server.target, timeout=30) as client:
        yield client


@pytest.mark.parametrize("seed", SEEDS)
def test_json_schema_answers_validate(client: Client, seed: int) -> None:
    answer = client.complete("Describe a user", json_schema=PERSON, seed=seed)
    assert answer.finish_reason == "stop"
    jsonschema.validate(json.loads(answer.text), PERSON)
    # The same seed streamed gives the same answer, and the schema as text the same.
    streamed = client.generate("Describe a user", json_schema=json.dumps(PERSON), seed=seed)
    assert streamed.collect().text == answer.text


@pytest.mark.parametrize("seed", SEEDS)
def test_regex_choice_grammar_and_json_object_answers_match(client: Client, seed: int) -> None:
    assert re.fullmatch(PLATE, client.complete("A plate", regex=PLATE, seed=seed).text)
    colours = ["red", "green", "light blue"]
    assert client.complete("A colour", choice=colours, seed=seed).text in colours
    assert client.complete("Yes or no?", grammar=YES_NO, seed=seed).text in ("yes.", "no.")
    assert isinstance(json.loads(client.complete("JSON", json_object=True, seed=seed).text), dict)


def test_several_sequences_each_satisfy_the_constraint(client: Client) -> None:
    answer = client.complete("A plate", regex=PLATE, n=4, seed=3)
    assert len(answer.choices) == 4
    assert all(re.fullmatch(PLATE, choice.text) for choice in answer.choices)


def test_two_constraints_raise_type_error_before_any_call(client: Client) -> None:
    with pytest.raises(TypeError, match=r"at most one of .*\(got regex, choice\)"):
        client.generate("Hi", regex="a+", choice=["a"])
    with pytest.raises(TypeError, match="at most one of"):
        client.complete("Hi", json_schema=PERSON, json_object=True)


BAD_CONSTRAINTS: list[tuple[GenerateOptions, str]] = [
    ({"json_schema": '{"type": "object",'}, "structured_output.json_schema"),
    ({"json_schema": {"type": "no-such-type"}}, "structured_output.json_schema"),
    ({"regex": "[0-9"}, "structured_output.regex"),
    ({"grammar": "root ::= ("}, "structured_output.ebnf_grammar"),
    ({"choice": []}, "structured_output.choice.choices"),
]


@pytest.mark.parametrize(("options", "field"), BAD_CONSTRAINTS)
def test_a_bad_constraint_is_refused_naming_the_field(
    client: Client, options: GenerateOptions, field: str
) -> None:
    with pytest.raises(InvalidRequest) as caught:
        client.complete("Hi", **options)
    assert [violation.field for violation in caught.value.field_violations] == [field]
    # A stream raises the same on its first read.
    with pytest.raises(InvalidRequest) as caught:
        list(client.generate("Hi", **options))
    assert caught.value.field_violations[0].field == field
