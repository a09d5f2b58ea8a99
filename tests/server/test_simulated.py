"""The simulated engine through the engine seam, without gRPC."""

from __future__ import annotations

import asyncio
import contextlib
import random
from typing import Any

import pytest

from tokenwire.server.engines.base import (
    ChatMessage,
    GenerationRequest,
    InvalidInput,
    PromptInput,
    SamplingOptions,
    SequenceDelta,
)
from tokenwire.server.engines.simtok import EOS_ID, SimTokenizer
from tokenwire.server.engines.simulated import SimulatedEngine, SimulatorConfig
from tokenwire.server.settings import Settings


def test_tokenizer_round_trips_any_text():
    tok = SimTokenizer()
    text = "The river, café 日本語 🚀 and <|user|> markup\n  spaced 42"
    ids = tok.encode(text, add_special_tokens=False)
    assert b"".join(tok.token_bytes(i) for i in ids).decode() == text
    assert tok.encode("the", add_special_tokens=True)[0] == 1  # BOS


def test_chat_template_marks_roles_and_cues_the_assistant():
    tok = SimTokenizer()
    text = tok.render_chat([ChatMessage("user", "hi")])
    assert text == "<|user|>\nhi<|end|>\n<|assistant|>\n"
    ids = tok.encode(text)
    assert tok.token_string(ids[1]) == "<|user|>"


TOK = SimTokenizer()
FFFD = "\ufffd"


async def run(
    engine: SimulatedEngine, prompt: tuple[int, ...] = (1, 300), **fields: Any
) -> dict[int, list[SequenceDelta]]:
    fields.setdefault("max_tokens", 30)
    request = GenerationRequest(request_id="r", prompt_token_ids=prompt, **fields)
    out: dict[int, list[SequenceDelta]] = {}
    async with asyncio.timeout(10):
        async for step in engine.submit(request):
            for delta in step:
                out.setdefault(delta.index, []).append(delta)
    return out


def text(deltas: list[SequenceDelta]) -> str:
    return "".join(d.text for d in deltas)


def ids(deltas: list[SequenceDelta]) -> list[int]:
    return [t for d in deltas for t in d.token_ids]


def prompt(words: str) -> tuple[int, ...]:
    return tuple(TOK.encode(words))


async def test_same_seed_same_text_other_seed_other_text():
    engine = SimulatedEngine(SimulatorConfig())
    texts = []
    for seed in (1, 1, 2):
        result = await run(engine, sampling=SamplingOptions(seed=seed), ignore_eos=True)
        texts.append(text(result[0]))
    assert texts[0] == texts[1] != texts[2]
    assert engine.in_flight() == 0


async def test_the_text_depends_on_the_prompt_as_well_as_the_seed():
    engine = SimulatedEngine(SimulatorConfig())
    prompts = [prompt(p) for p in ("tell me about rivers", "hello world", "日本語 🚀")]

    async def texts(seed: int | None) -> list[str]:
        sampling = SamplingOptions(seed=seed)
        return [
            text((await run(engine, p, sampling=sampling, ignore_eos=True))[0]) for p in prompts
        ]

    for seed in (7, None):
        first = await texts(seed)
        assert len(set(first)) == 3, first  # another prompt, another answer
        assert await texts(seed) == first  # the same prompt and seed, the same answer
    assert await texts(8) != await texts(7)


async def test_asking_for_logprobs_changes_no_text():
    engine = SimulatedEngine(SimulatorConfig())
    sampling = SamplingOptions(seed=5, n=2)
    plain = await run(engine, sampling=sampling, max_tokens=80)
    scored = await run(engine, sampling=sampling, max_tokens=80, logprobs=True, top_logprobs=3)
    assert [ids(plain[i]) for i in (0, 1)] == [ids(scored[i]) for i in (0, 1)]
    assert all(d.logprobs for d in scored[0])


# --- the text of a sequence is the decode of its ids -------------------------------------

# The simulator's three ways to a step: one token, several plain tokens, and the general
# path (logprobs or stops).
PATHS = [
    pytest.param({}, id="one-token"),
    pytest.param({"stream_step": 4}, id="plain-steps"),
    pytest.param({"logprobs": True, "stream_step": 3}, id="general"),
]


