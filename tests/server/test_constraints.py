"""Constraints and tools are validated and compiled up front, naming the field; a
schema is compiled once; the grammar of a forced call admits exactly valid calls."""

from __future__ import annotations

import itertools
import json
import random

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from llguidance import LLMatcher

from tokenwire.server.core import constraints
from tokenwire.server.core.errors import InvalidArgument
from tokenwire.server.core.toolcalls import HERMES, LLAMA3_JSON, ToolFormat, plan_tools
from tokenwire.server.engines.base import ToolSpec
from tokenwire.server.engines.simgrammar import Constrained, TokenKinds, sim_matchers
from tokenwire.server.engines.simtok import EOS_ID, SimTokenizer
from tokenwire.v1 import generation_pb2 as pb

LIMIT = 64 * 1024
CHAT = pb.ChatMessages(messages=[pb.ChatMessage(role="user", content="hi")])


def so(**kind: object) -> pb.StructuredOutput:
    return pb.StructuredOutput(**kind)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "given",
    [
        so(json_schema='{"type": "object", "properties": {"a": {"type": "integer"}}}'),
        so(json_schema="true"),
        so(json_object=True),
        so(regex=r"[a-z]+@[a-z]+\.com"),
        so(ebnf_grammar='root ::= "yes" | "no" | digits\ndigits ::= [0-9]+'),
        so(choice=pb.Choices(choices=["red", 'say "hi"', "naïve"])),
        # Escapes with leading zeros (llguidance's converter drops the zeros: worked around).
        so(ebnf_grammar=r'root ::= "caf\u00e9" | [\u0041-\u005a] | "\u0100" | "\U0001F600"'),
    ],
)
def test_valid_constraints_compile(given: pb.StructuredOutput) -> None:
    constraint = constraints.structured_output(given, LIMIT)
    assert constraint is not None and constraint.grammar
    assert LLMatcher.validate_grammar(constraint.grammar) == ""


@pytest.mark.parametrize(
    ("given", "field", "words"),
    [
        (so(json_schema="{not json"), "structured_output.json_schema", "not valid JSON"),
        (so(json_schema='{"a": NaN}'), "structured_output.json_schema", "not valid JSON"),
        (so(json_schema="[1]"), "structured_output.json_schema", "JSON Schema"),
        (so(json_schema='{"type": "nope"}'), "structured_output.json_schema", "nope"),
        (so(json_schema='{"$ref": "#/$defs/missing"}'), "structured_output.json_schema", "missing"),
        (so(json_schema=" "), "structured_output.json_schema", "empty"),
        (so(json_object=False), "structured_output.json_object", "true"),
        (so(regex="[a-"), "structured_output.regex", "unclosed"),
        (so(ebnf_grammar="root ::= ("), "structured_output.ebnf_grammar", "GBNF"),
        (so(ebnf_grammar="root ::= undefined"), "structured_output.ebnf_grammar", "undefined"),
        (so(ebnf_grammar='start: "lark, not gbnf"'), "structured_output.ebnf_grammar", "GBNF"),
        (so(choice=pb.Choices()), "structured_output.choice.choices", "empty"),
        (so(choice=pb.Choices(choices=["a", ""])), "structured_output.choice.choices[1]", "empty"),
        (so(regex="a" * (LIMIT + 1)), "structured_output.regex", "limit"),
    ],
)
def test_bad_constraints_are_refused_naming_the_field(
    given: pb.StructuredOutput, field: str, words: str
) -> None:
    with pytest.raises(InvalidArgument) as caught:
        constraints.structured_output(given, LIMIT)
    assert caught.value.field == field
    assert words in caught.value.description


def test_gbnf_escapes_mean_their_characters() -> None:
    grammar = r'root ::= "caf\u00e9 \x41\u0100\U0001F600 \\u0041"'
    constraint = constraints.structured_output(so(ebnf_grammar=grammar), LIMIT)
    assert constraint is not None
    tokenizer = SimTokenizer()
    sampler = Constrained(
        sim_matchers(tokenizer).new(constraint), TokenKinds(tokenizer), tokenizer, random.Random(0)
    )
    ids = []
    while (token := sampler.next_token()) != EOS_ID:
        ids.append(token)
    assert tokenizer.decode(ids) == "café AĀ😀 \\u0041"


def test_a_schema_is_compiled_once() -> None:
    schema = json.dumps({"type": "object", "properties": {"unique_to_this_test": {}}})
    before = constraints._compiled.cache_info()
    for _ in range(5):
        constraints.structured_output(so(json_schema=schema), LIMIT)
    after = constraints._compiled.cache_info()
    assert after.misses - before.misses == 1
    assert after.hits - before.hits == 4


WEATHER = pb.Tool(
    name="get_weather",
    description="The weather in a city",
    parameters_json=json.dumps(
        {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"$ref": "#/$defs/unit"}},
            "required": ["city", "unit"],
            "$defs": {"unit": {"enum": ["celsius", "fahrenheit"]}},
        }
    ),
)
ADD = pb.Tool(
    name="add",
    parameters_json=json.dumps(
        {
            "type": "object",
            "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
            "required": ["a", "b"],
            "additionalProperties": False,
        }
    ),
)


