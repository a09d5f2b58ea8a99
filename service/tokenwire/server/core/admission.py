"""Admission: a fixed number of engine slots, a bounded priority queue in front of them.

    wait_s = await admission.acquire(time_remaining, priority)  # Overloaded, DeadlineTooShort
    try:
        ... run the request ...
    finally:
        admission.release()

Waiting requests get slots by priority (higher first), first come first served
within one priority: a flood of low-priority work delays a high-priority request
by one slot's turn at most. A request that finds the queue full is refused at
once with RESOURCE_EXHAUSTED and a retry hint, unless it outranks the queue's
last (lowest, newest) waiter, which is refused in its place. A request whose
deadline cannot cover its expected wait plus time to first token (both learnt
from recent requests) is refused at once with DEADLINE_EXCEEDED, rather than
queued to burn a GPU slot on an answer nobody will read. Estimates start only
after a few requests, so a cold server refuses nothing on a guess.
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import math

from .errors import DeadlineTooShort, Overloaded

_WARM_UP = 8  # requests observed before estimates are trusted
_ALPHA = 0.2  # weight of the newest observation in the moving averages


class _Waiter:
    """A queued request: ordered by priority (higher first), then by arrival."""

    __slots__ = ("future", "key")

    def __init__(self, priority: float, arrival: int, future: asyncio.Future[None]) -> None:
        self.key = (-priority, arrival)
        self.future = future

    def __lt__(self, other: _Waiter) -> bool:
        return self.key < other.key


class Admission:
    def __init__(self, slots: int, max_queue: int) -> None:
        self._slots = slots
        self._max_queue = max_queue
        self._busy = 0
        self._waiters: list[_Waiter] = []  # sorted: the next to get a slot first
        self._arrivals = itertools.count()
        self._observed = 0
        self._hold_s = 0.0  # average time a request holds a slot
        self._ttft_s = 0.0  # average time from slot to first token

    @property
    def queue_depth(self) -> int:
        return len(self._waiters)

    @property
    def busy(self) -> int:
        return self._busy

    def expected_wait(self, position: int) -> float:
        """Seconds until a request at ``position`` in the queue (0 = next) gets a slot."""
        if self._observed < _WARM_UP:
            return 0.0
        return math.ceil((position + 1) / self._slots) * self._hold_s

    async def acquire(self, time_remaining: float | None, priority: float = 0.5) -> float:
        """Take a slot, waiting in line by ``priority`` if needed; returns the seconds
        spent waiting."""
        if self._busy < self._slots and not self._waiters:
            self._check_deadline(time_remaining, 0.0)
            self._busy += 1
            return 0.0
        loop = asyncio.get_running_loop()
        waiter = _Waiter(priority, next(self._arrivals), loop.create_future())
        position = bisect.bisect(self._waiters, waiter)  # requests ahead of it
        full = len(self._waiters) >= self._max_queue
        if full and (not self._waiters or not waiter < self._waiters[-1]):
            raise self._overloaded()
        self._check_deadline(time_remaining, self.expected_wait(position))
        if full:
            # Outranked: the last waiter makes room, refused as it would have been.
            last = self._waiters.pop()
            last.future.set_exception(self._overloaded())
        started = loop.time()
        self._waiters.insert(position, waiter)  # ahead of the one that made room, if any
        future = waiter.future
        try:
            await future
        except BaseException:
            if future.done() and not future.cancelled() and future.exception() is None:
                self._hand_on()  # the slot was passed to us as we left: pass it on
            elif waiter in self._waiters:  # else it was handed on or refused already
                self._waiters.remove(waiter)
            raise
        return loop.time() - started

    def _overloaded(self) -> Overloaded:
        return Overloaded(
            f"server busy: {self._busy} requests running and {len(self._waiters)} waiting",
            retry_after_s=max(self.expected_wait(0), 0.1),
        )

    def release(self) -> None:
        self._hand_on()

    def observe(self, hold_s: float, ttft_s: float | None) -> None:
        """Learn from a finished request: how long it held its slot, how soon it spoke."""
        self._observed += 1
        first = self._observed == 1
        self._hold_s = hold_s if first else (1 - _ALPHA) * self._hold_s + _ALPHA * hold_s
        if ttft_s is not None:
            self._ttft_s = ttft_s if first else (1 - _ALPHA) * self._ttft_s + _ALPHA * ttft_s

    def _hand_on(self) -> None:
        """A slot is free: give it to the first live waiter, else mark it idle."""
        while self._waiters:
            future = self._waiters.pop(0).future
            if not future.done():
                future.set_result(None)  # the slot changes hands; busy stays the same
                return
        self._busy -= 1

    def _check_deadline(self, time_remaining: float | None, wait_s: float) -> None:
        if time_remaining is None or self._observed < _WARM_UP:
            return
        needed = wait_s + self._ttft_s
        if time_remaining < needed:
            raise DeadlineTooShort(
                f"deadline too short: {time_remaining * 1000:.0f} ms left, about "
                f"{needed * 1000:.0f} ms needed to queue and reach a first token"
            )