@pytest.mark.parametrize("fields", PATHS)
async def test_each_sequence_reads_as_the_decode_of_its_ids(fields):
    """Many seeds, n = 2, random lengths, both skip_special_tokens values: the streamed
    text of every sequence is ``decode(token_ids)``, whatever cut it short."""
    engine = SimulatedEngine(SimulatorConfig())
    flushed = shown_eos = 0
    for seed in range(48):
        rng = random.Random(seed)
        skip = seed % 2 == 0
        result = await run(
            engine,
            prompt(rng.choice(("rivers", "café 日本語", "go on"))),
            sampling=SamplingOptions(seed=seed, n=2),
            max_tokens=rng.randint(5, 400),
            skip_special_tokens=skip,
            **fields,
        )
        for deltas in result.values():
            assert text(deltas) == TOK.decode(ids(deltas), skip_special_tokens=skip)
            assert not any(d.text.endswith(FFFD) for d in deltas[:-1])  # none split mid-way
            flushed += deltas[-1].text.endswith(FFFD)
            shown_eos += deltas[-1].text.endswith("<|eos|>")
    # Characters were cut off by max_tokens, and ends of sequence were shown.
    assert flushed and shown_eos


def first_cut(full: list[int], wanted: str) -> int:
    """The first length of ``full`` that ends inside a character of ``wanted``."""
    for k in range(1, len(full)):
        rendered = TOK.decode(full[:k])
        if rendered.endswith(FFFD):
            whole = TOK.decode(full[: k + 3])  # the character completes within 3 more tokens
            if whole[len(rendered) - 1] in wanted:
                return k
    raise AssertionError(f"no character of {wanted!r} in the output")


@pytest.mark.parametrize("fields", [*PATHS, pytest.param({"stop": ("zzzz",)}, id="stops")])
@pytest.mark.parametrize("wanted", ["🚀🎉", "日本語東京你好한국어"], ids=["emoji", "cjk"])
async def test_max_tokens_cutting_a_character_ends_on_its_rendered_bytes(fields, wanted):
    engine = SimulatedEngine(SimulatorConfig())
    found = None
    for seed in range(200):
        sampling = SamplingOptions(seed=seed)
        full = ids((await run(engine, sampling=sampling, max_tokens=300, ignore_eos=True))[0])
        try:
            found = sampling, full, first_cut(full, wanted)
            break
        except AssertionError:
            continue
    assert found is not None
    sampling, full, cut = found
    deltas = (await run(engine, sampling=sampling, max_tokens=cut, ignore_eos=True, **fields))[0]
    assert ids(deltas) == full[:cut] and deltas[-1].finish_reason == "length"
    assert deltas[-1].text.endswith(FFFD)  # the held bytes, as decode renders them
    assert text(deltas) == TOK.decode(full[:cut])
    assert TOK.decode(full[: cut + 3])[len(text(deltas)) - 1] in wanted  # what was cut


@pytest.mark.parametrize("fields", [PATHS[0], PATHS[2]])
async def test_skip_special_tokens_false_shows_the_end_of_sequence_token(fields):
    engine = SimulatedEngine(SimulatorConfig())
    sampling = SamplingOptions(seed=3)
    for skip in (True, False):
        deltas = (
            await run(
                engine, sampling=sampling, max_tokens=1000, skip_special_tokens=skip, **fields
            )
        )[0]
        assert deltas[-1].finish_reason == "stop" and ids(deltas)[-1] == EOS_ID
        assert text(deltas) == TOK.decode(ids(deltas), skip_special_tokens=skip)
        assert text(deltas).endswith("<|eos|>") is not skip


@pytest.mark.parametrize(
    ("fields", "held"),
    [
        ({}, FFFD),  # the first bytes of a character
        ({"stop": (" the zzz",), "logprobs": True}, " the"),  # what may start a stop string
    ],
    ids=["character", "stop-string"],
)
async def test_an_abort_flushes_what_the_sequence_held(fields, held):
    engine = SimulatedEngine(SimulatorConfig())
    for seed in range(100):
        request = GenerationRequest(
            "r", prompt("go on"), max_tokens=400, ignore_eos=True,
            sampling=SamplingOptions(seed=seed), **fields,
        )  # fmt: skip
        handle = engine.submit(request)
        got: list[SequenceDelta] = []
        async with asyncio.timeout(10):
            async for step in handle:
                got += step
                pending = TOK.decode(ids(got))[len(text(got)) :]
                if pending.startswith(held) or handle.finished:
                    break
        if handle.finished:
            continue  # this seed never held such text
        handle.abort()
        last = await anext(aiter(handle))
        assert [d.finish_reason for d in last] == ["cancelled"]
        assert last[0].text == pending and text(got + last) == TOK.decode(ids(got))
        return
    pytest.fail("no seed held the text in question")


