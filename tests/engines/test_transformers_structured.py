"""Structured output and tools on the transformers engine, with the tiny random Llama.

Random weights write whatever the grammar lets them, which is the point: every
answer must still match its constraint, whatever the seed."""

from __future__ import annotations

import asyncio
import json
import math
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import jsonschema
import pytest
from llguidance import LLMatcher

pytest.importorskip("torch")
pytest.importorskip("transformers")

from tokenwire.server.app import Server
from tokenwire.server.core.constraints import compile_constraint, lark
from tokenwire.server.engines import grammar
from tokenwire.server.engines._hf_grammar import ModelGrammars
from tokenwire.server.engines.base import (
    ChatMessage,
    Constraint,
    InvalidInput,
    PromptInput,
    ToolCall,
    ToolSpec,
)
from tokenwire.server.engines.transformers import TransformersEngine
from tokenwire.v1 import generation_pb2 as pb
from tokenwire.v1 import generation_pb2_grpc as pb_grpc

from .test_transformers import Seq, collect, prompt_ids, request, settings

SCHEMAS: dict[str, dict[str, Any]] = {
    "object": {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 8},
            "age": {"type": "integer", "minimum": 18},
        },
        "required": ["name", "age"],
        "additionalProperties": False,
    },
    "enum": {"enum": ["red", "green", "blue", 7, None]},
    "array": {
        "type": "array",
        "items": {"type": "integer", "minimum": 0, "maximum": 99},
        "minItems": 1,
        "maxItems": 4,
    },
}
WEATHER = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 10},
        "days": {"type": "integer", "minimum": 1, "maximum": 7},
    },
    "required": ["city", "days"],
    "additionalProperties": False,
}


@pytest.fixture
async def engine(model_dir: Path) -> AsyncIterator[TransformersEngine]:
    engine = TransformersEngine.from_settings(settings(model_dir))
    await engine.start()
    yield engine
    await engine.close()


def schema(value: dict[str, Any]) -> Constraint:
    return compile_constraint("json_schema", json.dumps(value), (), "structured_output")


async def answers(
    engine: TransformersEngine, constraint: Constraint, seeds: int = 8, n: int = 4, **fields: Any
) -> list[Seq]:
    """n answers for each seed at temperature 1, all submitted at once (one batch)."""
    ids = await prompt_ids(engine)
    fields.setdefault("max_tokens", 400)
    runs = await asyncio.gather(
        *(
            collect(
                engine.submit(
                    request(ids, temperature=1.0, seed=s, n=n, constraint=constraint, **fields)
                )
            )
            for s in range(seeds)
        )
    )
    return [seq for run in runs for seq in run.values()]


# --- constraints -----------------------------------------------------------------------


@pytest.mark.parametrize("name", SCHEMAS)
async def test_every_json_schema_answer_validates(engine: TransformersEngine, name: str):
    for seq in await answers(engine, schema(SCHEMAS[name])):
        assert seq.finish == "stop", seq.text
        jsonschema.validate(json.loads(seq.text), SCHEMAS[name])


async def test_json_object_answers_are_objects(engine: TransformersEngine):
    json_object = compile_constraint("json_object", "", (), "structured_output")
    # Free-form objects may run long: those cut by max_tokens are not answers.
    done = [s for s in await answers(engine, json_object, max_tokens=200) if s.finish == "stop"]
    assert len(done) >= 8
    assert all(isinstance(json.loads(s.text), dict) for s in done)


@pytest.mark.parametrize(
    ("kind", "value", "choices", "pattern"),
    [
        ("regex", r"[A-Z][a-z]{2,6}-\d{3}", (), r"[A-Z][a-z]{2,6}-\d{3}"),
        ("choice", "", ("yes", "no", "maybe so", "日本"), r"yes|no|maybe so|日本"),
        # GBNF, as llama.cpp and xgrammar write it.
        (
            "grammar",
            'root ::= "(" item ("," item)* ")"\nitem ::= [a-z]+ | [0-9]{1,3}',
            (),
            r"\((?:[a-z]+|[0-9]{1,3})(?:,(?:[a-z]+|[0-9]{1,3}))*\)",
        ),
    ],
)
async def test_regex_choice_and_grammar_answers_match(
    engine: TransformersEngine, kind: Any, value: str, choices: tuple[str, ...], pattern: str
):
    constraint = compile_constraint(kind, value, choices, "structured_output")
    seen = set()
    for seq in await answers(engine, constraint, max_tokens=64):
        if kind == "grammar" and seq.finish == "length":
            continue  # a list may run on past max_tokens
        assert seq.finish == "stop" and re.fullmatch(pattern, seq.text), seq.text
        seen.add(seq.text)
    assert len(seen) > 2  # the seeds answer differently


