"""Structured output and tools on the TensorRT-LLM adapter, on the fake ``tensorrt_llm``:
the grammar engine the LLM gets, each constraint as ``GuidedDecodingParams``, output the
fake constrains for real, and conversations with tools through the chat template."""

from __future__ import annotations

import importlib
import json
import re
from typing import Any

import jsonschema
import pytest
from llguidance.gbnf_to_lark import gbnf_to_lark

from tokenwire.server.core import constraints
from tokenwire.server.engines._trtllm_guided import guide_fields, xgrammar_ebnf, xgrammar_literal
from tokenwire.server.engines.base import (
    ChatMessage,
    Constraint,
    EngineUnavailable,
    GenerationRequest,
    InvalidInput,
    PromptInput,
    RequestFailed,
    SamplingOptions,
    ToolCall,
    ToolSpec,
)
from tokenwire.server.engines.tensorrt_llm import TensorRTLLMEngine
from tokenwire.v1 import generation_pb2 as pb

from . import test_tensorrt_llm as base
from .test_tensorrt_llm import decode, drain, gen, run, settings, stream, submit, text

# The adapter's fixtures, shared with its other tests.
trtllm = base.trtllm
make_engine = base.make_engine
engine = base.engine
trt_server = base.trt_server
trt_stub = base.trt_stub

SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 40},
        "days": {"type": "integer", "minimum": 1, "maximum": 14},
        "units": {"enum": ["metric", "imperial"]},
    },
    "required": ["city", "days", "units"],
    "additionalProperties": False,
}
REGEX = r"[A-Z]{2}-[0-9]{3,5}"
GBNF = 'root ::= "(" digit+ ")" | "none"\ndigit ::= [0-9]'
CHOICES = ("yes", "no", 'a "quoted" café', "two\nlines", "back\\slash")
# The server's kind of tool-call grammar: a Hermes-style call around an inline schema.
TOOL_CALL = (
    'start: "<tool_call>\\n" %json {"type": "object", "properties": {"name": {"const": '
    '"get_weather"}, "arguments": {"type": "object", "properties": {"city": {"type": '
    '"string", "maxLength": 30}}, "required": ["city"], "additionalProperties": false}}, '
    '"required": ["name", "arguments"], "additionalProperties": false} "\\n</tool_call>"'
)
# Settings for each way of running: TensorRT-LLM backend and guided decoding backend.
BACKENDS = {
    "pytorch-llguidance": {},
    "pytorch-xgrammar": {"guided_decoding_backend": "xgrammar"},
    "tensorrt-xgrammar": {"trtllm_backend": "tensorrt"},
}


def constraint(kind: str, value: str = "", choices: tuple[str, ...] = ()) -> Constraint:
    """A constraint as the server hands it over: validated and compiled by the core."""
    if kind == "lark":
        return constraints.lark(value, "tools")
    return constraints.compile_constraint(kind, value, choices, "structured_output")  # type: ignore[arg-type]


# --- each constraint as GuidedDecodingParams ------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "value", "choices", "llguidance", "xgrammar"),
    [
        ("json_schema", '{"type": "string"}', (), {"json": '{"type": "string"}'}, None),
        # xgrammar's own json_object grammar admits arrays: an object schema keeps the promise.
        ("json_object", "", (), {"json_object": True}, {"json": '{"type": "object"}'}),
        ("regex", REGEX, (), {"regex": REGEX}, None),
        ("grammar", GBNF, (), {"grammar": gbnf_to_lark(GBNF)}, {"grammar": GBNF}),
        (
            "choice",
            "",
            ("yes", 'say "no"'),
            {"grammar": 'start: "yes" | "say \\"no\\""'},
            {"grammar": 'root ::= "yes" | "say \\"no\\""'},
        ),
    ],
)
def test_each_constraint_is_written_for_the_backend_that_reads_it(
    kind, value, choices, llguidance, xgrammar
):
    c = constraint(kind, value, choices)
    assert guide_fields(c, "llguidance") == llguidance
    assert guide_fields(c, "xgrammar") == (xgrammar or llguidance)


def test_a_forced_tool_call_needs_llguidance():
    c = constraint("lark", TOOL_CALL)
    assert guide_fields(c, "llguidance") == {"grammar": TOOL_CALL}
    with pytest.raises(InvalidInput) as error:
        guide_fields(c, "xgrammar")
    assert error.value.field_path == "tool_choice"
    assert "--guided-decoding-backend llguidance" in error.value.description


def test_xgrammar_literals_escape_what_its_parser_reads():
    assert xgrammar_literal('say "hi"\\') == '"say \\"hi\\"\\\\"'
    assert xgrammar_literal("a\nb\tc\rd") == '"a\\nb\\tc\\rd"'
    # "\x" would run on into the hex digits after it; "\u" takes four, always.
    assert xgrammar_literal("\x01F") == '"\\u0001F"'
    assert xgrammar_literal("café 🚀") == '"café 🚀"'


