"""The transformers engine on a tiny random Llama built in code: through the seam, a real
server, and the ``tokenwire-server`` command. Nothing downloads."""

from __future__ import annotations

import asyncio
import codecs
import random
import re
import shutil
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from tokenwire.server.app import Server
from tokenwire.server.engines import _hf_sampling
from tokenwire.server.engines.base import (
    ChatMessage,
    EngineUnavailable,
    GenerationHandle,
    GenerationRequest,
    InvalidInput,
    PromptInput,
    RequestFailed,
    SamplingOptions,
    SequenceDelta,
)
from tokenwire.server.engines.transformers import TransformersEngine
from tokenwire.server.settings import Settings
from tokenwire.v1 import generation_pb2 as pb
from tokenwire.v1 import generation_pb2_grpc as pb_grpc

from ..helpers import async_wait_for, start_server_process
from .tiny_model import build_tiny_adapter, token_bytes

PROMPT = "the quick brown fox"


def settings(model_dir: Path, **values: Any) -> Settings:
    return Settings(engine="transformers", model=str(model_dir), **values)


@pytest.fixture
async def engine(model_dir: Path) -> AsyncIterator[TransformersEngine]:
    engine = TransformersEngine.from_settings(settings(model_dir))
    await engine.start()
    yield engine
    await engine.close()


@dataclass
class Seq:
    tokens: list[int] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    logprobs: list[Any] = field(default_factory=list)
    cumulative: float | None = None
    finish: str | None = None
    match: str | int | None = None

    @property
    def text(self) -> str:
        return "".join(self.texts)


async def prompt_ids(engine: TransformersEngine, text: str = PROMPT) -> tuple[int, ...]:
    return tuple(await engine.tokenize(PromptInput(text=text)))


def request(ids: tuple[int, ...], max_tokens: int = 16, **fields: Any) -> GenerationRequest:
    names = SamplingOptions.__dataclass_fields__
    sampling = SamplingOptions(**{k: fields.pop(k) for k in list(fields) if k in names})
    return GenerationRequest(
        request_id="r", prompt_token_ids=ids, max_tokens=max_tokens, sampling=sampling, **fields
    )


def absorb(out: dict[int, Seq], step: Sequence[SequenceDelta]) -> None:
    for d in step:
        seq = out.setdefault(d.index, Seq())
        seq.tokens += d.token_ids
        seq.texts.append(d.text)
        seq.logprobs += d.logprobs
        seq.cumulative = d.cumulative_logprob
        seq.finish, seq.match = d.finish_reason, d.stop_match


async def collect(handle: GenerationHandle, out: dict[int, Seq] | None = None) -> dict[int, Seq]:
    out = {} if out is None else out
    async with asyncio.timeout(30):
        async for step in handle:
            absorb(out, step)
    return out


async def run(engine: TransformersEngine, ids: tuple[int, ...], **fields: Any) -> dict[int, Seq]:
    return await collect(engine.submit(request(ids, **fields)))


FFFD = "\ufffd"


def reference_text(tokenizer: Any, tokens: list[int], skip_special_tokens: bool = True) -> str:
    """The whole sequence decoded at once: what its streamed text must add up to."""
    return str(
        tokenizer.decode(
            tokens, skip_special_tokens=skip_special_tokens, clean_up_tokenization_spaces=False
        )
    )


# --- loading ---------------------------------------------------------------------------


async def test_description_before_and_after_start(model_dir: Path, tokenizer: Any):
    engine = TransformersEngine.from_settings(settings(model_dir, max_seq_len=512))
    assert (engine.description.name, engine.description.engine) == ("tiny-llama", "transformers")
    with pytest.raises(EngineUnavailable):
        engine.submit(request((1, 2)))
    await engine.start()
    try:
        d = engine.description
        assert d.max_context_length == 512  # the config's 1024, capped by max_seq_len
        assert d.vocab_size == len(tokenizer)
        assert d.eos_token_id == tokenizer.eos_token_id
        assert engine.healthy
    finally:
        await engine.close()
    assert not engine.healthy
    with pytest.raises(EngineUnavailable):
        engine.submit(request((1, 2)))


async def test_a_missing_or_invalid_model_directory_is_unavailable(tmp_path: Path):
    for path in (tmp_path / "absent", tmp_path):
        engine = TransformersEngine.from_settings(settings(path))
        with pytest.raises(EngineUnavailable, match=re.escape(str(path))):
            await engine.start()
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(EngineUnavailable, match=re.escape(str(tmp_path))):
        await TransformersEngine.from_settings(settings(tmp_path)).start()


