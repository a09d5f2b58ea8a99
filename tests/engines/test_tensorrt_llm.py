"""The TensorRT-LLM adapter, on the fake ``tensorrt_llm`` in tests/fakes: through the engine
seam, and through a real server on a loopback port."""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import json
import os
import random
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import pytest

from tokenwire.server.app import Server
from tokenwire.server.engines._trtllm_params import finish_reason, iteration_load
from tokenwire.server.engines.base import (
    ChatMessage,
    EngineLoad,
    EngineUnavailable,
    GenerationRequest,
    InvalidInput,
    PromptInput,
    RequestFailed,
    SamplingOptions,
    SequenceDelta,
)
from tokenwire.server.engines.simtok import BOS_ID, EOS_ID, SimTokenizer
from tokenwire.server.engines.tensorrt_llm import TensorRTLLMEngine, TensorRTLLMHandle
from tokenwire.server.settings import Settings
from tokenwire.v1 import generation_pb2 as pb
from tokenwire.v1 import generation_pb2_grpc as pb_grpc

from ..conftest import ServerFactory, StubFactory
from ..helpers import BIN, async_wait_for

FAKES = Path(__file__).resolve().parents[1] / "fakes"
PROMPT = "tell me about the river"
FFFD = "\ufffd"


def _forget_fake() -> None:
    for name in [n for n in sys.modules if n == "tensorrt_llm" or n.startswith("tensorrt_llm.")]:
        del sys.modules[name]