def test_gbnf_hex_escapes_keep_two_digits_for_xgrammar():
    # GBNF's "\x41" is two digits ("A"); xgrammar's would take the "B" after it too.
    assert (
        xgrammar_ebnf(r'root ::= "\x41B" | [\x00-\x1f]') == r'root ::= "\u0041B" | [\u0000-\u001f]'
    )
    assert xgrammar_ebnf(r'root ::= "\\x41"') == r'root ::= "\\x41"'  # an escaped backslash
    assert guide_fields(constraint("grammar", r'root ::= "\x41B"'), "xgrammar") == {
        "grammar": r'root ::= "\u0041B"'
    }


# --- the LLM's backend ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({}, "llguidance"),
        ({"guided_decoding_backend": "llguidance"}, "llguidance"),
        ({"guided_decoding_backend": "xgrammar"}, "xgrammar"),
        ({"trtllm_backend": "tensorrt"}, "xgrammar"),
        ({"trtllm_backend": "tensorrt", "guided_decoding_backend": "xgrammar"}, "xgrammar"),
    ],
)
async def test_the_llm_gets_its_guided_decoding_backend(trtllm, make_engine, values, expected):
    await make_engine(**values)
    assert trtllm._fake.llms[-1].args.values["guided_decoding_backend"] == expected


async def test_llguidance_on_prebuilt_engines_fails_the_start_naming_both_flags(trtllm):
    engine = TensorRTLLMEngine.from_settings(
        settings(trtllm_backend="tensorrt", guided_decoding_backend="llguidance")
    )
    with pytest.raises(EngineUnavailable) as error:
        await engine.start()
    assert "--guided-decoding-backend llguidance" in str(error.value)
    assert "--trtllm-backend" in str(error.value)
    assert not trtllm._fake.llms  # refused before loading anything


async def test_a_model_without_tokenizer_gets_no_backend_and_refuses_constraints(trtllm, tmp_path):
    config = {"eos_token_id": 2, "max_position_embeddings": 2048, "vocab_size": 500}
    (tmp_path / "config.json").write_text(json.dumps(config))
    engine = TensorRTLLMEngine.from_settings(settings(model=str(tmp_path)))
    await engine.start()  # TensorRT-LLM would fail to set a backend up without a tokenizer
    try:
        assert "guided_decoding_backend" not in trtllm._fake.llms[-1].args.values
        request = GenerationRequest(
            "r", (1, 300), max_tokens=5, constraint=constraint("regex", REGEX)
        )
        with pytest.raises(InvalidInput, match="--tokenizer") as error:
            engine.submit(request)
        assert error.value.field_path == "structured_output"
    finally:
        await engine.close()
    named = TensorRTLLMEngine.from_settings(
        settings(model=str(tmp_path), guided_decoding_backend="xgrammar")
    )
    with pytest.raises(EngineUnavailable, match="needs the model's tokenizer"):
        await named.start()
    (tmp_path / "tokenizer.json").write_text("{}")  # now it has one
    engine = TensorRTLLMEngine.from_settings(settings(model=str(tmp_path)))
    await engine.start()
    await engine.close()
    assert trtllm._fake.llms[-1].args.values["guided_decoding_backend"] == "llguidance"


async def test_without_a_guided_decoding_field_constraints_are_refused(
    trtllm, make_engine, monkeypatch
):
    real = trtllm.SamplingParams

    def older_sampling_params(**fields: Any) -> Any:  # a SamplingParams with no guides
        assert "guided_decoding" not in fields
        return real(**fields)

    monkeypatch.setattr(trtllm, "SamplingParams", older_sampling_params)
    engine = await make_engine()
    ids = await engine.tokenize(PromptInput(text="hi"))
    request = GenerationRequest(
        "r", tuple(ids), max_tokens=5, constraint=constraint("regex", REGEX)
    )
    with pytest.raises(InvalidInput, match="no guided decoding") as error:
        engine.submit(request)
    assert error.value.field_path == "structured_output"
    assert (await run(engine, max_tokens=5, ignore_eos=True))[-1].finish_reason == "length"


# --- the fake, as TensorRT-LLM behaves ------------------------------------------------------