def test_missing_packages_name_the_extra(model_dir: Path, monkeypatch: pytest.MonkeyPatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "torch" else real(name, *a)
    )
    with pytest.raises(EngineUnavailable, match=r"pip install 'tokenwire\[transformers\]'"):
        TransformersEngine.from_settings(settings(model_dir))


async def test_tokenize_text_and_chat(engine: TransformersEngine, tokenizer: Any):
    ids = await engine.tokenize(PromptInput(text="café 日本語 🚀"))
    assert ids[0] == tokenizer.bos_token_id
    assert tokenizer.decode(ids, skip_special_tokens=True) == "café 日本語 🚀"
    assert (await engine.tokenize(PromptInput(text="a"), add_special_tokens=False))[0] != ids[0]
    assert engine.token_strings(ids[:2]) == ["<|bos|>", "c"]
    chat = await engine.tokenize(PromptInput(messages=(ChatMessage("user", "hi"),)))
    assert tokenizer.decode(chat) == "<|user|>hi\n<|assistant|>"
    with pytest.raises(InvalidInput, match="must not be the assistant"):
        await engine.tokenize(PromptInput(messages=(ChatMessage("assistant", "hi"),)))


async def test_a_model_without_chat_template_rejects_messages(model_dir: Path, tmp_path: Path):
    bare = tmp_path / "bare"
    shutil.copytree(model_dir, bare)
    (bare / "chat_template.jinja").unlink()
    engine = TransformersEngine.from_settings(settings(bare))
    await engine.start()
    try:
        with pytest.raises(InvalidInput) as error:
            await engine.tokenize(PromptInput(messages=(ChatMessage("user", "hi"),)))
        assert error.value.field_path == "messages"
    finally:
        await engine.close()


# --- generation through the seam -------------------------------------------------------


async def test_greedy_stream_matches_transformers_generate(
    engine: TransformersEngine, model_dir: Path, tokenizer: Any
):
    import torch
    from transformers import AutoModelForCausalLM

    ids = await prompt_ids(engine)
    seq = (await run(engine, ids, max_tokens=24, ignore_eos=True))[0]
    assert seq.finish == "length" and len(seq.tokens) == 24
    assert seq.text == reference_text(tokenizer, seq.tokens)
    assert engine.in_flight() == 0
    model: Any = AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True)
    expected = model.generate(
        torch.tensor([ids]), max_new_tokens=24, do_sample=False, min_new_tokens=24
    )
    assert seq.tokens == expected[0, len(ids) :].tolist()


async def test_batching_does_not_change_greedy_output(engine: TransformersEngine):
    """Requests with prompts of other lengths join a running batch (left padding) and
    leave it at other times (rows dropped, pad columns cut): no sequence notices."""
    texts = ("a", PROMPT, PROMPT * 3, "日本語 🚀")
    prompts = [await prompt_ids(engine, text) for text in texts]
    lengths = (48, 24, 13, 20)
    fields = {"ignore_eos": True, "logprobs": True}
    alone = [(await run(engine, p, max_tokens=48, **fields))[0] for p in prompts]

    def submit(i: int) -> GenerationHandle:
        return engine.submit(request(prompts[i], max_tokens=lengths[i], **fields))

    handles = [submit(0), submit(1)]
    outs: list[dict[int, Seq]] = [{} for _ in prompts]
    for handle, out in zip(handles, outs, strict=False):
        absorb(out, await anext(handle.__aiter__()))  # both are decoding now
    handles += [submit(2), submit(3)]  # a longer and a shorter prompt join them
    together = await asyncio.gather(
        *(collect(h, out) for h, out in zip(handles, outs, strict=True))
    )
    for one, many, n in zip(alone, together, lengths, strict=True):
        assert many[0].tokens == one.tokens[:n]
        for a, b in zip(one.logprobs, many[0].logprobs, strict=False):
            assert a.logprob == pytest.approx(b.logprob, abs=1e-4)