async def test_max_tokens_cuts_an_answer_with_length(engine: TransformersEngine):
    for seq in await answers(engine, schema(SCHEMAS["object"]), seeds=2, max_tokens=6):
        assert seq.finish == "length" and len(seq.tokens) == 6
        with pytest.raises(ValueError):
            json.loads(seq.text)


async def test_a_schema_compiles_once_across_requests(
    engine: TransformersEngine, monkeypatch: pytest.MonkeyPatch
):
    compiled: list[str] = []
    real = LLMatcher

    def counting(tokenizer: Any, text: str, **options: Any) -> Any:
        compiled.append(text)
        return real(tokenizer, text, **options)

    monkeypatch.setattr(grammar, "LLMatcher", counting)
    constraint = schema(SCHEMAS["array"])
    for _ in range(3):  # requests of 2 sequences each: each sequence gets a copy
        await answers(engine, constraint, seeds=1, n=2)
    matchers = engine._grammars.matchers if engine._grammars else None
    assert matchers is not None
    assert compiled == [constraint.grammar] and list(matchers._cache) == compiled


async def test_constrained_and_plain_requests_share_a_batch(engine: TransformersEngine):
    """A plain request beside constrained ones (n = 3) draws what it draws alone."""
    ids = await prompt_ids(engine)
    plain: dict[str, Any] = {"temperature": 1.0, "seed": 5, "max_tokens": 40, "ignore_eos": True}
    alone = (await collect(engine.submit(request(ids, **plain))))[0]
    constraint = schema(SCHEMAS["object"])
    handles = [
        engine.submit(request(ids, seed=1, n=3, constraint=constraint, max_tokens=400)),
        engine.submit(request(ids, **plain)),
        engine.submit(request(ids, seed=2, n=2, constraint=constraint, max_tokens=400)),
    ]
    first, beside, last = await asyncio.gather(*(collect(h) for h in handles))
    assert beside[0].tokens == alone.tokens and beside[0].text == alone.text
    for seq in [*first.values(), *last.values()]:
        jsonschema.validate(json.loads(seq.text), SCHEMAS["object"])
    assert len({s.text for s in first.values()}) == 3  # n sequences draw apart


async def test_logprobs_describe_the_constrained_distribution(engine: TransformersEngine):
    """Replayed through a matcher of its own, no alternative names a token the grammar
    forbids, and the alternatives of a step that allows few tokens hold all the mass."""
    constraint = compile_constraint("choice", "", ("yes", "no", "maybe"), "structured_output")
    assert engine._grammars is not None
    whole = 0
    for seq in await answers(engine, constraint, seeds=4, n=2, logprobs=True, top_logprobs=50):
        matcher = engine._grammars.new(constraint, 1)[0]
        for token, lp in zip(seq.tokens, seq.logprobs, strict=True):
            allowed = grammar.allowed_tokens(matcher)
            assert lp.token_id == token and allowed >> token & 1
            assert lp.top and all(allowed >> t.token_id & 1 for t in lp.top)
            assert all(math.isfinite(t.logprob) for t in lp.top)
            if len(lp.top) < 50:  # every allowed token is listed: all the mass is there
                assert math.fsum(math.exp(t.logprob) for t in lp.top) == pytest.approx(1.0)
                whole += 1
            assert matcher.consume_token(token)
        assert seq.text in ("yes", "no", "maybe")
    assert whole > 0


async def test_min_tokens_and_ignore_eos_give_way_to_the_grammar(engine: TransformersEngine):
    choice = compile_constraint("choice", "", ("yes", "no"), "structured_output")
    for seq in await answers(engine, choice, seeds=2, min_tokens=30):
        assert seq.finish == "stop" and seq.text in ("yes", "no")
    # End-of-sequence waits where the grammar could go on, and comes when it cannot.
    digits = compile_constraint("regex", r"[0-9]+|x", (), "structured_output")
    for seq in await answers(engine, digits, seeds=2, ignore_eos=True, max_tokens=12):
        assert re.fullmatch(r"[0-9]+|x", seq.text)
        assert (seq.finish, len(seq.tokens)) == (("stop", 1) if seq.text == "x" else ("length", 12))
    many = await answers(engine, digits, seeds=2, min_tokens=5, max_tokens=12)
    assert all(len(s.tokens) >= 5 or s.text == "x" for s in many)


async def test_a_grammar_that_cannot_bind_is_refused_at_submit(engine: TransformersEngine):
    # Valid without a vocabulary; this one has no token 5000.
    constraint = lark("start: <[5000]>", "structured_output")
    with pytest.raises(InvalidInput) as error:
        engine.submit(request(await prompt_ids(engine), constraint=constraint))
    assert error.value.field_path == "structured_output"
    assert engine.in_flight() == 0