def test_the_fake_checks_guides_and_backends_as_tensorrt_llm_does(trtllm):
    guided = trtllm.llmapi.GuidedDecodingParams
    with pytest.raises(
        ValueError, match=r"^Only one guide can be used for a request, but got 2\.$"
    ):
        trtllm.SamplingParams(guided_decoding=guided(json="{}", regex="a+"))
    # At most one: none at all (or only falsy values) is no guide, and no error.
    trtllm.SamplingParams(guided_decoding=guided(json="", json_object=False))
    with pytest.raises(ValueError, match="Input should be 'xgrammar' or 'llguidance'"):
        trtllm.LLM("fake-model", guided_decoding_backend="outlines")
    trt_llm = importlib.import_module("tensorrt_llm._tensorrt_engine").LLM
    with pytest.raises(ValueError, match=r"^Unsupported guided decoding backend llguidance$"):
        trt_llm("fake-model", guided_decoding_backend="llguidance")
    trt_llm("fake-model", guided_decoding_backend="xgrammar").shutdown()


@pytest.mark.parametrize(("prebuilt", "fails"), [(False, False), (True, True)])
async def test_the_fake_without_a_backend_ignores_or_fails_a_guide(trtllm, prebuilt, fails):
    """PyTorch answers unconstrained; the C++ executor refuses the request."""
    module = importlib.import_module("tensorrt_llm._tensorrt_engine") if prebuilt else trtllm
    llm = module.LLM("fake-model")
    try:
        guide = trtllm.llmapi.GuidedDecodingParams(regex="[0-9]{3}")
        params = trtllm.SamplingParams(max_tokens=20, ignore_eos=True, guided_decoding=guide)
        result = llm.generate_async([1, 300, 301], params, streaming=True)
        if fails:
            with pytest.raises(trtllm.RequestError, match="GuidedDecoder is not setup"):
                await result.aresult()
        else:
            out = (await result.aresult()).outputs[0]
            assert len(out.token_ids) == 20 and not re.fullmatch("[0-9]{3}", out.text)
    finally:
        llm.shutdown()


# --- constrained output ---------------------------------------------------------------------


def _check(kind: str, answer: str, value: str = "", choices: tuple[str, ...] = ()) -> None:
    if kind == "json_schema":
        jsonschema.validate(json.loads(answer), json.loads(value))
    elif kind == "json_object":
        assert isinstance(json.loads(answer), dict)
    elif kind == "regex":
        assert re.fullmatch(value, answer), answer
    elif kind == "grammar":
        assert re.fullmatch(r"\([0-9]+\)|none", answer), answer
    elif kind == "choice":
        assert answer in choices
    else:  # the tool call
        head, tail = "<tool_call>\n", "\n</tool_call>"
        assert answer.startswith(head) and answer.endswith(tail), answer
        call = json.loads(answer[len(head) : -len(tail)])
        assert call["name"] == "get_weather" and isinstance(call["arguments"]["city"], str)


CASES = [
    ("json_schema", json.dumps(SCHEMA), ()),
    ("json_object", "", ()),
    ("regex", REGEX, ()),
    ("grammar", GBNF, ()),
    ("choice", "", CHOICES),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("kind", "value", "choices"), CASES, ids=[c[0] for c in CASES])
async def test_constrained_output_satisfies_its_constraint(
    trtllm, make_engine, backend, kind, value, choices
):
    engine = await make_engine(**BACKENDS[backend])
    c = constraint(kind, value, choices)
    for seed in range(4):
        outputs = await drain(
            await submit(
                engine,
                f"answer {seed}",
                max_tokens=400,
                sampling=SamplingOptions(seed=seed, n=2),
                constraint=c,
            )
        )
        for deltas in outputs.values():
            assert deltas[-1].finish_reason == "stop"
            _check(kind, text(deltas), value, choices)
    guide = trtllm._fake.results[-1].sampling_params.guided_decoding
    assert isinstance(guide, trtllm.llmapi.GuidedDecodingParams)


@pytest.mark.parametrize("backend", BACKENDS)
async def test_each_choice_comes_out_as_written(make_engine, backend):
    """Each literal survives its backend's escaping: quotes, backslashes, control
    characters, UTF-8."""
    engine = await make_engine(**BACKENDS[backend])
    for choice in (*CHOICES, "🚀 go", "ctl\x01F", "tab\there"):
        c = constraint("choice", "", (choice,))
        assert text(await run(engine, max_tokens=50, constraint=c)) == choice


@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_gbnf_hex_escape_reads_the_same_on_every_backend(make_engine, backend):
    engine = await make_engine(**BACKENDS[backend])
    c = constraint("grammar", r'root ::= "\x41B"')
    assert text(await run(engine, max_tokens=20, constraint=c)) == "AB"


async def test_a_forced_tool_call_comes_out_whole_with_llguidance(make_engine):
    engine = await make_engine()
    c = constraint("lark", TOOL_CALL)
    for seed in range(4):
        deltas = await run(
            engine, max_tokens=300, sampling=SamplingOptions(seed=seed), constraint=c
        )
        assert deltas[-1].finish_reason == "stop"
        _check("lark", text(deltas))