async def test_seeded_sampling_is_reproducible(engine: TransformersEngine):
    ids = await prompt_ids(engine)
    first = await run(engine, ids, temperature=1.0, seed=11, n=2, max_tokens=20, ignore_eos=True)
    again = await run(engine, ids, temperature=1.0, seed=11, n=2, max_tokens=20, ignore_eos=True)
    other = await run(engine, ids, temperature=1.0, seed=12, max_tokens=20, ignore_eos=True)
    assert first[0].tokens == again[0].tokens and first[1].tokens == again[1].tokens
    assert first[0].tokens != first[1].tokens  # n sequences draw apart
    assert other[0].tokens != first[0].tokens


async def test_asking_for_variety_samples_by_default(engine: TransformersEngine):
    """No temperature: greedy for a plain request, temperature 1 with n > 1 or a seed."""
    ids = await prompt_ids(engine)
    greedy = (await run(engine, ids, temperature=0.0, max_tokens=20, ignore_eos=True))[0].tokens
    plain = (await run(engine, ids, max_tokens=20, ignore_eos=True))[0].tokens
    assert plain == greedy
    several = await run(engine, ids, n=3, max_tokens=20, ignore_eos=True)
    assert len({tuple(s.tokens) for s in several.values()}) == 3
    seeded = [
        (await run(engine, ids, seed=seed, max_tokens=20, ignore_eos=True))[0].tokens
        for seed in (1, 1, 2)
    ]
    assert seeded[0] == seeded[1] != seeded[2]
    explicit = await run(engine, ids, seed=1, temperature=1.0, max_tokens=20, ignore_eos=True)
    assert explicit[0].tokens == seeded[0]  # the default is temperature 1.0
    assert greedy not in seeded
    zero = await run(engine, ids, seed=1, n=2, temperature=0.0, max_tokens=20, ignore_eos=True)
    assert zero[0].tokens == zero[1].tokens == greedy  # an explicit 0 stays greedy


async def test_truncation_to_one_token_is_greedy(engine: TransformersEngine):
    ids = await prompt_ids(engine)
    greedy = (await run(engine, ids, ignore_eos=True))[0].tokens
    for option in ({"top_k": 1}, {"top_p": 1e-6}, {"min_p": 1.0}):
        sampled = await run(engine, ids, temperature=1.5, seed=5, ignore_eos=True, **option)
        assert sampled[0].tokens == greedy, option


async def test_penalties_discourage_repeats(engine: TransformersEngine):
    ids = await prompt_ids(engine, "O")
    plain = (await run(engine, ids, max_tokens=32, ignore_eos=True))[0].tokens
    for option in ({"repetition_penalty": 3.0}, {"frequency_penalty": 2.0}):
        penalised = (await run(engine, ids, max_tokens=32, ignore_eos=True, **option))[0].tokens
        assert len(set(penalised)) > len(set(plain)), option


async def test_logprobs_and_alternatives(engine: TransformersEngine):
    ids = await prompt_ids(engine)
    seq = (await run(engine, ids, logprobs=True, top_logprobs=3, ignore_eos=True))[0]
    assert len(seq.logprobs) == len(seq.tokens)
    for token, lp in zip(seq.tokens, seq.logprobs, strict=True):
        assert lp.token_id == token and lp.logprob <= 0
        assert [t.logprob for t in lp.top] == sorted((t.logprob for t in lp.top), reverse=True)
        assert lp.top[0].token_id == token  # greedy takes the most likely
        assert lp.token == engine.token_strings([token])[0]
    assert seq.cumulative == pytest.approx(sum(lp.logprob for lp in seq.logprobs), rel=1e-5)


async def test_stop_token_ids(engine: TransformersEngine, tokenizer: Any):
    ids = await prompt_ids(engine)
    tokens = (await run(engine, ids, max_tokens=24, ignore_eos=True))[0].tokens
    k = next(i for i in range(3, 24) if tokens[i] not in tokens[:i])
    for include in (False, True):
        seq = (await run(engine, ids, stop_token_ids=(tokens[k],), include_stop_in_output=include))[
            0
        ]
        assert (seq.finish, seq.match, seq.tokens) == ("stop_sequence", tokens[k], tokens[: k + 1])
        assert seq.text == reference_text(tokenizer, tokens[: k + 1 if include else k])
    # min_tokens bans the stop token until that many tokens exist.
    seq = (await run(engine, ids, stop_token_ids=(tokens[0],), min_tokens=3))[0]
    assert tokens[0] not in seq.tokens[:3]