def test_a_tokenizer_llguidance_cannot_read_leaves_no_structured_output():
    grammars = ModelGrammars(object(), 384, {1})  # not a fast tokenizer
    with pytest.raises(InvalidInput, match="structured_output: not available: llguidance"):
        grammars.new(schema(SCHEMAS["enum"]), 1)


# --- tools -----------------------------------------------------------------------------


def forced_call(name: str, parameters: dict[str, Any]) -> Constraint:
    """The Lark grammar the server builds for a forced Hermes-style call."""
    call = {
        "type": "object",
        "properties": {"name": {"const": name}, "arguments": parameters},
        "required": ["name", "arguments"],
        "additionalProperties": False,
    }
    text = (
        'start: call\ncall: "<tool_call>\\n" %json '
        + json.dumps({"anyOf": [call]})
        + ' "\\n</tool_call>"'
    )
    return lark(text, "tools")


async def test_a_forced_tool_call_is_a_valid_call(engine: TransformersEngine):
    for seq in await answers(engine, forced_call("get_weather", WEATHER), seeds=4):
        assert seq.finish == "stop"
        body = re.fullmatch(r"<tool_call>\n(.*)\n</tool_call>", seq.text, re.DOTALL)
        assert body, seq.text
        call = json.loads(body[1])
        assert call["name"] == "get_weather"
        jsonschema.validate(call["arguments"], WEATHER)


async def test_tools_and_tool_turns_reach_the_chat_template(
    engine: TransformersEngine, tokenizer: Any
):
    tools = (ToolSpec("get_weather", "The weather in a city", json.dumps(WEATHER)),)
    messages = (
        ChatMessage("user", "Weather in Paris?"),
        ChatMessage(
            "assistant", "", tool_calls=(ToolCall("c1", "get_weather", '{"city": "Paris"}'),)
        ),
        ChatMessage("tool", "18C and sunny", tool_call_id="c1"),
    )
    ids = await engine.tokenize(PromptInput(messages=messages, tools=tools))
    text = tokenizer.decode(ids)
    listed = json.loads(re.search(r"<tools>\n(.*)\n</tools>", text)[1])  # type: ignore[index]
    assert listed == {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The weather in a city",
            "parameters": WEATHER,
        },
    }
    assert text.startswith("<|system|># Tools\n")
    assert "<|user|>Weather in Paris?\n" in text
    # The call's arguments as an object (tojson), not a JSON string quoted again.
    assert (
        '<|assistant|><tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n'
        "</tool_call>\n"
    ) in text
    assert text.endswith("<|user|><tool_response>\n18C and sunny\n</tool_response>\n<|assistant|>")
    plain = await engine.tokenize(PromptInput(messages=messages[:1]))
    assert tokenizer.decode(plain) == "<|user|>Weather in Paris?\n<|assistant|>"  # no tools


# --- through a real server -------------------------------------------------------------


@pytest.fixture
async def stub(model_dir: Path) -> AsyncIterator[pb_grpc.GenerationServiceAsyncStub]:
    server = Server(settings(model_dir, port=0, metrics_port=0, http_port=0))
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            yield pb_grpc.GenerationServiceStub(channel)
    finally:
        await server.stop(grace=0)


async def test_structured_output_and_a_forced_call_over_grpc(
    stub: pb_grpc.GenerationServiceAsyncStub,
):
    """The server compiles the constraint, the engine masks with it, and the server's
    parser reads the forced call the tiny model was made to write."""
    answer = await stub.Complete(
        pb.GenerateRequest(
            prompt="the quick brown fox",
            structured_output=pb.StructuredOutput(json_schema=json.dumps(SCHEMAS["object"])),
            sampling=pb.SamplingParams(seed=3, n=2),
            stopping=pb.StoppingOptions(max_tokens=400),
        ),
        timeout=30,
    )
    for choice in answer.choices:
        assert choice.finish_reason == pb.FINISH_REASON_STOP
        jsonschema.validate(json.loads(choice.text), SCHEMAS["object"])
    tool = pb.Tool(name="get_weather", description="weather", parameters_json=json.dumps(WEATHER))
    for seed in range(3):
        called = await stub.Complete(
            pb.GenerateRequest(
                messages=pb.ChatMessages(messages=[pb.ChatMessage(role="user", content="Paris?")]),
                tools=[tool],
                tool_choice="get_weather",
                parallel_tool_calls=False,
                sampling=pb.SamplingParams(seed=seed),
                stopping=pb.StoppingOptions(max_tokens=300),  # the tools prompt is long
            ),
            timeout=30,
        )
        choice = called.choices[0]
        assert choice.finish_reason == pb.FINISH_REASON_TOOL_CALLS and choice.text == ""
        [call] = choice.tool_calls
        assert call.name == "get_weather"
        jsonschema.validate(json.loads(call.arguments), WEATHER)
