"""The simulated engine through the engine seam, without gRPC."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from tokenwire.server.engines.base import (
    ChatMessage,
    GenerationRequest,
    InvalidInput,
    PromptInput,
    SamplingOptions,
)
from tokenwire.server.engines.simtok import SimTokenizer
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


async def run(engine: SimulatedEngine, **fields: object) -> dict[int, list[object]]:
    fields.setdefault("max_tokens", 30)
    request = GenerationRequest(request_id="r", prompt_token_ids=(1, 300), **fields)  # type: ignore[arg-type]
    out: dict[int, list[object]] = {}
    async for step in engine.submit(request):
        for delta in step:
            out.setdefault(delta.index, []).append(delta)
    return out


async def test_same_seed_same_text_other_seed_other_text():
    engine = SimulatedEngine(SimulatorConfig())
    texts = []
    for seed in (1, 1, 2):
        result = await run(engine, sampling=SamplingOptions(seed=seed), ignore_eos=True)
        texts.append("".join(d.text for d in result[0]))  # type: ignore[attr-defined]
    assert texts[0] == texts[1] != texts[2]
    assert engine.in_flight() == 0


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
    with pytest.raises(ValueError, match="default_max_tokens"):
        Settings(default_max_tokens=100, max_tokens_limit=10)


async def test_at_full_speed_a_step_hands_over_what_the_consumer_groups():
    engine = SimulatedEngine(SimulatorConfig())  # itl 0: every token is ready at once
    sizes = []
    request = GenerationRequest("r", (1,), max_tokens=10, ignore_eos=True, stream_step=4)
    async for step in engine.submit(request):
        sizes += [len(d.token_ids) for d in step]
    assert sizes == [4, 4, 2]
    paced = SimulatedEngine(SimulatorConfig(itl_s=0.001))  # on a schedule, the schedule rules
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