async def test_stop_strings_are_held_back_and_cut(engine: TransformersEngine):
    ids = await prompt_ids(engine)
    full = (await run(engine, ids, max_tokens=32, ignore_eos=True))[0].text
    at = next(
        p
        for p in range(1, len(full) - 6)
        if "\ufffd" not in full[p : p + 2] and full.find(full[p : p + 2]) == p
    )
    stop = full[at : at + 2]
    for include in (False, True):
        seq = (
            await run(
                engine, ids, max_tokens=32, stop=(stop, "never"), include_stop_in_output=include
            )
        )[0]
        assert (seq.finish, seq.match) == ("stop_sequence", stop)
        assert seq.text == full[: at + (2 if include else 0)]
        assert all(stop not in t for t in seq.texts[:-1])  # never sent before it matched


async def test_end_of_sequence_and_ignore_eos(engine: TransformersEngine, tokenizer: Any):
    """Some seed draws EOS early: it ends the sequence ("stop"), or not with ignore_eos."""
    ids = await prompt_ids(engine)
    eos = tokenizer.eos_token_id
    runs = await asyncio.gather(
        *(run(engine, ids, temperature=2.0, seed=s, max_tokens=40) for s in range(48))
    )
    seed, seq = next((s, r[0]) for s, r in enumerate(runs) if r[0].finish == "stop")
    assert seq.tokens[-1] == eos and eos not in seq.tokens[:-1]
    longer = (await run(engine, ids, temperature=2.0, seed=seed, max_tokens=40, ignore_eos=True))[0]
    assert longer.finish == "length" and longer.tokens[: len(seq.tokens)] == seq.tokens
    assert "<|eos|>" not in longer.text  # skip_special_tokens is the default
    shown = await run(
        engine,
        ids,
        temperature=2.0,
        seed=seed,
        max_tokens=40,
        ignore_eos=True,
        skip_special_tokens=False,
    )
    assert "<|eos|>" in shown[0].text
    early = (await run(engine, ids, temperature=2.0, seed=seed, max_tokens=40, min_tokens=40))[0]
    assert eos not in early.tokens
    # A sequence that ends on EOS shows it too, as decode does, unless it is skipped.
    for skip in (True, False):
        ended = await run(
            engine, ids, temperature=2.0, seed=seed, max_tokens=40, skip_special_tokens=skip
        )
        assert ended[0].tokens == seq.tokens and ended[0].finish == "stop"
        assert ended[0].text == reference_text(tokenizer, seq.tokens, skip_special_tokens=skip)
        assert ended[0].text.endswith("<|eos|>") is not skip


async def test_each_sequence_reads_as_the_decode_of_its_ids(
    engine: TransformersEngine, tokenizer: Any
):
    """Many seeds at temperature 1 with n = 2: random weights emit split characters and
    invalid bytes all the time. Whatever ends a sequence (max_tokens, EOS), its streamed
    text is the tokenizer's decode of its ids, and only its last delta may end in U+FFFD."""
    ids = await prompt_ids(engine, "日本語 🚀 café")

    async def one(seed: int) -> tuple[bool, dict[int, Seq]]:
        rng = random.Random(seed)
        skip = seed % 2 == 0
        fields = {"max_tokens": rng.randint(4, 32), "skip_special_tokens": skip}
        return skip, await run(engine, ids, temperature=1.0, seed=seed, n=2, **fields)

    flushed = ended = 0
    for skip, result in await asyncio.gather(*(one(seed) for seed in range(48))):
        for seq in result.values():
            assert seq.text == reference_text(tokenizer, seq.tokens, skip_special_tokens=skip)
            assert not any(t.endswith(FFFD) for t in seq.texts[:-1])
            flushed += seq.texts[-1].endswith(FFFD)
            ended += seq.finish == "stop"
    assert flushed > 0 and ended > 0  # both kinds of end were seen, held bytes flushed


async def first_held(
    engine: TransformersEngine, tokenizer: Any, ids: tuple[int, ...]
) -> tuple[int, list[int], int]:
    """A seed, its first 40 tokens, and a length after which the stream holds bytes back."""
    for seed in range(64):
        tokens = (
            await run(engine, ids, seed=seed, temperature=2.0, max_tokens=40, ignore_eos=True)
        )[0].tokens
        for k in range(1, 40):
            if reference_text(tokenizer, tokens[:k]).endswith(FFFD):
                return seed, tokens, k
    raise AssertionError("no seed split a character")


