"""Admission's bookkeeping, without a server."""

from __future__ import annotations

import asyncio

import pytest

from tokenwire.server.core.admission import Admission
from tokenwire.server.core.errors import DeadlineTooShort, Overloaded

from ..helpers import async_wait_for


async def test_slots_then_queue_then_refusal():
    admission = Admission(slots=2, max_queue=1)
    assert await admission.acquire(None) == 0.0
    assert await admission.acquire(None) == 0.0
    waiter = asyncio.create_task(admission.acquire(None))
    await async_wait_for(lambda: admission.queue_depth == 1)
    assert admission.queue_depth == 1
    with pytest.raises(Overloaded):
        await admission.acquire(None)
    admission.release()
    assert await asyncio.wait_for(waiter, 1) >= 0.0
    assert admission.busy == 2 and admission.queue_depth == 0
    admission.release()
    admission.release()
    assert admission.busy == 0


async def test_a_cancelled_waiter_does_not_lose_the_slot():
    admission = Admission(slots=1, max_queue=5)
    await admission.acquire(None)
    first = asyncio.create_task(admission.acquire(None))
    second = asyncio.create_task(admission.acquire(None))
    await async_wait_for(lambda: admission.queue_depth == 2)
    admission.release()  # hands the slot to `first`...
    first.cancel()  # ...which leaves before it runs: the slot must go on to `second`
    with pytest.raises(asyncio.CancelledError):
        await first
    await asyncio.wait_for(second, 1)
    assert admission.busy == 1 and admission.queue_depth == 0
    admission.release()
    assert admission.busy == 0


async def test_deadline_checks_start_after_warm_up():
    admission = Admission(slots=1, max_queue=5)
    await admission.acquire(0.001)  # cold: no estimate, no refusal
    admission.release()
    for _ in range(8):
        admission.observe(hold_s=0.5, ttft_s=0.2)
    with pytest.raises(DeadlineTooShort):
        await admission.acquire(0.1)
    await admission.acquire(0.3)
    with pytest.raises(DeadlineTooShort):  # must wait ~0.5 s for the slot, then 0.2 s
        await admission.acquire(0.6)
    admission.release()
    assert admission.expected_wait(3) == pytest.approx(2.0)


async def test_a_waiter_cancelled_before_the_slot_is_handed_on():
    admission = Admission(slots=1, max_queue=5)
    await admission.acquire(None)
    first = asyncio.create_task(admission.acquire(None))
    second = asyncio.create_task(admission.acquire(None))
    await async_wait_for(lambda: admission.queue_depth == 2)
    first.cancel()  # the client leaves first...
    admission.release()  # ...then the slot frees: it must skip `first` and reach `second`
    with pytest.raises(asyncio.CancelledError):  # a cancel, not an error
        await first
    await asyncio.wait_for(second, 1)
    assert admission.busy == 1 and admission.queue_depth == 0
    admission.release()
    assert admission.busy == 0


async def test_higher_priorities_get_slots_first_and_fifo_within_one():
    admission = Admission(slots=1, max_queue=10)
    await admission.acquire(None)
    order: list[str] = []

    async def wait(name: str, priority: float) -> None:
        await admission.acquire(None, priority)
        order.append(name)

    tasks = []
    for name, priority in [("low-1", 0.1), ("low-2", 0.1), ("mid", 0.5), ("high", 0.9)]:
        tasks.append(asyncio.create_task(wait(name, priority)))
        await async_wait_for(lambda: admission.queue_depth == len(tasks))
    for served in range(1, len(tasks) + 1):
        admission.release()  # one slot frees at a time; the next in line takes it
        await async_wait_for(lambda: len(order) == served)  # noqa: B023 - awaited at once
    assert order == ["high", "mid", "low-1", "low-2"]
    admission.release()
    assert admission.busy == 0 and admission.queue_depth == 0


async def test_a_full_queue_makes_room_for_a_higher_priority():
    admission = Admission(slots=1, max_queue=2)
    await admission.acquire(None)
    older = asyncio.create_task(admission.acquire(None, 0.1))
    await async_wait_for(lambda: admission.queue_depth == 1)
    newer = asyncio.create_task(admission.acquire(None, 0.1))
    await async_wait_for(lambda: admission.queue_depth == 2)
    with pytest.raises(Overloaded):  # as low as the queue's last: refused
        await admission.acquire(None, 0.1)
    high = asyncio.create_task(admission.acquire(None, 0.9))
    with pytest.raises(Overloaded):  # the newest of the lowest makes room
        await asyncio.wait_for(newer, 1)
    assert admission.queue_depth == 2
    admission.release()
    assert await asyncio.wait_for(high, 1) >= 0.0  # the high one goes first...
    assert not older.done()
    admission.release()
    assert await asyncio.wait_for(older, 1) >= 0.0  # ...the older low one next
    admission.release()
    assert admission.busy == 0 and admission.queue_depth == 0
