"""Coalescing without a door: catching up after a consumer falls behind, errors kept apart."""

from __future__ import annotations

import pytest

from tokenwire.server.core import coalescing
from tokenwire.server.core.progress import Progress
from tokenwire.server.core.requests import StreamPlan
from tokenwire.server.core.watchdog import Watched
from tokenwire.server.engines.base import GenerationRequest, SequenceDelta
from tokenwire.server.engines.simulated import SimulatedEngine, SimulatorConfig


async def test_a_consumer_that_fell_behind_catches_up_in_bounded_messages():
    engine = SimulatedEngine(SimulatorConfig(ttft_s=0.0, itl_s=0.001))
    handle = engine.submit(GenerationRequest("r", (1,), max_tokens=300, ignore_eos=True))
    # Pretend the reader was held up for 200 token intervals (flow control held
    # our writes): those tokens are overdue when it asks again.
    handle._next_due -= 0.2
    progress = Progress(0.0, 1)
    sizes = [
        sum(len(d.token_ids) for d in flush.deltas)
        async for flush in coalescing.flushes(
            handle, StreamPlan(1, None), progress, Watched(None, "r")
        )
    ]
    assert sum(sizes) == 300
    assert sizes[0] > 1  # the backlog went out in larger messages...
    assert max(sizes) <= 64  # ...each bounded
    assert len(sizes) < 300 - 150


class _FailingHandle:
    """An engine whose next step raises a TimeoutError of its own."""

    finished = False
    cached_prompt_tokens = 0

    def __aiter__(self) -> _FailingHandle:
        return self

    async def __anext__(self) -> list[SequenceDelta]:
        raise TimeoutError("the engine timed out")

    def abort(self) -> None:
        self.finished = True


async def test_an_engine_timeout_is_not_taken_for_the_delay_bound():
    progress = Progress(0.0, 1)
    messages = coalescing.flushes(
        _FailingHandle(), StreamPlan(4, 0.05), progress, Watched(None, "r")
    )
    with pytest.raises(TimeoutError, match="engine timed out"):
        async for _ in messages:
            pass


class _HandsOverThenFails(_FailingHandle):
    """Two tokens, then the engine fails this request."""

    def __init__(self) -> None:
        self.sent = 0

    async def __anext__(self) -> list[SequenceDelta]:
        if self.sent < 2:
            self.sent += 1
            return [SequenceDelta(0, (7,), "ab")]
        raise TimeoutError("the engine timed out")


async def test_tokens_held_for_a_step_go_out_before_an_engine_error():
    progress = Progress(0.0, 1)
    flushes = coalescing.flushes(
        _HandsOverThenFails(), StreamPlan(4, None), progress, Watched(None, "r")
    )
    texts = []
    with pytest.raises(TimeoutError, match="engine timed out"):
        async for flush in flushes:
            texts.append("".join(d.text for d in flush.deltas))
    assert texts == ["abab"]