async def test_an_abort_flushes_what_the_sequence_held(engine: TransformersEngine, tokenizer: Any):
    ids = await prompt_ids(engine, "日本語 🚀 café")
    for seed in range(64):
        handle = engine.submit(
            request(ids, max_tokens=200, ignore_eos=True, temperature=2.0, seed=seed)
        )
        seq = Seq()
        steps = aiter(handle)
        async with asyncio.timeout(30):
            while not handle.finished:
                absorb({0: seq}, await anext(steps))
                pending = reference_text(tokenizer, seq.tokens)[len(seq.text) :]
                if pending:
                    break
        if handle.finished:
            continue
        handle.abort()
        last = await anext(steps)
        assert [(d.finish_reason, d.text) for d in last] == [("cancelled", pending)]
        assert pending.endswith(FFFD)
        assert seq.text + last[0].text == reference_text(tokenizer, seq.tokens)
        return
    pytest.fail("no seed held bytes back mid-stream")


async def test_a_failing_request_first_sends_what_it_held(
    engine: TransformersEngine, tokenizer: Any, monkeypatch: pytest.MonkeyPatch
):
    ids = await prompt_ids(engine, "日本語 🚀 café")
    seed, tokens, k = await first_held(engine, tokenizer, ids)
    sample = _hf_sampling.Sampler.sample

    def broken(self: _hf_sampling.Sampler, logits: Any, generated: int, want: bool) -> Any:
        if self._options.seed == seed and generated == k:
            raise RuntimeError("boom")
        return sample(self, logits, generated, want)

    monkeypatch.setattr(_hf_sampling.Sampler, "sample", broken)
    handle = engine.submit(request(ids, max_tokens=40, ignore_eos=True, temperature=2.0, seed=seed))
    seq = Seq()
    with pytest.raises(RequestFailed, match="boom"):
        async with asyncio.timeout(30):
            async for step in handle:
                absorb({0: seq}, step)
    assert seq.tokens == tokens[:k] and seq.finish is None
    assert seq.text == reference_text(tokenizer, tokens[:k]) and seq.text.endswith(FFFD)


async def test_abort_mid_stream_frees_the_request_at_once(engine: TransformersEngine):
    ids = await prompt_ids(engine)
    handle = engine.submit(request(ids, max_tokens=1000, ignore_eos=True))
    steps = handle.__aiter__()
    async with asyncio.timeout(10):
        assert (await anext(steps))[0].token_ids
        handle.abort()
        handle.abort()  # idempotent
        assert engine.in_flight() == 0 and handle.finished
        last = await anext(steps)
        assert [d.finish_reason for d in last] == ["cancelled"]
        with pytest.raises(StopAsyncIteration):
            await anext(steps)
    await async_wait_for(lambda: engine.running_sequences == 0, within=5)


async def test_cancelled_waits_lose_no_tokens(engine: TransformersEngine):
    """A consumer may time out a pending __anext__ and call again (streaming delays do)."""
    ids = await prompt_ids(engine)
    expected = (await run(engine, ids, max_tokens=64, ignore_eos=True))[0].tokens
    handle = engine.submit(request(ids, max_tokens=64, ignore_eos=True))
    got: list[int] = []
    timeouts = 0
    async with asyncio.timeout(30):
        while not got or len(got) < 64:
            try:
                async with asyncio.timeout(0):  # gives up whenever nothing is ready
                    step = await anext(handle.__aiter__())
            except TimeoutError:
                timeouts += 1
                continue
            got += step[0].token_ids
    assert got == expected and timeouts > 0


async def test_concurrent_requests_all_complete(engine: TransformersEngine):
    ids = await prompt_ids(engine)
    results = await asyncio.gather(
        *(
            run(engine, ids[: 2 + i % 4], temperature=1.0, seed=i, max_tokens=12 + i, n=1 + i % 2)
            for i in range(12)
        )
    )
    for i, result in enumerate(results):
        assert len(result) == 1 + i % 2
        assert all(s.finish in ("length", "stop") for s in result.values())
    assert engine.in_flight() == 0
    await async_wait_for(lambda: engine.running_sequences == 0, within=5)