async def test_abort_frees_the_slot_and_ends_with_cancelled():
    engine = SimulatedEngine(SimulatorConfig(itl_s=0.001))
    handle = engine.submit(
        GenerationRequest(
            "r", (1,), max_tokens=1000, sampling=SamplingOptions(n=2), ignore_eos=True
        )
    )
    steps = aiter(handle)
    await anext(steps)
    assert engine.in_flight() == 1 and not handle.finished
    handle.abort()
    handle.abort()  # idempotent
    assert engine.in_flight() == 0 and handle.finished
    last = await anext(steps)
    assert {d.finish_reason for d in last} == {"cancelled"}
    with pytest.raises(StopAsyncIteration):
        await anext(steps)


async def test_close_aborts_everything_live():
    engine = SimulatedEngine(SimulatorConfig(itl_s=0.01))
    handles = [engine.submit(GenerationRequest(str(i), (1,), max_tokens=100)) for i in range(5)]
    assert engine.in_flight() == 5
    await engine.close()
    assert engine.in_flight() == 0 and all(h.finished for h in handles)
    assert not engine.healthy


async def test_token_ids_outside_the_vocabulary_are_refused():
    engine = SimulatedEngine(SimulatorConfig())
    with pytest.raises(InvalidInput) as info:
        engine.submit(GenerationRequest("r", (1, 10**6), max_tokens=5))
    assert info.value.field_path == "token_ids.ids[1]"
    assert engine.in_flight() == 0


async def test_tokenize_chat_matches_rendered_template():
    engine = SimulatedEngine(SimulatorConfig())
    chat = await engine.tokenize(PromptInput(messages=(ChatMessage("user", "hi"),)))
    text = await engine.tokenize(PromptInput(text="<|user|>\nhi<|end|>\n<|assistant|>\n"))
    assert chat == text


def test_settings_read_environment_and_flags_win(monkeypatch):
    monkeypatch.setenv("TOKENWIRE_MAX_QUEUE", "7")
    monkeypatch.setenv("TOKENWIRE_SIM_ITL_MS", "3")
    settings = Settings(sim_itl_ms=9)
    assert settings.max_queue == 7 and settings.sim_itl_ms == 9


def test_settings_reject_inconsistent_values():
    with pytest.raises(ValueError, match=r"default.max.tokens"):
        Settings(default_max_tokens=100, max_tokens_limit=10)


async def test_at_full_speed_a_step_hands_over_what_the_consumer_groups():
    engine = SimulatedEngine(SimulatorConfig())  # itl 0: every token is ready at once
    sizes = []
    request = GenerationRequest("r", (1,), max_tokens=10, ignore_eos=True, stream_step=4)
    async for step in engine.submit(request):
        sizes += [len(d.token_ids) for d in step]
    assert sizes == [4, 4, 2]
    # On a schedule, the schedule rules (a long one: a loaded machine never runs a token late).
    paced = SimulatedEngine(SimulatorConfig(itl_s=10.0))
    first = await anext(aiter(paced.submit(request)))
    assert len(first[0].token_ids) == 1


async def test_ready_steps_come_without_a_wait_but_the_loop_still_turns():
    # At full speed the steps are always due: the handle hands them over without
    # suspending (like a real engine's non-empty result queue), yet a consumer that
    # never waits itself still lets other tasks run every few steps.
    engine = SimulatedEngine(SimulatorConfig())
    handle = engine.submit(
        GenerationRequest("r", (1,), max_tokens=2000, ignore_eos=True, stream_step=1)
    )
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    other = asyncio.create_task(ticker())
    await asyncio.sleep(0)
    steps = 0
    longest = run = 0
    last = ticks
    async for _ in handle:
        steps += 1
        run = run + 1 if ticks == last else 1
        longest = max(longest, run)
        last = ticks
    other.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await other
    assert steps == 2000
    assert 2 <= longest <= 17  # steps in a row without the loop turning
    assert ticks >= steps // 17
