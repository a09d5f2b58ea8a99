"""Coalescing without a door: catching up after a consumer falls behind, errors kept apart,
pacing while the event loop is late."""

from __future__ import annotations

import asyncio
import time

import pytest

from tokenwire.server.core import coalescing
from tokenwire.server.core.pacing import Pacer
from tokenwire.server.core.progress import Progress
from tokenwire.server.core.requests import StreamPlan
from tokenwire.server.core.watchdog import Watched
from tokenwire.server.engines.base import FinishReason, GenerationRequest, SequenceDelta
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


class _Steps:
    """An engine that hands over ``tokens`` tokens a step, ``steps`` times; it counts
    how long its reader took between reads, on the event loop's clock."""

    cached_prompt_tokens = 0

    def __init__(self, tokens: int, steps: int) -> None:
        self.tokens, self.left = tokens, steps
        self.finished = False
        self.read_at: list[float] = []

    def __aiter__(self) -> _Steps:
        return self

    async def __anext__(self) -> list[SequenceDelta]:
        if self.left == 0:
            raise StopAsyncIteration
        self.read_at.append(asyncio.get_running_loop().time())
        self.left -= 1
        finish: FinishReason | None = "length" if self.left == 0 else None
        return [SequenceDelta(0, (7,) * self.tokens, "ab" * self.tokens, finish_reason=finish)]

    def abort(self) -> None:
        self.finished = True


def _pacer(pause_s: float) -> Pacer:
    pacer = Pacer(lambda: True)  # never started: the pause is what the test sets
    pacer.pause_s = pause_s
    return pacer


async def _drain(handle: _Steps, plan: StreamPlan, pacer: Pacer) -> int:
    flushes = coalescing.flushes(handle, plan, Progress(0.0, 1), Watched(None, "r"), pacer=pacer)
    return len([f async for f in flushes])


async def test_a_stream_whose_engine_ran_ahead_pauses_while_the_loop_is_late():
    handle = _Steps(tokens=3, steps=3)
    assert await _drain(handle, StreamPlan(1, None), _pacer(0.02)) == 3
    gaps = [b - a for a, b in zip(handle.read_at, handle.read_at[1:], strict=False)]
    # The loop's timers may fire a little early (uvloop rounds to milliseconds).
    assert min(gaps) >= 0.018, gaps


@pytest.mark.parametrize(
    ("tokens", "plan"),
    [
        (1, StreamPlan(1, None)),  # one token per read: waiting would gain nothing
        (3, StreamPlan(1, 0.0)),  # max_batch_delay_ms 0: every token at once
    ],
)
async def test_no_pause_for_one_token_a_read_nor_a_zero_delay_bound(
    tokens: int, plan: StreamPlan
) -> None:
    handle = _Steps(tokens, steps=5)
    # A 10 s pause, were it taken, would not finish within the bound.
    assert await asyncio.wait_for(_drain(handle, plan, _pacer(10.0)), 5.0) == 5


async def test_the_requests_delay_bound_caps_the_pause():
    handle = _Steps(tokens=3, steps=3)
    assert await asyncio.wait_for(_drain(handle, StreamPlan(1, 0.01), _pacer(10.0)), 5.0) == 3


def test_the_pause_follows_the_loops_lateness_within_its_bounds():
    pacer = Pacer(lambda: True, max_pause_s=0.05, target_lag_s=0.003)
    pacer.update(0.023)  # 20 ms beyond the target: half of it
    assert pacer.pause_s == pytest.approx(0.010)
    for _ in range(20):
        pacer.update(0.5)
    assert pacer.pause_s == 0.05  # never beyond the bound
    for _ in range(100):
        pacer.update(0.0)
    assert pacer.pause_s == 0.0  # and back to none once the loop keeps up


async def test_the_monitor_measures_a_blocked_loop_and_rests_while_idle():
    busy = True
    pacer = Pacer(lambda: busy, max_pause_s=0.05, target_lag_s=0.003, period_s=0.005)
    pacer.start()
    try:
        for _ in range(100):  # bounded: the monitor wakes every 5 ms
            await asyncio.sleep(0)
            time.sleep(0.03)  # noqa: ASYNC251 - the point: hold the loop, as a long turn does
            await asyncio.sleep(0.006)
            if pacer.pause_s > 0:
                break
        assert pacer.pause_s > 0  # a 30 ms turn is 27 ms beyond the target
        busy = False
        for _ in range(100):
            await asyncio.sleep(0.02)
            if pacer.pause_s == 0:
                break
        assert pacer.pause_s == 0 and pacer.lag_s == 0
    finally:
        await pacer.stop()


async def test_the_calls_end_never_waits_for_a_pause():
    handle = _Steps(tokens=3, steps=1)  # ran ahead, and done: nothing more to read
    assert await asyncio.wait_for(_drain(handle, StreamPlan(1, None), _pacer(10.0)), 5.0) == 1