async def test_a_failing_request_fails_alone(
    engine: TransformersEngine, monkeypatch: pytest.MonkeyPatch
):
    sample = _hf_sampling.Sampler.sample

    def broken(self: _hf_sampling.Sampler, logits: Any, generated: int, want: bool) -> Any:
        if self._options.seed == 666 and generated == 3:
            raise RuntimeError("boom")
        return sample(self, logits, generated, want)

    monkeypatch.setattr(_hf_sampling.Sampler, "sample", broken)
    ids = await prompt_ids(engine)
    bad, good = await asyncio.gather(
        run(engine, ids, temperature=1.0, seed=666, max_tokens=20, ignore_eos=True),
        run(engine, ids, temperature=1.0, seed=1, max_tokens=20, ignore_eos=True),
        return_exceptions=True,
    )
    assert isinstance(bad, RequestFailed) and "boom" in str(bad)
    assert isinstance(good, dict) and len(good[0].tokens) == 20
    assert engine.in_flight() == 0 and engine.healthy


async def test_close_aborts_live_requests_and_stops_the_worker(model_dir: Path):
    engine = TransformersEngine.from_settings(settings(model_dir))
    await engine.start()
    handle = engine.submit(request(await prompt_ids(engine), max_tokens=1000, ignore_eos=True))
    async with asyncio.timeout(10):
        await anext(handle.__aiter__())
        await engine.close()
    assert handle.finished and engine.in_flight() == 0 and not engine.healthy


# --- LoRA adapters ---------------------------------------------------------------------


@pytest.fixture(scope="session")
def adapters(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two LoRA adapters for the tiny model, of other ranks and target modules."""
    root = tmp_path_factory.mktemp("lora")
    return {
        "sql": build_tiny_adapter(model_dir, root / "sql", seed=1),
        "chat": build_tiny_adapter(
            model_dir, root / "chat", seed=2, r=2, target_modules=["k_proj", "up_proj"]
        ),
    }


def lora_flag(adapters: dict[str, Path]) -> str:
    return ",".join(f"{name}={path}" for name, path in adapters.items())


@pytest.fixture
async def lora_engine(
    model_dir: Path, adapters: dict[str, Path]
) -> AsyncIterator[TransformersEngine]:
    engine = TransformersEngine.from_settings(settings(model_dir, lora=lora_flag(adapters)))
    await engine.start()
    yield engine
    await engine.close()


def peft_greedy(model_dir: Path, adapter: Path, ids: tuple[int, ...], n: int) -> list[int]:
    """PEFT's own greedy ``generate`` with one adapter: what the engine must match."""
    import warnings

    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base: Any = AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True)
    with warnings.catch_warnings():  # peft 0.21 on transformers 5: a deprecated property
        warnings.filterwarnings("ignore", ".*is_gradient_checkpointing", category=FutureWarning)
        model: Any = PeftModel.from_pretrained(base, adapter)
    model.eval()
    out = model.generate(
        input_ids=torch.tensor([ids]), max_new_tokens=n, min_new_tokens=n, do_sample=False
    )
    tokens: list[int] = out[0, len(ids) :].tolist()
    return tokens


async def test_an_adapter_generates_as_peft_does(
    lora_engine: TransformersEngine, model_dir: Path, adapters: dict[str, Path]
):
    assert lora_engine.description.adapters == ("sql", "chat")  # as given, in order
    ids = await prompt_ids(lora_engine)
    fields = {"max_tokens": 20, "ignore_eos": True}
    base = (await run(lora_engine, ids, **fields))[0].tokens
    sql = (await run(lora_engine, ids, adapter="sql", **fields))[0].tokens
    chat = (await run(lora_engine, ids, adapter="chat", **fields))[0].tokens
    assert len({tuple(base), tuple(sql), tuple(chat)}) == 3  # each adapter changes the text
    assert sql == peft_greedy(model_dir, adapters["sql"], ids, 20)
    assert chat == peft_greedy(model_dir, adapters["chat"], ids, 20)


async def test_base_requests_beside_adapters_run_the_base_model(
    lora_engine: TransformersEngine, engine: TransformersEngine
):
    ids = await prompt_ids(engine)
    plain = (await run(engine, ids, max_tokens=20, ignore_eos=True))[0].tokens
    assert (await run(lora_engine, ids, max_tokens=20, ignore_eos=True))[0].tokens == plain