async def test_a_forced_tool_call_on_xgrammar_is_refused(make_engine):
    engine = await make_engine(guided_decoding_backend="xgrammar")
    with pytest.raises(InvalidInput) as error:
        await submit(engine, constraint=constraint("lark", TOOL_CALL))
    assert error.value.field_path == "tool_choice"


async def test_a_guided_decoding_error_fails_that_request_only(trtllm, make_engine, monkeypatch):
    monkeypatch.setattr(trtllm._fake, "step_s", 0.002)
    engine = await make_engine()
    other = await submit(engine, "a long one", max_tokens=60, ignore_eos=True)
    # What the server's validation would stop; TensorRT-LLM finds out in its executor loop.
    bad = Constraint("json_schema", '{"type": "object", "properties": {"a": {"type": "nope"}}}')
    handle = await submit(engine, max_tokens=50, constraint=bad)
    with pytest.raises(RequestFailed, match="Guided decoding error"):
        await drain(handle)
    assert handle.finished and engine.healthy
    others = await drain(other)
    assert others[0][-1].finish_reason == "length"
    good = await run(engine, max_tokens=100, constraint=constraint("regex", REGEX))
    _check("regex", text(good), REGEX)
    assert engine.in_flight() == 0 and engine.healthy


async def test_structured_output_through_the_server(trt_stub):
    output = pb.StructuredOutput(json_schema=json.dumps(SCHEMA))
    stopping = pb.StoppingOptions(max_tokens=400)
    msgs = await stream(trt_stub, gen(structured_output=output, stopping=stopping))
    assert msgs[-1].finish_reason == pb.FINISH_REASON_STOP
    jsonschema.validate(json.loads("".join(m.text for m in msgs)), SCHEMA)


async def test_a_forced_tool_call_through_the_server(trt_stub):
    """tool_choice names a tool: the server's Lark grammar reaches llguidance, and the
    call it forces comes back parsed, with arguments valid for the tool."""
    parameters = {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 20}},
        "required": ["city"],
    }
    tool = pb.Tool(name="get_weather", parameters_json=json.dumps(parameters))
    chat = pb.ChatMessages(messages=[pb.ChatMessage(role="user", content="Weather in Paris?")])
    req = pb.GenerateRequest(
        messages=chat,
        tools=[tool],
        tool_choice="get_weather",
        stopping=pb.StoppingOptions(max_tokens=300),
    )
    msgs = await stream(trt_stub, req)
    assert msgs[-1].finish_reason == pb.FINISH_REASON_TOOL_CALLS
    calls = [c for m in msgs for c in m.tool_calls]
    assert calls[0].name == "get_weather" and {c.index for c in calls} == {0}
    jsonschema.validate(json.loads("".join(c.arguments for c in calls)), parameters)


# --- tools through the chat template --------------------------------------------------------


async def test_tools_calls_and_results_reach_the_chat_template(engine):
    weather = ToolSpec(
        "get_weather",
        "The weather in a city",
        '{"type": "object", "properties": {"city": {"type": "string"}}}',
    )
    messages = (
        ChatMessage("user", "Weather in Paris?"),
        ChatMessage(
            "assistant", "", tool_calls=(ToolCall("call_1", "get_weather", '{"city": "Paris"}'),)
        ),
        ChatMessage("tool", '{"celsius": 21}', tool_call_id="call_1"),
    )
    ids = await engine.tokenize(PromptInput(messages=messages, tools=(weather,)))
    rendered = decode(ids)
    tool = {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    }
    assert rendered.startswith(f"<|bos|><|system|>\n# Tools\n<tools>\n{json.dumps(tool)}\n")
    # The arguments as an object (templates write them with tojson), the result by its call.
    call = {"name": "get_weather", "arguments": {"city": "Paris"}}
    assert f"<|assistant|>\n\n<tool_call>\n{json.dumps(call)}\n</tool_call><|end|>" in rendered
    assert '<|tool|>\n<tool_response id="call_1">\n{"celsius": 21}\n</tool_response>' in rendered
    assert rendered.endswith("<|assistant|>\n") and ids.count(ids[0]) == 1


async def test_a_model_without_a_chat_template_refuses_messages(trtllm, engine, monkeypatch):
    tokenizer = importlib.import_module("tensorrt_llm.llmapi.tokenizer")
    monkeypatch.setattr(tokenizer.FakeHFTokenizer, "chat_template", None)
    with pytest.raises(InvalidInput) as error:
        await engine.tokenize(PromptInput(messages=(ChatMessage("user", "hi"),)))
    assert error.value.field_path == "messages"