def request(**fields: object) -> pb.GenerateRequest:
    return pb.GenerateRequest(messages=CHAT, **fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("req", "field"),
    [
        (request(tools=[pb.Tool(name="bad name")]), "tools[0].name"),
        (request(tools=[pb.Tool(name="x" * 65)]), "tools[0].name"),
        (request(tools=[ADD, ADD]), "tools[1].name"),
        (request(tools=[pb.Tool(name="f", parameters_json="[]")]), "tools[0].parameters_json"),
        (
            request(tools=[pb.Tool(name="f", parameters_json='{"type": 3}')]),
            "tools[0].parameters_json",
        ),
        (request(tools=[ADD], tool_choice="subtract"), "tool_choice"),
        (request(tool_choice="required"), "tool_choice"),
        (request(tool_choice="add"), "tool_choice"),
        (pb.GenerateRequest(prompt="hi", tools=[ADD]), "tools"),
        (request(tools=[ADD], structured_output=so(json_object=True)), "structured_output"),
    ],
)
def test_bad_tools_are_refused_naming_the_field(req: pb.GenerateRequest, field: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        plan_tools(req, req.WhichOneof("input") or "", "hermes", LIMIT)
    assert caught.value.field == field


def test_tool_choice_decides_what_is_forced() -> None:
    assert plan_tools(request(tool_choice="none"), "messages", "hermes", LIMIT) is None
    auto = plan_tools(request(tools=[ADD]), "messages", "hermes", LIMIT)
    assert auto is not None and auto.choice == "auto" and auto.forced is None and auto.offered
    none = plan_tools(request(tools=[ADD], tool_choice="none"), "messages", "hermes", LIMIT)
    assert none is not None and not none.parses and none.offered is None
    named = plan_tools(
        request(tools=[ADD, WEATHER], tool_choice="add"), "messages", "hermes", LIMIT
    )
    assert (
        named is not None and named.forced is not None and "get_weather" not in named.forced.value
    )


def sample_calls(fmt: ToolFormat, tools: list[pb.Tool], parallel: bool, seeds: int) -> list[str]:
    """Answers of the simulator's sampler under the forced-call grammar."""
    specs = [ToolSpec(t.name, t.description, t.parameters_json) for t in tools]
    constraint = constraints.lark(fmt.grammar(specs, parallel), "tools")
    tokenizer = SimTokenizer()
    matchers, kinds = sim_matchers(tokenizer), TokenKinds(tokenizer)
    answers = []
    for seed in range(seeds):
        sampler = Constrained(matchers.new(constraint), kinds, tokenizer, random.Random(seed))
        ids = []
        for _ in range(500):
            token = sampler.next_token()
            if token == EOS_ID:
                break
            ids.append(token)
        else:
            pytest.fail("the answer did not end")
        answers.append(tokenizer.decode(ids))
    return answers


@pytest.mark.parametrize(
    ("fmt", "parallel"), [(HERMES, False), (HERMES, True), (LLAMA3_JSON, True)]
)
def test_a_forced_call_is_always_a_valid_call(fmt: ToolFormat, parallel: bool) -> None:
    schemas = {t.name: json.loads(t.parameters_json) for t in (WEATHER, ADD)}
    counts = set()
    for answer in sample_calls(fmt, [WEATHER, ADD], parallel, 30):
        if fmt.start:
            bodies = [b.split("</tool_call>")[0] for b in answer.split("<tool_call>")[1:]]
        else:
            bodies = answer.split("; ")
        counts.add(len(bodies))
        for body in bodies:
            call = json.loads(body)
            assert set(call) == {"name", fmt.arguments_key}
            jsonschema.validate(call[fmt.arguments_key], schemas[call["name"]])
    assert counts == {1} if not parallel else 1 in counts


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
SCHEMA_WORDS = st.sampled_from(
    ["type", "properties", "items", "enum", "const", "anyOf", "oneOf", "$ref", "pattern",
     "minimum", "maxLength", "required", "additionalProperties", "format", "$defs", "not"]
)  # fmt: skip
SCHEMAS_ = st.recursive(
    st.sampled_from(["object", "string", "integer", "array", "#/$defs/a", "^a+$", 3, True, None]),
    lambda inner: st.dictionaries(SCHEMA_WORDS, inner, max_size=4) | st.lists(inner, max_size=3),
    max_leaves=15,
)


@settings(max_examples=300, deadline=None)
@given(
    kind=st.sampled_from(["json_schema", "regex", "ebnf_grammar"]),
    text=st.text(max_size=60) | SCHEMAS_.map(json.dumps) | JSON_VALUES.map(json.dumps),
)
def test_any_constraint_text_compiles_or_is_refused(kind: str, text: str) -> None:
    """Never an error other than InvalidArgument (a client's text must not cause a 500)."""
    try:
        constraint = constraints.structured_output(so(**{kind: text}), LIMIT)
    except InvalidArgument as error:
        assert error.field == f"structured_output.{kind}"
        return
    assert constraint is not None
    sim_matchers(SimTokenizer()).new(constraint)  # binds to a vocabulary too


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=80), cuts=st.lists(st.integers(0, 80), max_size=6))
def test_the_parser_takes_any_text_in_any_pieces(text: str, cuts: list[int]) -> None:
    from tokenwire.server.core.toolparse import CallParser

    for fmt in (HERMES, LLAMA3_JSON):
        parser = CallParser(fmt, frozenset({"f"}))
        bounds = [0, *sorted(c for c in cuts if c < len(text)), len(text)]
        outs = [parser.push(text[a:b]) for a, b in itertools.pairwise(bounds)]
        outs.append(parser.finish())
        if not any(calls for _, calls in outs):
            assert "".join(content for content, _ in outs) == text