async def test_a_mixed_batch_gives_each_request_its_own_output(lora_engine: TransformersEngine):
    """Base and adapter requests share one batch: rows join it mid-flight (merged, left
    padded) and leave it early (compacted), and each gets what it gets alone."""
    texts = ("a", PROMPT, PROMPT * 3, "日本語 🚀", PROMPT)
    names = ("sql", None, "chat", "sql", None)
    lengths = (40, 12, 16, 24, 30)
    prompts = [await prompt_ids(lora_engine, text) for text in texts]
    fields = {"ignore_eos": True, "logprobs": True}

    def req(i: int) -> GenerationRequest:
        return request(prompts[i], max_tokens=lengths[i], adapter=names[i], **fields)

    alone = [(await collect(lora_engine.submit(req(i))))[0] for i in range(len(texts))]
    handles = [lora_engine.submit(req(i)) for i in (0, 1)]
    outs: list[dict[int, Seq]] = [{} for _ in texts]
    for handle, out in zip(handles, outs, strict=False):
        absorb(out, await anext(handle.__aiter__()))  # both are decoding now
    handles += [lora_engine.submit(req(i)) for i in (2, 3, 4)]  # more join, in other orders
    assert lora_engine.running_sequences >= 2
    together = await asyncio.gather(
        *(collect(h, out) for h, out in zip(handles, outs, strict=True))
    )
    for one, many in zip(alone, together, strict=True):
        assert many[0].tokens == one.tokens
        for a, b in zip(one.logprobs, many[0].logprobs, strict=True):
            assert a.logprob == pytest.approx(b.logprob, abs=1e-4)


async def test_a_bad_adapter_fails_the_start_naming_it(
    model_dir: Path, adapters: dict[str, Path], tmp_path: Path
):
    dora = build_tiny_adapter(model_dir, tmp_path / "dora", use_dora=True)
    no_weights = tmp_path / "no-weights"
    shutil.copytree(adapters["sql"], no_weights)
    (no_weights / "adapter_model.safetensors").unlink()
    cases = {
        "gone": (tmp_path / "absent", "no adapter_config.json"),
        "model": (model_dir, "no adapter_config.json"),  # a model, not an adapter
        "empty": (no_weights, "no adapter weights"),
        "dora": (dora, "DoRA"),
    }
    for name, (path, why) in cases.items():
        flag = f"sql={adapters['sql']},{name}={path}"
        engine = TransformersEngine.from_settings(settings(model_dir, lora=flag))
        with pytest.raises(EngineUnavailable, match=f"LoRA adapter '{name}'.*{why}"):
            await engine.start()
        assert not engine.healthy


def test_adapters_need_peft(model_dir: Path, monkeypatch: pytest.MonkeyPatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "peft" else real(name, *a)
    )
    TransformersEngine.from_settings(settings(model_dir))  # no adapters: no peft needed
    with pytest.raises(EngineUnavailable, match=r"peft: pip install 'tokenwire\[transformers\]'"):
        TransformersEngine.from_settings(settings(model_dir, lora=f"x={model_dir}"))


# --- through a real server -------------------------------------------------------------


@pytest.fixture
async def hf_server(model_dir: Path) -> AsyncIterator[Server]:
    server = Server(settings(model_dir, port=0, metrics_port=0, http_port=0))
    await server.start()
    yield server
    await server.stop(grace=0)


@pytest.fixture
async def stub(hf_server: Server) -> AsyncIterator[pb_grpc.GenerationServiceAsyncStub]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{hf_server.port}") as channel:
        yield pb_grpc.GenerationServiceStub(channel)


def generate_request(**sampling: Any) -> pb.GenerateRequest:
    stopping = {
        k: sampling.pop(k)
        for k in list(sampling)
        if k in pb.StoppingOptions.DESCRIPTOR.fields_by_name
    }
    stopping.setdefault("max_tokens", 24)
    return pb.GenerateRequest(
        prompt=sampling.pop("prompt", PROMPT),
        sampling=pb.SamplingParams(**sampling),
        stopping=pb.StoppingOptions(**stopping),
    )


async def test_model_info(stub: pb_grpc.GenerationServiceAsyncStub, tokenizer: Any):
    info = await stub.GetModelInfo(pb.GetModelInfoRequest())
    assert (info.model, info.engine) == ("tiny-llama", "transformers")
    assert (info.max_context_length, info.vocab_size) == (1024, len(tokenizer))


