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