@pytest.fixture
def trtllm(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """The fake ``tensorrt_llm``, importable for this test only; its ``_fake`` module steers it."""
    _forget_fake()
    monkeypatch.syspath_prepend(str(FAKES))
    yield importlib.import_module("tensorrt_llm")
    _forget_fake()


def settings(**values: Any) -> Settings:
    values = {
        "engine": "tensorrt-llm",
        "model": "fake-model",
        "port": 0,
        "metrics_port": 0,
        "http_port": 0,
        **values,
    }
    return Settings(**values)


EngineFactory = Callable[..., Awaitable[TensorRTLLMEngine]]


@pytest.fixture
async def make_engine(trtllm: Any) -> AsyncIterator[EngineFactory]:
    engines: list[TensorRTLLMEngine] = []

    async def make(**values: Any) -> TensorRTLLMEngine:
        engine = TensorRTLLMEngine.from_settings(settings(**values))
        await engine.start()
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        await engine.close()


@pytest.fixture
async def engine(make_engine: EngineFactory) -> TensorRTLLMEngine:
    return await make_engine()


async def submit(
    engine: TensorRTLLMEngine, prompt: str = PROMPT, **fields: Any
) -> TensorRTLLMHandle:
    ids = await engine.tokenize(PromptInput(text=prompt))
    fields.setdefault("max_tokens", 40)
    return engine.submit(GenerationRequest("r", tuple(ids), **fields))


async def drain(handle: TensorRTLLMHandle) -> dict[int, list[SequenceDelta]]:
    """Every delta of a request by sequence index; bounded in time."""
    out: dict[int, list[SequenceDelta]] = {}
    async with asyncio.timeout(10):
        async for step in handle:
            for delta in step:
                out.setdefault(delta.index, []).append(delta)
    return out


async def run(
    engine: TensorRTLLMEngine, prompt: str = PROMPT, **fields: Any
) -> list[SequenceDelta]:
    return (await drain(await submit(engine, prompt, **fields)))[0]


def text(deltas: Sequence[SequenceDelta]) -> str:
    return "".join(d.text for d in deltas)


def ids(deltas: Sequence[SequenceDelta]) -> list[int]:
    return [t for d in deltas for t in d.token_ids]


def decode(token_ids: Sequence[int], skip_special_tokens: bool = False) -> str:
    """The fake tokenizer's decode: what a sequence's streamed text must add up to."""
    return SimTokenizer().decode(token_ids, skip_special_tokens=skip_special_tokens)


@pytest.fixture(params=[False, True], ids=["text-flushed", "text-held"])
def holds_tail(
    request: pytest.FixtureRequest, trtllm: Any, monkeypatch: pytest.MonkeyPatch
) -> bool:
    """Both ways TensorRT-LLM may end an output's text: with the bytes of an incomplete
    last character rendered as U+FFFD, or without them (its default detokenizer)."""
    monkeypatch.setattr(trtllm._fake, "hold_incomplete_tail", request.param)
    return bool(request.param)


def assert_one_finish_at_the_end(deltas: Sequence[SequenceDelta]) -> None:
    assert [d.finish_reason is not None for d in deltas] == [False] * (len(deltas) - 1) + [True]


# --- construction -----------------------------------------------------------------------

# LLM's named parameters at their defaults: what passing nothing amounts to.
DEFAULTS = {
    "tokenizer": None,
    "tokenizer_mode": "auto",
    "skip_tokenizer_init": False,
    "trust_remote_code": False,
    "tensor_parallel_size": 1,
    "dtype": "auto",
    "revision": None,
    "tokenizer_revision": None,
}


@pytest.mark.parametrize(
    ("values", "llm_class", "expected"),
    [
        # Iteration stats (load()) are asked for on the PyTorch backend only; the
        # TensorRT LLM has them always and refuses the kwarg. Guided decoding: llguidance
        # on PyTorch, xgrammar (the only one it takes) on prebuilt engines.
        ({}, "LLM", {"enable_iter_perf_stats": True, "guided_decoding_backend": "llguidance"}),
        (
            {
                "tokenizer": "org/tokenizer",
                "trust_remote_code": True,
                "dtype": "bfloat16",
                "tensor_parallel_size": 2,
                "kv_cache_memory_fraction": 0.8,
                "max_batch_size": 8,
                "max_seq_len": 2048,
                "max_num_tokens": 4096,
            },
            "LLM",
            {
                "tokenizer": "org/tokenizer",
                "trust_remote_code": True,
                "dtype": "bfloat16",
                "tensor_parallel_size": 2,
                "kv_cache_config": 0.8,
                "max_batch_size": 8,
                "max_seq_len": 2048,
                "max_num_tokens": 4096,
                "enable_iter_perf_stats": True,
                "guided_decoding_backend": "llguidance",
            },
        ),
        (
            {"trtllm_backend": "tensorrt", "kv_cache_memory_fraction": 0.5, "max_seq_len": 1024},
            "_TrtLLM",
            {"kv_cache_config": 0.5, "max_seq_len": 1024, "guided_decoding_backend": "xgrammar"},
        ),
        (
            {"trtllm_backend": "tensorrt", "max_batch_size": 4},
            "_TrtLLM",
            {"max_batch_size": 4, "guided_decoding_backend": "xgrammar"},
        ),
    ],
)
async def test_the_llm_gets_only_the_settings_that_are_set(
    trtllm, make_engine, values, llm_class, expected
):
    await make_engine(**values)  # the fake LLM raises ValueError on any other kwarg
    llm = trtllm._fake.llms[-1]
    assert type(llm).__name__ == llm_class
    given = {k: v for k, v in llm.args.values.items() if k not in DEFAULTS or v != DEFAULTS[k]}
    if "kv_cache_config" in given:
        given["kv_cache_config"] = given["kv_cache_config"].free_gpu_memory_fraction
    assert given == expected
    assert llm.args.model == "fake-model"


def test_the_fake_refuses_what_tensorrt_llm_refuses(trtllm):
    trt_llm = importlib.import_module("tensorrt_llm._tensorrt_engine").LLM
    with pytest.raises(ValueError, match="invalid argument: stream_timeout"):
        trtllm.LLM("fake-model", stream_timeout=3)
    with pytest.raises(ValueError, match="specific to TensorRT backend"):
        trtllm.LLM("fake-model", build_config=object())
    with pytest.raises(ValueError, match="invalid argument: cuda_graph_config"):
        trt_llm("fake-model", cuda_graph_config={})
    with pytest.raises(ValueError, match="invalid argument: enable_iter_perf_stats"):
        trt_llm("fake-model", enable_iter_perf_stats=True)
    with pytest.raises(TypeError):
        trtllm.SamplingParams(random_seed=1)
    with pytest.raises(ValueError, match="Greedy decoding"):
        trtllm.SamplingParams(n=2)


async def test_description_is_named_before_start_and_sized_after(trtllm):
    engine = TensorRTLLMEngine.from_settings(settings())
    assert (engine.description.name, engine.description.engine) == ("fake-model", "tensorrt-llm")
    await engine.start()
    try:
        d = engine.description
        # llm.args.max_seq_len is None: the tokenizer's model_max_length says 4096.
        assert (d.max_context_length, d.vocab_size, d.eos_token_id) == (
            4096,
            SimTokenizer().vocab_size,
            EOS_ID,
        )
    finally:
        await engine.close()


async def test_max_seq_len_setting_sets_the_context(make_engine):
    engine = await make_engine(max_seq_len=1024)
    assert engine.description.max_context_length == 1024


def test_a_missing_package_is_a_clean_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt_llm", None)  # import fails, as when absent
    with pytest.raises(EngineUnavailable, match=r"pip install 'tokenwire\[tensorrt-llm\]'"):
        TensorRTLLMEngine.from_settings(settings())
    with pytest.raises(EngineUnavailable, match="not installed"):
        Server(settings())


@pytest.mark.skipif(
    importlib.util.find_spec("tensorrt_llm") is not None, reason="TensorRT-LLM is installed here"
)
def test_the_server_command_explains_a_missing_package():
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOKENWIRE_")}
    args = ["--engine", "tensorrt-llm", "--port", "0", "--metrics-port", "0"]
    proc = subprocess.run(
        [str(BIN / "tokenwire-server"), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert proc.returncode == 1
    assert "tokenwire[tensorrt-llm]" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


async def test_a_model_without_tokenizer_takes_token_ids_and_gets_end_id(trtllm, tmp_path):
    config = {"eos_token_id": [7, 8], "max_position_embeddings": 2048, "vocab_size": 500}
    (tmp_path / "config.json").write_text(json.dumps(config))
    engine = TensorRTLLMEngine.from_settings(settings(model=str(tmp_path)))
    await engine.start()
    try:
        d = engine.description
        assert (d.max_context_length, d.vocab_size, d.eos_token_id) == (2048, 500, 7)
        with pytest.raises(InvalidInput) as error:
            await engine.tokenize(PromptInput(text="hi"))
        assert error.value.field_path == "prompt"
        with pytest.raises(InvalidInput, match=r"stopping\.stop"):
            engine.submit(GenerationRequest("r", (1, 300), max_tokens=5, stop=("x",)))
        handle = engine.submit(GenerationRequest("r", (1, 300), max_tokens=5, ignore_eos=True))
        deltas = (await drain(handle))[0]
        assert trtllm._fake.results[-1].sampling_params.end_id == 7
        assert len(ids(deltas)) == 5 and text(deltas) == ""  # nothing to detokenize with
    finally:
        await engine.close()


# --- tokenization -----------------------------------------------------------------------


async def test_tokenize_text_and_chat(engine):
    plain = await engine.tokenize(PromptInput(text="hello world"))
    assert plain[0] == BOS_ID
    assert await engine.tokenize(PromptInput(text="hello world"), False) == plain[1:]
    chat = await engine.tokenize(PromptInput(messages=(ChatMessage("user", "hi café"),)))
    # The template writes BOS itself: encoding must not add a second one.
    assert chat[0] == BOS_ID and chat[1] != BOS_ID
    assert decode(chat[1:]).endswith("<|assistant|>\n")
    assert engine.token_strings(plain[:2]) == ["<|bos|>", "hello"]
    long_text = "the river " * 2000  # tokenized off the event loop
    assert await engine.tokenize(PromptInput(text=long_text)) == SimTokenizer().encode(long_text)


# --- streaming --------------------------------------------------------------------------


async def test_deltas_add_up_to_the_output_and_never_split_a_character(trtllm, engine):
    multibyte = held = 0
    for seed in range(30):
        prompt = (PROMPT, "日本語 and café 🚀", "x")[seed % 3]
        deltas = await run(engine, prompt, sampling=SamplingOptions(seed=seed), max_tokens=60)
        out = trtllm._fake.results[-1].outputs[0]
        assert not any(FFFD in d.text for d in deltas[:-1])
        assert ids(deltas) == out.token_ids
        assert text(deltas) == out.text == decode(out.token_ids)
        assert_one_finish_at_the_end(deltas)
        assert deltas[-1].finish_reason in ("stop", "length")
        multibyte += any(ord(c) > 0x7FF for c in text(deltas))
        held += sum(1 for d in deltas if d.token_ids and not d.text)  # a character's first bytes
    # CJK and emoji spelt in byte tokens were really exercised, and the fake's text
    # really ended in U+FFFD mid-character.
    assert multibyte > 10 and held > 10
    assert engine.in_flight() == 0


async def test_an_output_cut_mid_character_ends_on_its_rendered_bytes(holds_tail, engine):
    full = ids(await run(engine, sampling=SamplingOptions(seed=4), max_tokens=80, ignore_eos=True))
    cut = next(k for k in range(1, 80) if decode(full[:k]).endswith(FFFD))
    deltas = await run(engine, sampling=SamplingOptions(seed=4), max_tokens=cut, ignore_eos=True)
    assert ids(deltas) == full[:cut]
    assert text(deltas) == decode(full[:cut]) and deltas[-1].text.endswith(FFFD)
    assert deltas[-1].finish_reason == "length"


async def test_each_sequence_reads_as_the_decode_of_its_ids(holds_tail, engine):
    """Many seeds, n = 2, random lengths, both skip_special_tokens values: every
    sequence's streamed text is the tokenizer's decode of its ids, whichever way
    TensorRT-LLM leaves its text at the end."""
    flushed = 0
    for seed in range(40):
        rng = random.Random(seed)
        skip = seed % 2 == 0
        handle = await submit(
            engine,
            rng.choice((PROMPT, "日本語 and café 🚀")),
            sampling=SamplingOptions(seed=seed, n=2),
            max_tokens=rng.randint(3, 60),
            ignore_eos=rng.random() < 0.5,
            skip_special_tokens=skip,
        )
        for deltas in (await drain(handle)).values():
            assert text(deltas) == decode(ids(deltas), skip_special_tokens=skip)
            assert not any(d.text.endswith(FFFD) for d in deltas[:-1])
            flushed += deltas[-1].text.endswith(FFFD)
    assert flushed  # characters were cut off, and their bytes went out at the end


async def test_two_sequences_stream_separately_without_repeats(trtllm, engine):
    sampling = SamplingOptions(n=2, top_p=0.9, seed=7)
    handle = await submit(engine, sampling=sampling, max_tokens=30, ignore_eos=True)
    by_index = await drain(handle)
    outputs = trtllm._fake.results[-1].outputs
    for i in (0, 1):
        assert ids(by_index[i]) == outputs[i].token_ids and len(outputs[i].token_ids) == 30
        assert text(by_index[i]) == decode(outputs[i].token_ids)
        assert_one_finish_at_the_end(by_index[i])
        assert by_index[i][-1].finish_reason == "length"
    assert ids(by_index[0]) != ids(by_index[1])
    assert handle.finished and engine.in_flight() == 0


async def test_several_greedy_answers_are_an_invalid_n(engine):
    with pytest.raises(InvalidInput) as error:
        await submit(engine, sampling=SamplingOptions(n=2, temperature=0.0))
    assert error.value.field_path == "sampling.n"


@pytest.mark.parametrize(
    ("sampling", "expected"),
    [
        (SamplingOptions(), (None, None, None)),  # a plain request: TensorRT-LLM's greedy
        (SamplingOptions(n=2), (1.0, 1.0, None)),  # variety asked for: temperature 1
        (SamplingOptions(seed=3), (1.0, 1.0, None)),
        (SamplingOptions(n=2, top_k=5), (None, None, 5)),  # sampling named: as given
        (SamplingOptions(seed=3, temperature=0.5), (0.5, None, None)),
    ],
)
async def test_asking_for_variety_samples_by_default(trtllm, engine, sampling, expected):
    handle = await submit(engine, sampling=sampling)
    params = trtllm._fake.results[-1].sampling_params
    handle.abort()
    assert (params.temperature, params.top_p, params.top_k) == expected


@pytest.mark.parametrize("include", [False, True])
async def test_a_stop_string_ends_the_text_before_it(engine, include):
    sampling = SamplingOptions(seed=3)
    full = text(await run(engine, sampling=sampling, max_tokens=60, ignore_eos=True))
    stop = full[30:36]
    deltas = await run(
        engine, sampling=sampling, max_tokens=60, ignore_eos=True, stop=(stop,),
        include_stop_in_output=include,
    )  # fmt: skip
    at = full.find(stop)
    assert text(deltas) == full[: at + len(stop) if include else at]
    assert (deltas[-1].finish_reason, deltas[-1].stop_match) == ("stop_sequence", stop)
    assert not any(FFFD in d.text for d in deltas)


async def test_text_that_may_start_a_stop_string_waits(engine):
    sampling = SamplingOptions(seed=3)
    full = text(await run(engine, sampling=sampling, max_tokens=60, ignore_eos=True))
    never = full[30:36] + "\x00"  # begins like the text, but never matches
    deltas = await run(engine, sampling=sampling, max_tokens=60, ignore_eos=True, stop=(never,))
    assert text(deltas) == full
    assert deltas[-1].finish_reason == "length"
    sent, received = "", list[int]()
    for d in deltas:
        sent += d.text
        received += d.token_ids
        if 30 < len(decode(received).rstrip(FFFD)) <= 36:  # the text could still become `never`
            assert len(sent) <= 30


@pytest.mark.parametrize("include", [False, True])
async def test_a_stop_token_id_ends_the_tokens(engine, include):
    sampling = SamplingOptions(seed=5)
    full = ids(await run(engine, sampling=sampling, max_tokens=40, ignore_eos=True))
    stop_id = full[9]
    deltas = await run(
        engine, sampling=sampling, max_tokens=40, ignore_eos=True, stop_token_ids=(stop_id,),
        include_stop_in_output=include,
    )  # fmt: skip
    at = full.index(stop_id)
    # The stop token is always among the ids (it was generated); its text only on request.
    assert ids(deltas) == full[: at + 1]
    assert text(deltas) == decode(full[: at + 1 if include else at])
    assert (deltas[-1].finish_reason, deltas[-1].stop_match) == ("stop_sequence", stop_id)


async def test_a_stop_string_in_one_of_two_outputs_ends_the_request(engine):
    # TensorRT-LLM marks the whole result done when one output matches a stop string.
    sampling = SamplingOptions(n=2, top_p=0.9, seed=8)
    full = await drain(await submit(engine, sampling=sampling, max_tokens=60, ignore_eos=True))
    stop = text(full[0])[30:36]
    assert stop not in text(full[1])
    handle = await submit(engine, sampling=sampling, max_tokens=60, ignore_eos=True, stop=(stop,))
    by_index = await drain(handle)
    assert text(by_index[0]) == text(full[0])[: text(full[0]).find(stop)]
    assert (by_index[0][-1].finish_reason, by_index[0][-1].stop_match) == ("stop_sequence", stop)
    assert by_index[1][-1].finish_reason == "cancelled"  # cut short, and not at max_tokens
    assert text(full[1]).startswith(text(by_index[1]))
    assert engine.in_flight() == 0


@pytest.mark.parametrize(
    ("reason", "stop_reason", "cut", "at_length", "expected"),
    [
        ("stop", None, False, False, ("stop", None)),  # end-of-sequence
        ("stop", "END", False, False, ("stop_sequence", "END")),
        ("stop", 42, False, False, ("stop_sequence", 42)),
        ("length", None, False, True, ("length", None)),
        ("timeout", None, False, False, ("length", None)),  # cut short by a runtime limit
        ("cancelled", None, False, False, ("cancelled", None)),
        (None, None, True, True, ("cancelled", None)),  # aborted here, no final answer read
        (None, None, False, True, ("length", None)),  # the request ended around it
        (None, None, False, False, ("cancelled", None)),
    ],
)
def test_finish_reasons_map_to_tokenwire(reason, stop_reason, cut, at_length, expected):
    assert finish_reason(reason, stop_reason, cut=cut, at_length=at_length) == expected


async def test_sampling_params_use_tensorrt_llm_names(trtllm, engine):
    request: dict[str, Any] = dict(
        sampling=SamplingOptions(
            temperature=0.7,
            top_p=0.9,
            top_k=40,
            min_p=0.05,
            repetition_penalty=1.1,
            presence_penalty=0.5,
            frequency_penalty=-0.5,
            seed=12,
            n=2,
        ),
        max_tokens=33,
        min_tokens=3,
        stop=("END",),
        stop_token_ids=(300,),
        ignore_eos=True,
        include_stop_in_output=True,
        logprobs=True,
        top_logprobs=3,
        skip_special_tokens=False,
    )
    handle = await submit(engine, **request)
    params = trtllm._fake.results[-1].sampling_params
    handle.abort()
    assert (params.temperature, params.top_p, params.top_k, params.min_p) == (0.7, 0.9, 40, 0.05)
    assert (params.repetition_penalty, params.presence_penalty) == (1.1, 0.5)
    assert (params.frequency_penalty, params.seed, params.n, params.best_of) == (-0.5, 12, 2, 2)
    assert (params.max_tokens, params.min_tokens, params.stop) == (33, 3, ["END"])
    assert (params.stop_token_ids, params.include_stop_str_in_output) == ([300], True)
    assert (params.ignore_eos, params.logprobs, params.skip_special_tokens) == (True, 3, False)
    assert params.detokenize and params.end_id == EOS_ID  # filled in from the tokenizer


async def test_temperature_zero_is_greedy(trtllm, engine):
    handle = await submit(engine, sampling=SamplingOptions(temperature=0.0, top_p=0.5))
    params = trtllm._fake.results[-1].sampling_params
    handle.abort()
    assert (params.top_k, params.temperature, params.top_p) == (1, None, None)


async def test_logprobs_name_the_sampled_token_and_the_top_alternatives(engine):
    deltas = await run(engine, max_tokens=30, ignore_eos=True, logprobs=True, top_logprobs=3)
    total, not_best = 0.0, 0
    for d in deltas:
        assert [lp.token_id for lp in d.logprobs] == list(d.token_ids)
        for lp in d.logprobs:
            assert lp.token and len(lp.top) == 3
            values = [t.logprob for t in lp.top]
            assert values == sorted(values, reverse=True)
            not_best += lp.top[0].token_id != lp.token_id
            total += lp.logprob
    assert not_best  # sampled tokens outside the top-k still carry their own logprob
    assert deltas[-1].cumulative_logprob == pytest.approx(total)


async def test_logprobs_as_plain_floats(trtllm, engine, monkeypatch):
    monkeypatch.setattr(trtllm._fake, "logprobs_as_floats", True)
    deltas = await run(engine, max_tokens=10, ignore_eos=True, logprobs=True)
    assert len([lp for d in deltas for lp in d.logprobs]) == 10
    assert all(lp.top == () and lp.logprob <= 0 for d in deltas for lp in d.logprobs)


async def test_a_repeated_prompt_reports_cached_tokens(engine):
    first = await submit(engine, max_tokens=3)
    await drain(first)
    second = await submit(engine, max_tokens=3)
    await drain(second)
    assert first.cached_prompt_tokens == 0 < second.cached_prompt_tokens


# --- responses queued ahead of a read -------------------------------------------------------


def queued(result: Any) -> int:
    """Responses waiting on a fake result's queue (its deque: TensorRT-LLM's only tells empty())."""
    return len(result.aqueue._q)


async def suspensions(coro: Any) -> tuple[int, Any]:
    """Run ``coro`` to its end on this loop, counting the times it gave the loop a turn."""
    steps = coro.__await__()
    turns = 0
    while True:
        try:
            waited = steps.send(None)
        except StopIteration as done:
            return turns, done.value
        turns += 1
        if waited is None:
            await asyncio.sleep(0)
        else:  # a future it blocks on: wait for it here instead, as its task would
            waited._asyncio_future_blocking = False
            await waited


async def read_one_by_one(engine: TensorRTLLMEngine, **fields: Any) -> list[list[SequenceDelta]]:
    """The adapter as it was: no queue to drain, so one response per step."""
    kind, engine.response_queue = engine.response_queue, None
    try:
        handle = await submit(engine, **fields)
    finally:
        engine.response_queue = kind
    async with asyncio.timeout(10):
        return [step async for step in handle]


async def read_once_all_queued(
    trtllm: Any, engine: TensorRTLLMEngine, **fields: Any
) -> list[list[SequenceDelta]]:
    """One step, then nothing read until the engine has queued the request's last response."""
    handle = await submit(engine, **fields)
    result = trtllm._fake.results[-1]
    steps = [await anext(aiter(handle))]
    await async_wait_for(lambda: queued(result) > 0 and result.aqueue._q[-1].is_final)
    async with asyncio.timeout(10):
        return steps + [step async for step in handle]


def by_index(steps: Sequence[Sequence[SequenceDelta]]) -> dict[int, list[SequenceDelta]]:
    out: dict[int, list[SequenceDelta]] = {}
    for step in steps:
        for delta in step:
            out.setdefault(delta.index, []).append(delta)
    return out


@pytest.mark.parametrize(
    "case", ["end-of-sequence", "length", "stop-string", "stop-token-id", "two-sequences"]
)
async def test_responses_queued_before_a_read_go_out_in_one_step(trtllm, holds_tail, engine, case):
    fields: dict[str, Any] = {"sampling": SamplingOptions(seed=3), "max_tokens": 60}
    if case != "end-of-sequence":
        fields["ignore_eos"] = True
    if case == "two-sequences":
        fields.update(sampling=SamplingOptions(n=2, top_p=0.9, seed=7), max_tokens=30)
    full = by_index(await read_one_by_one(engine, **fields))[0]
    if case == "stop-string":
        fields["stop"] = (text(full)[30:36],)
    elif case == "stop-token-id":
        fields["stop_token_ids"] = (ids(full)[9],)
    alone = await read_one_by_one(engine, **fields)
    together = await read_once_all_queued(trtllm, engine, **fields)
    # All that was queued went out in one step: the first step read, then one more.
    assert len(together) == 2 < len(alone)
    expected, got = by_index(alone), by_index(together)
    assert got.keys() == expected.keys()
    for index, deltas in got.items():
        assert ids(deltas) == ids(expected[index]) and text(deltas) == text(expected[index])
        assert [(d.finish_reason, d.stop_match) for d in deltas[-1:]] == [
            (d.finish_reason, d.stop_match) for d in expected[index][-1:]
        ]
        assert_one_finish_at_the_end(deltas)
        if not case.startswith("stop-"):  # a stop's text is cut, its ids are not
            assert text(deltas) == decode(ids(deltas), skip_special_tokens=True)
    if case.startswith("stop-"):
        assert got[0][-1].finish_reason == "stop_sequence"
    assert engine.in_flight() == 0


async def test_a_read_with_nothing_queued_waits_once_and_with_some_queued_never(
    trtllm, engine, monkeypatch
):
    monkeypatch.setattr(trtllm._fake, "step_s", 0.02)
    handle = await submit(engine, max_tokens=10_000, ignore_eos=True)
    result = trtllm._fake.results[-1]
    await anext(aiter(handle))
    await async_wait_for(lambda: result.aqueue.empty())
    turns, step = await suspensions(handle.__anext__())
    assert turns == 1 and ids(step)  # it waited for the next response, as it always did
    await async_wait_for(lambda: queued(result) >= 3)
    ahead = queued(result)
    turns, step = await suspensions(handle.__anext__())
    assert turns == 0 and len(ids(step)) == ahead and result.aqueue.empty()
    handle.abort()


async def test_one_step_takes_a_bounded_number_of_queued_responses(trtllm, engine, monkeypatch):
    monkeypatch.setattr("tokenwire.server.engines._trtllm_handle._MAX_QUEUED_PER_STEP", 2)
    handle = await submit(engine, max_tokens=10_000, ignore_eos=True)
    result = trtllm._fake.results[-1]
    await anext(aiter(handle))
    await async_wait_for(lambda: queued(result) >= 6)
    ahead = queued(result)
    turns, step = await suspensions(handle.__anext__())
    assert turns == 0 and len(ids(step)) == 3  # the one it takes, and two more
    assert queued(result) == ahead - 3
    handle.abort()


async def test_an_abort_with_responses_queued_ends_at_once(trtllm, engine):
    handle = await submit(engine, max_tokens=10_000, ignore_eos=True)
    result = trtllm._fake.results[-1]
    await anext(aiter(handle))
    await async_wait_for(lambda: queued(result) >= 3)
    ahead = queued(result)
    handle.abort()
    assert result.abort_calls == 1 and handle.finished and engine.in_flight() == 0
    turns, step = await suspensions(handle.__anext__())
    assert turns == 0 and [(d.finish_reason, d.token_ids) for d in step] == [("cancelled", ())]
    assert queued(result) >= ahead  # nothing queued was read after the abort
    with pytest.raises(StopAsyncIteration):
        await anext(aiter(handle))


# --- abort --------------------------------------------------------------------------------


async def test_abort_mid_stream_aborts_the_result_once(trtllm, engine):
    handle = await submit(engine, sampling=SamplingOptions(n=2, top_k=5), max_tokens=10_000)
    result = trtllm._fake.results[-1]
    steps = aiter(handle)
    for _ in range(3):
        await anext(steps)
    handle.abort()
    handle.abort()
    assert result.abort_calls == 1
    assert handle.finished and engine.in_flight() == 0
    last = await drain(handle)  # an aborted handle does not wait for the engine
    assert {i: [d.finish_reason for d in ds] for i, ds in last.items()} == {
        0: ["cancelled"],
        1: ["cancelled"],
    }


async def test_an_abort_flushes_what_the_sequence_held(trtllm, holds_tail, engine):
    for seed in range(64):
        handle = await submit(
            engine, "日本語 and café 🚀", sampling=SamplingOptions(seed=seed), max_tokens=400,
            ignore_eos=True,
        )  # fmt: skip
        got: list[SequenceDelta] = []
        steps = aiter(handle)
        async with asyncio.timeout(10):
            while not handle.finished:
                got += await anext(steps)
                pending = decode(ids(got))[len(text(got)) :]
                if pending:
                    break
        if handle.finished:
            continue
        handle.abort()
        last = (await drain(handle))[0]
        assert [(d.finish_reason, d.text) for d in last] == [("cancelled", pending)]
        assert pending.endswith(FFFD) and text(got + last) == decode(ids(got + last))
        return
    pytest.fail("no seed held bytes back mid-stream")


async def test_abort_after_the_end_leaves_the_result_alone(trtllm, engine):
    handle = await submit(engine, max_tokens=5)
    await drain(handle)
    handle.abort()
    assert trtllm._fake.results[-1].abort_calls == 0


async def test_an_abort_racing_the_end_leaves_the_result_alone(trtllm, engine):
    handle = await submit(engine, max_tokens=5, ignore_eos=True)
    result = trtllm._fake.results[-1]
    async with asyncio.timeout(5):
        await result.aresult()  # the engine finished: the servicer has not seen it yet
    handle.abort()
    assert result.abort_calls == 0 and handle.finished and engine.in_flight() == 0
    deltas = (await drain(handle))[0]  # what was there is still delivered, as it ended
    assert len(ids(deltas)) == 5 and deltas[-1].finish_reason == "length"


async def test_abort_of_a_queued_request_never_waits_for_an_answer(trtllm, make_engine):
    engine = await make_engine(max_batch_size=1)
    running = await submit(engine, max_tokens=10_000, ignore_eos=True)
    await anext(aiter(running))
    queued = await submit(engine, max_tokens=10_000, ignore_eos=True)
    queued_result = trtllm._fake.results[-1]
    waiting = asyncio.create_task(anext(aiter(queued)))
    await async_wait_for(lambda: queued_result.waiting)  # blocked on the engine's queue
    queued.abort()
    async with asyncio.timeout(2):
        step = await waiting
    assert [d.finish_reason for d in step] == ["cancelled"]
    assert queued_result.abort_calls == 1 and engine.in_flight() == 1
    for _ in range(5):  # the engine goes on, and never answers the dropped request
        await anext(aiter(running))
    assert queued_result.aqueue.empty() and not queued_result.finished
    running.abort()
    assert engine.in_flight() == 0


async def test_close_aborts_what_is_live(trtllm, engine):
    handle = await submit(engine, max_tokens=10_000, ignore_eos=True)
    await anext(aiter(handle))
    await engine.close()
    assert trtllm._fake.results[-1].abort_calls == 1
    assert trtllm._fake.llms[-1]._executor is None  # shut down
    assert handle.finished and engine.in_flight() == 0 and not engine.healthy
    with pytest.raises(EngineUnavailable):
        await submit(engine)


# --- errors -------------------------------------------------------------------------------


async def test_a_request_error_fails_that_request_only(trtllm, engine):
    handle = await submit(engine, prompt=f"please {trtllm._fake.REQUEST_ERROR_MARK}")
    with pytest.raises(RequestFailed):
        await drain(handle)
    assert handle.finished and engine.in_flight() == 0 and engine.healthy
    assert (await run(engine, max_tokens=5, ignore_eos=True))[-1].finish_reason == "length"


@pytest.mark.parametrize("fatal", [False, True], ids=["request-error", "fatal-error"])
async def test_a_failing_request_first_sends_what_it_held(
    trtllm, holds_tail, engine, monkeypatch, fatal
):
    mark = trtllm._fake.FATAL_ERROR_MARK if fatal else trtllm._fake.REQUEST_ERROR_MARK
    prompt = f"日本語 {mark}"
    monkeypatch.setattr(trtllm._fake, "FAULT_AFTER_TOKENS", 10_000)  # learn the tokens first
    full = ids(await run(engine, prompt, sampling=SamplingOptions(seed=1), ignore_eos=True))
    cut = next(k for k in range(1, 40) if decode(full[:k]).endswith(FFFD))
    monkeypatch.setattr(trtllm._fake, "FAULT_AFTER_TOKENS", cut)
    handle = await submit(engine, prompt, sampling=SamplingOptions(seed=1), ignore_eos=True)
    got: list[SequenceDelta] = []
    with pytest.raises(EngineUnavailable if fatal else RequestFailed):
        async with asyncio.timeout(10):
            async for step in handle:
                got += step
    assert ids(got) == full[:cut] and all(d.finish_reason is None for d in got)
    assert text(got) == decode(full[:cut]) and text(got).endswith(FFFD)
    assert handle.finished and engine.in_flight() == 0


async def test_a_fatal_error_makes_the_engine_unavailable(trtllm, engine):
    handle = await submit(engine, prompt=f"please {trtllm._fake.FATAL_ERROR_MARK}")
    with pytest.raises(EngineUnavailable):
        await drain(handle)
    assert engine.in_flight() == 0 and not engine.healthy
    with pytest.raises(EngineUnavailable):
        await submit(engine)


async def test_a_shut_down_llm_makes_the_engine_unavailable(trtllm, engine):
    trtllm._fake.llms[-1].shutdown()
    with pytest.raises(EngineUnavailable, match="shutting down"):
        await submit(engine)
    assert not engine.healthy


async def test_a_prompt_beyond_max_num_tokens_is_invalid(make_engine):
    engine = await make_engine(max_num_tokens=8)
    with pytest.raises(InvalidInput) as error:
        await submit(engine, prompt="the river " * 10)
    assert error.value.field_path == "prompt"


async def test_logprobs_on_engines_built_without_logits_are_invalid(make_engine):
    engine = await make_engine(trtllm_backend="tensorrt")
    with pytest.raises(InvalidInput) as error:
        await submit(engine, logprobs=True)
    assert error.value.field_path == "output.logprobs"


# --- LoRA adapters -----------------------------------------------------------------------


def write_adapter(path: Path, r: int = 4, targets: Any = ("q_proj", "v_proj"), **more: Any) -> Path:
    """A Hugging Face (PEFT) LoRA adapter directory, as far as TensorRT-LLM reads it."""
    path.mkdir(parents=True, exist_ok=True)
    targets = list(targets) if isinstance(targets, tuple) else targets
    config = {"peft_type": "LORA", "r": r, "lora_alpha": 16, "target_modules": targets, **more}
    (path / "adapter_config.json").write_text(json.dumps(config))
    (path / "adapter_model.safetensors").write_bytes(b"")
    return path


@pytest.fixture
def adapters(tmp_path: Path) -> dict[str, Path]:
    return {
        "sql": write_adapter(tmp_path / "sql", r=8, targets=("q_proj", "v_proj")),
        "chat": write_adapter(
            tmp_path / "chat", r=16, targets=("model.layers.0.self_attn.k_proj", "down_proj")
        ),
    }


def lora_flag(adapters: dict[str, Path]) -> str:
    return ",".join(f"{name}={path}" for name, path in adapters.items())


async def test_adapters_get_lora_settings_and_stable_ids(trtllm, make_engine, adapters):
    engine = await make_engine(lora=lora_flag(adapters))
    assert engine.description.adapters == ("sql", "chat")
    llm = trtllm._fake.llms[-1]
    assert "enable_lora" not in llm.args.values  # the PyTorch backend ignores it
    config = llm.args.lora_config
    assert isinstance(config, importlib.import_module("tensorrt_llm.lora_helper").LoraConfig)
    # Several adapters: no lora_dir (the PyTorch executor reads one only), their modules.
    assert config.lora_dir == []
    assert config.lora_target_modules == ["attn_k", "attn_q", "attn_v", "mlp_4h_to_h"]
    assert (config.max_lora_rank, config.max_loras, config.max_cpu_loras) == (16, 2, 2)

    base = await run(engine, max_tokens=24, ignore_eos=True)
    assert trtllm._fake.lora_requests == []  # the base model: no lora_request at all
    sql = await run(engine, max_tokens=24, ignore_eos=True, adapter="sql")
    chat = await run(engine, max_tokens=24, ignore_eos=True, adapter="chat")
    again = await run(engine, max_tokens=24, ignore_eos=True, adapter="sql")
    assert len({text(base), text(sql), text(chat)}) == 3
    assert text(again) == text(sql)
    first, second, third = trtllm._fake.lora_requests
    assert (first.lora_name, first.lora_int_id, first.lora_path) == (
        "sql",
        1,
        str(adapters["sql"].resolve()),
    )
    assert (second.lora_name, second.lora_int_id) == ("chat", 2)
    assert third is first  # one LoRARequest per adapter, made at start


async def test_one_adapter_goes_in_lora_dir(trtllm, make_engine, adapters):
    await make_engine(lora=f"sql={adapters['sql']}")
    config = trtllm._fake.llms[-1].args.lora_config
    assert config.lora_dir == [str(adapters["sql"].resolve())]
    assert config.lora_target_modules == ["attn_q", "attn_v"]  # read there by TensorRT-LLM
    assert (config.max_lora_rank, config.max_loras, config.max_cpu_loras) == (8, 1, 1)


async def test_adapters_of_a_pattern_leave_the_modules_to_tensorrt_llm(
    trtllm, make_engine, adapters, tmp_path
):
    wide = write_adapter(tmp_path / "wide", r=4, targets="all-linear")
    await make_engine(lora=f"sql={adapters['sql']},wide={wide}")
    config = trtllm._fake.llms[-1].args.lora_config
    # None given: TensorRT-LLM reserves room for every module it knows.
    defaults = importlib.import_module("tensorrt_llm.lora_helper")
    assert config.lora_target_modules == list(defaults.get_default_trtllm_modules_to_hf_modules())


async def test_the_tensorrt_backend_gets_enable_lora(trtllm, make_engine, adapters):
    engine = await make_engine(trtllm_backend="tensorrt", lora=lora_flag(adapters))
    llm = trtllm._fake.llms[-1]
    assert llm.args.enable_lora and llm.args.lora_config.max_lora_rank == 16
    base = await run(engine, max_tokens=16, ignore_eos=True)
    assert text(await run(engine, max_tokens=16, ignore_eos=True, adapter="chat")) != text(base)


async def test_a_bad_adapter_fails_the_start_naming_it(trtllm, adapters, tmp_path):
    not_lora = write_adapter(tmp_path / "ia3", peft_type="IA3")
    (tmp_path / "empty").mkdir()
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "adapter_config.json").write_text("{not json")
    cases = {
        "gone": (tmp_path / "absent", "no adapter_config.json"),
        "empty": (tmp_path / "empty", "no adapter_config.json"),
        "broken": (tmp_path / "broken", "cannot read"),
        "ia3": (not_lora, "IA3 adapter"),
    }
    for name, (path, why) in cases.items():
        engine = TensorRTLLMEngine.from_settings(
            settings(lora=f"sql={adapters['sql']},{name}={path}")
        )
        with pytest.raises(EngineUnavailable, match=f"LoRA adapter '{name}'.*{why}"):
            await engine.start()
        await engine.close()
    assert not trtllm._fake.llms  # refused before TensorRT-LLM loads anything


async def test_the_fake_serves_lora_only_with_the_llms_lora_settings(trtllm, adapters):
    """As TensorRT-LLM's worker: without a LoRA manager a lora_request is ignored (the base
    model answers); an adapter is cached by its int id; one that cannot load fails."""
    request_class = importlib.import_module("tensorrt_llm.executor.request").LoRARequest
    lora_helper = importlib.import_module("tensorrt_llm.lora_helper")
    with pytest.raises(ValueError, match="does not exist"):
        request_class("x", 1, str(adapters["sql"] / "absent"))
    with pytest.raises(ValueError, match="does not exist"):
        request_class("x", 1)  # the default path, "", does not exist either
    with pytest.raises(ValueError, match="lora_ckpt_source"):
        request_class("x", 1, str(adapters["sql"]), "safetensors")
    sql = request_class("sql", 1, str(adapters["sql"]))
    params = trtllm.SamplingParams(max_tokens=12, end_id=-1, top_k=1)

    async def answer(llm: Any, lora_request: Any) -> list[int]:
        result = llm.generate_async([1, 5, 9], params, lora_request=lora_request)
        await result.aresult()
        return list(result.outputs[0].token_ids)

    plain = trtllm.LLM("fake-model")
    only_q = lora_helper.LoraConfig(lora_target_modules=["attn_q"])
    tuned = trtllm.LLM("fake-model", lora_config=only_q)
    try:
        base = await answer(plain, None)
        assert await answer(plain, sql) == base  # no LoRA settings: silently the base model
        with_sql = await answer(tuned, sql)
        assert with_sql != base
        other_path = request_class("sql", 1, str(adapters["chat"]))
        assert await answer(tuned, other_path) == with_sql  # cached under id 1
        empty = adapters["sql"].parent / "no-config"
        empty.mkdir()
        with pytest.raises(trtllm.RequestError, match="Failed to load LoRA adapter"):
            await answer(tuned, request_class("bad", 3, str(empty)))
    finally:
        plain.shutdown()
        tuned.shutdown()
    with pytest.raises(ValueError, match="must be a LoraConfig"):
        trtllm.LLM("fake-model", lora_config={"max_lora_rank": 8})
    with pytest.raises(AssertionError, match="at least one lora target module"):
        trtllm.LLM(
            "fake-model", lora_config=lora_helper.LoraConfig(lora_dir=[str(adapters["sql"])] * 2)
        )


# --- through a real server ---------------------------------------------------------------

if TYPE_CHECKING:
    Stub = pb_grpc.GenerationServiceAsyncStub  # only in the typed stubs
LONG = pb.StoppingOptions(max_tokens=4000, ignore_eos=True)


@pytest.fixture
def slow(trtllm: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A fake engine iteration every 5 ms, so that long requests stay mid-way a while."""
    monkeypatch.setattr(trtllm._fake, "step_s", 0.005)


@pytest.fixture
async def trt_server(trtllm: Any, make_server: ServerFactory) -> Server:
    return await make_server(engine="tensorrt-llm", model="fake-model")


@pytest.fixture
async def trt_stub(trt_server: Server, stub_for: StubFactory) -> Stub:
    return await stub_for(trt_server)


def gen(**fields: Any) -> pb.GenerateRequest:
    fields.setdefault("prompt", PROMPT)
    fields.setdefault("stopping", pb.StoppingOptions(max_tokens=40, ignore_eos=True))
    return pb.GenerateRequest(**fields)


async def stream(stub: Stub, req: pb.GenerateRequest) -> list[pb.GenerateResponse]:
    async with asyncio.timeout(10):
        return [m async for m in stub.Generate(req)]


async def test_server_streams_what_complete_returns(trt_server, trt_stub):
    info = await trt_stub.GetModelInfo(pb.GetModelInfoRequest())
    assert (info.model, info.engine, info.max_context_length) == (
        "fake-model",
        "tensorrt-llm",
        4096,
    )
    for seed in range(8):
        req = gen(sampling=pb.SamplingParams(seed=seed, n=2, top_p=0.95))
        msgs = await stream(trt_stub, req)
        whole = await trt_stub.Complete(req, timeout=10)
        for choice in whole.choices:
            mine = [m for m in msgs if m.index == choice.index]
            assert "".join(m.text for m in mine) == choice.text
            assert [t for m in mine for t in m.token_ids] == list(choice.token_ids)
            assert [m.finish_reason for m in mine][-1] == pb.FINISH_REASON_LENGTH
            assert not any(FFFD in m.text for m in mine[:-1])
        assert msgs[-1].usage.completion_tokens == 80
        assert [m.HasField("usage") for m in msgs].count(True) == 1
    assert trt_server.engine.in_flight() == 0


async def test_server_reports_stop_sequences(trt_stub):
    sampling = pb.SamplingParams(seed=3)
    full = await trt_stub.Complete(gen(sampling=sampling), timeout=10)
    stop = full.choices[0].text[20:25]
    msgs = await stream(
        trt_stub, gen(sampling=sampling, stopping=pb.StoppingOptions(max_tokens=40, stop=[stop]))
    )
    assert msgs[-1].finish_reason == pb.FINISH_REASON_STOP_SEQUENCE
    assert msgs[-1].stop_match.stop_text == stop
    stop_id = full.choices[0].token_ids[7]
    stopping = pb.StoppingOptions(max_tokens=40, ignore_eos=True, stop_token_ids=[stop_id])
    msgs = await stream(trt_stub, gen(sampling=sampling, stopping=stopping))
    assert msgs[-1].finish_reason == pb.FINISH_REASON_STOP_SEQUENCE
    assert msgs[-1].stop_match.stop_token_id == stop_id


async def test_server_tokenizes_chat_with_one_bos(trt_stub):
    chat = pb.ChatMessages(messages=[pb.ChatMessage(role="user", content="hi")])
    reply = await trt_stub.Tokenize(pb.TokenizeRequest(messages=chat))
    assert reply.token_ids[0] == BOS_ID and reply.token_ids[1] != BOS_ID
    assert reply.tokens[0] == "<|bos|>"


async def test_a_cancelled_stream_aborts_once(trtllm, slow, trt_server, trt_stub):
    call = trt_stub.Generate(gen(stopping=LONG))
    for _ in range(3):
        assert (await call.read()).token_ids
    call.cancel()
    await async_wait_for(lambda: trt_server.engine.in_flight() == 0)
    assert trtllm._fake.results[-1].abort_calls == 1


async def test_an_expired_deadline_aborts(trtllm, slow, trt_server, trt_stub):
    with pytest.raises(grpc.aio.AioRpcError) as error:
        async for _ in trt_stub.Generate(gen(stopping=LONG), timeout=0.3):
            pass
    assert error.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    await async_wait_for(lambda: trt_server.engine.in_flight() == 0)
    assert trtllm._fake.results[-1].abort_calls == 1


async def test_a_queued_request_past_its_deadline_frees_its_place(
    trtllm, slow, make_server, stub_for
):
    server = await make_server(engine="tensorrt-llm", model="fake-model", max_batch_size=1)
    stub = await stub_for(server)
    running = stub.Generate(gen(stopping=LONG))
    assert (await running.read()).token_ids
    with pytest.raises(grpc.aio.AioRpcError) as error:
        async with asyncio.timeout(5):
            await stub.Complete(gen(stopping=LONG), timeout=0.3)
    assert error.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    queued = trtllm._fake.results[-1]
    await async_wait_for(lambda: server.engine.in_flight() == 1)
    assert queued.abort_calls == 1 and not queued.finished  # it never answered
    running.cancel()
    await async_wait_for(lambda: server.engine.in_flight() == 0)


async def test_a_request_error_is_internal_and_the_server_serves_on(trtllm, trt_server, trt_stub):
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await stream(trt_stub, gen(prompt=f"x {trtllm._fake.REQUEST_ERROR_MARK}"))
    assert error.value.code() == grpc.StatusCode.INTERNAL
    msgs = await stream(trt_stub, gen())
    assert msgs[-1].finish_reason == pb.FINISH_REASON_LENGTH
    assert trt_server.engine.in_flight() == 0 and trt_server.engine.healthy


async def test_a_fatal_error_is_unavailable(trtllm, trt_server, trt_stub):
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await stream(trt_stub, gen(prompt=f"x {trtllm._fake.FATAL_ERROR_MARK}"))
    assert error.value.code() == grpc.StatusCode.UNAVAILABLE
    assert not trt_server.engine.healthy
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await stream(trt_stub, gen())
    assert error.value.code() == grpc.StatusCode.UNAVAILABLE


# Load: TensorRT-LLM's iteration stats (docs/tensorrt_llm.md, "Load statistics").

STATS_KEYS = {"iter", "numActiveRequests", "numQueuedRequests", "kvCacheStats"}
KV_KEYS = {"maxNumBlocks", "freeNumBlocks", "usedNumBlocks", "tokensPerBlock"}


@pytest.fixture
def fast_stats(trtllm: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """An iteration every 5 ms, stats handed over every 20 ms, 4-token KV blocks."""
    monkeypatch.setattr(trtllm._fake, "step_s", 0.005)
    monkeypatch.setattr(trtllm._fake, "stats_period_s", 0.02)
    monkeypatch.setattr(trtllm._fake, "tokens_per_block", 4)


async def long_request(engine: TensorRTLLMEngine, **fields: Any) -> TensorRTLLMHandle:
    return await submit(engine, max_tokens=4000, ignore_eos=True, **fields)


async def drain_stats(llm: Any) -> list[dict[str, Any]]:
    records = []
    with pytest.raises(asyncio.QueueEmpty):  # timeout 0: an empty queue says so at once
        async for record in llm.get_stats_async(0):
            records.append(record)
    return records


async def test_the_fake_hands_stats_over_as_tensorrt_llm_does(trtllm, fast_stats):
    llm = trtllm.LLM("fake-model", enable_iter_perf_stats=True)
    try:
        # Before any request there is no stats iterator: an empty one, no error.
        assert [r async for r in llm.get_stats_async(0)] == []
        result = llm.generate_async([5, 6, 7], trtllm.SamplingParams(max_tokens=6, end_id=-2))
        await result.aresult()
        await asyncio.sleep(0.05)  # a hand-over period
        records = await drain_stats(llm)
        assert records and all(
            r.keys() >= STATS_KEYS and r["kvCacheStats"].keys() >= KV_KEYS for r in records
        )
        assert [r["iter"] for r in records] == list(range(1, len(records) + 1))
        assert records[0]["numActiveRequests"] == 1 and records[0]["numQueuedRequests"] == 0
        used = [r["kvCacheStats"]["usedNumBlocks"] for r in records]
        assert used == sorted(used) and used[-1] > used[0]  # blocks grow with the tokens
        # A wait with a timeout that runs out ends the iterator, and it stays done,
        # records or not, until the next submit marks it undone.
        assert [r async for r in llm.get_stats_async(0.01)] == []
        await (llm.generate_async([8], trtllm.SamplingParams(max_tokens=3, end_id=-2))).aresult()
        await asyncio.sleep(0.05)
        stale = llm.get_stats_async(0.01)
        assert [r async for r in stale] and [r async for r in stale] == []
    finally:
        llm.shutdown()


async def test_the_fake_makes_stats_only_when_tensorrt_llm_would(trtllm, fast_stats):
    trt_llm = importlib.import_module("tensorrt_llm._tensorrt_engine").LLM
    for llm, expected in ((trtllm.LLM("fake-model"), False), (trt_llm("fake-model"), True)):
        try:
            await llm.generate_async([5], trtllm.SamplingParams(max_tokens=3, end_id=-2)).aresult()
            await asyncio.sleep(0.05)
            assert bool([r async for r in llm.get_stats_async(0.01)]) is expected
        finally:
            llm.shutdown()


def test_a_stats_record_becomes_the_engine_load():
    record = {
        "numActiveRequests": 3,
        "numQueuedRequests": 2,
        "kvCacheStats": {"maxNumBlocks": 200, "usedNumBlocks": 50, "tokensPerBlock": 32},
    }
    load = iteration_load(record)
    assert load == EngineLoad(2, 3, 0.25, 32, 200)
    free_only = {**record, "kvCacheStats": {"maxNumBlocks": 100, "freeNumBlocks": 90}}
    assert iteration_load(free_only) == EngineLoad(2, 3, 0.1, 0, 100)
    assert iteration_load({**record, "kvCacheStats": None}) == EngineLoad(2, 3, 0.0, 0, 0)
    for bad in (None, "{}", {"numActiveRequests": True, "numQueuedRequests": 0}, {"iter": 1}):
        assert iteration_load(bad) is None


async def test_load_rises_with_requests_and_returns_to_idle(trtllm, fast_stats, make_engine):
    engine = await make_engine(max_batch_size=2)
    assert engine.load() == EngineLoad(0, 0, 0.0, 0, 0)  # nothing reported yet
    handles = [await long_request(engine, sampling=SamplingOptions(seed=i)) for i in range(3)]
    # Before the engine's first record: the adapter's own count, nothing else.
    assert engine.load() == EngineLoad(0, 3, 0.0, 0, 0)
    await async_wait_for(lambda: engine.load().kv_block_size == 4)
    busy = engine.load()
    assert (busy.running, busy.waiting, busy.kv_total_blocks) == (2, 1, 2048)
    assert 0 < busy.kv_cache_utilization < 1
    await async_wait_for(lambda: engine.load().kv_cache_utilization > busy.kv_cache_utilization)
    assert engine.load().kv_cache_utilization == pytest.approx(
        trtllm._fake.stats_records[-1]["kvCacheStats"]["usedNumBlocks"] / 2048, abs=0.02
    )
    for handle in handles:
        handle.abort()
    # Idle: TensorRT-LLM makes no more records; nothing runs, nothing is held.
    assert engine.load() == EngineLoad(0, 0, 0.0, 4, 2048)


async def test_load_counts_a_finished_spell_down_to_idle(trtllm, fast_stats, make_engine):
    engine = await make_engine()
    handle = await submit(engine, max_tokens=30, ignore_eos=True)
    await drain(handle)
    # Idle: nothing runs or is held; the pool's shape is the one last reported.
    await async_wait_for(lambda: engine.load() == EngineLoad(0, 0, 0.0, 4, 2048))
    # The next busy spell starts from the adapter's count, not the last spell's record.
    again = await long_request(engine)
    assert engine.load() == EngineLoad(0, 1, 0.0, 4, 2048)
    await async_wait_for(lambda: engine.load().kv_cache_utilization > 0)
    again.abort()


async def test_without_stats_load_is_the_adapters_own_count(
    trtllm, fast_stats, make_engine, monkeypatch
):
    monkeypatch.setattr(trtllm.llmapi.llm._TorchLLM, "_iter_stats_enabled", lambda self: False)
    engine = await make_engine()
    handles = [await long_request(engine, sampling=SamplingOptions(seed=i)) for i in range(2)]
    await asyncio.sleep(0.2)  # several hand-over periods: nothing comes
    assert engine.load() == EngineLoad(0, 2, 0.0, 0, 0)
    assert trtllm._fake.stats_calls > 0 and not trtllm._fake.stats_records
    for handle in handles:
        handle.abort()
    assert engine.load() == EngineLoad(0, 0, 0.0, 0, 0)


async def test_the_stats_poller_is_idle_while_nothing_runs(trtllm, fast_stats, make_engine):
    engine = await make_engine()
    await asyncio.sleep(0.1)
    assert trtllm._fake.stats_calls == 0  # no request yet: not even a look
    await drain(await submit(engine, max_tokens=10, ignore_eos=True))
    assert trtllm._fake.stats_calls > 0

    async def settled() -> bool:  # the poller stops reading once it has drained the end
        before = trtllm._fake.stats_calls
        await asyncio.sleep(0.15)
        return bool(trtllm._fake.stats_calls == before)

    await async_wait_for(settled, within=5)
    calls = trtllm._fake.stats_calls
    await asyncio.sleep(0.3)
    assert trtllm._fake.stats_calls == calls  # idle again: no more reads


async def test_the_stats_poller_stops_with_the_engine(trtllm, fast_stats, make_engine):
    engine = await make_engine()
    handle = await long_request(engine)
    await async_wait_for(lambda: engine.load().kv_block_size > 0)
    tasks = [t for t in asyncio.all_tasks() if t.get_name() == "tokenwire-trtllm-stats"]
    assert len(tasks) == 1 and not tasks[0].done()
    await engine.close()
    assert tasks[0].done() and handle.finished
    assert not [t for t in asyncio.all_tasks() if t.get_name() == "tokenwire-trtllm-stats"]
    assert engine.load().running == 0


async def test_the_requests_priority_reaches_generate_async(engine: TensorRTLLMEngine, trtllm: Any):
    await drain(await submit(engine, max_tokens=4, ignore_eos=True, priority=0.9))
    await drain(await submit(engine, max_tokens=4, ignore_eos=True))
    assert trtllm._fake.priorities == [0.9, 0.5]  # newer versions schedule by it