async def test_stream_concatenates_to_complete(stub: pb_grpc.GenerationServiceAsyncStub):
    req = generate_request(temperature=1.2, seed=3, n=2, ignore_eos=True)
    texts, ids = ["", ""], [list[int](), list[int]()]
    finishes = {}
    async for msg in stub.Generate(req, timeout=30):
        texts[msg.index] += msg.text
        ids[msg.index] += msg.token_ids
        if msg.finish_reason:
            finishes[msg.index] = msg.finish_reason
    done = await stub.Complete(req, timeout=30)
    assert [c.text for c in done.choices] == texts
    assert [list(c.token_ids) for c in done.choices] == ids
    assert finishes == {0: pb.FINISH_REASON_LENGTH, 1: pb.FINISH_REASON_LENGTH}
    assert done.usage.completion_tokens == 48


async def test_split_characters_never_reach_the_wire(
    stub: pb_grpc.GenerationServiceAsyncStub, tokenizer: Any
):
    """Random weights emit random bytes: characters split across tokens all the time."""
    raw = token_bytes(tokenizer)

    async def one(seed: int) -> int:
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        text, tokens, splits = "", list[int](), 0
        req = generate_request(temperature=2.0, seed=seed, max_tokens=32, ignore_eos=True)
        req.prompt = "日本語 🚀 café"
        async for msg in stub.Generate(req, timeout=30):
            pending = decoder.getstate()[0]
            out = decoder.decode(b"".join(raw[t] for t in msg.token_ids))
            splits += bool(pending and out and out[0] != "\ufffd")  # a whole char completed
            text += msg.text
            tokens += msg.token_ids
        # Equal to decoding the sequence at once: no U+FFFD made by splitting.
        assert text == reference_text(tokenizer, tokens)
        return splits

    splits = await asyncio.gather(*(one(seed) for seed in range(24)))
    assert sum(splits) > 0


async def test_stops_over_grpc(stub: pb_grpc.GenerationServiceAsyncStub):
    full = await stub.Complete(generate_request(ignore_eos=True), timeout=30)
    choice = full.choices[0]
    token = choice.token_ids[4]
    by_id = (await stub.Complete(generate_request(stop_token_ids=[token]), timeout=30)).choices[0]
    assert by_id.finish_reason == pb.FINISH_REASON_STOP_SEQUENCE
    assert by_id.stop_match.stop_token_id == token and by_id.token_ids[-1] == token
    stop = next(
        choice.text[p : p + 2]
        for p in range(1, len(choice.text) - 2)
        if "\ufffd" not in choice.text[p : p + 2]
    )
    by_text = (await stub.Complete(generate_request(stop=[stop]), timeout=30)).choices[0]
    assert by_text.finish_reason == pb.FINISH_REASON_STOP_SEQUENCE
    assert by_text.stop_match.stop_text == stop
    assert by_text.text == choice.text[: choice.text.find(stop)]


async def test_chat_over_grpc(stub: pb_grpc.GenerationServiceAsyncStub):
    messages = pb.ChatMessages(messages=[pb.ChatMessage(role="user", content="hi 🚀")])
    tokens = await stub.Tokenize(pb.TokenizeRequest(messages=messages))
    done = await stub.Complete(
        pb.GenerateRequest(messages=messages, stopping=pb.StoppingOptions(max_tokens=4)),
        timeout=30,
    )
    assert done.usage.prompt_tokens == len(tokens.token_ids)


async def test_cancel_and_deadline_free_the_engine(
    hf_server: Server, stub: pb_grpc.GenerationServiceAsyncStub
):
    server = hf_server
    long = generate_request(max_tokens=1000, ignore_eos=True)
    call = stub.Generate(long)
    first = await call.read()
    assert isinstance(first, pb.GenerateResponse) and first.token_ids
    call.cancel()
    await async_wait_for(lambda: server.engine.in_flight() == 0, within=5)
    with pytest.raises(grpc.aio.AioRpcError) as error:
        async for _ in stub.Generate(long, timeout=0.1):
            pass
    assert error.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    await async_wait_for(lambda: server.engine.in_flight() == 0, within=5)
    engine = server.engine
    assert isinstance(engine, TransformersEngine)
    await async_wait_for(lambda: engine.running_sequences == 0, within=5)


def test_server_command(model_dir: Path):
    server = start_server_process(["--engine", "transformers", "--model", str(model_dir)])
    try:
        with grpc.insecure_channel(server.target) as channel:
            stub = pb_grpc.GenerationServiceStub(channel)
            texts = [m.text for m in stub.Generate(generate_request(max_tokens=8), timeout=30)]
            assert texts
    finally:
        assert server.stop() == 0
    assert "loaded" in "".join(server.log) and str(model_dir) in "".join(server.log)
