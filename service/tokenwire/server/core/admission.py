"""Admission: a fixed number of engine slots, a bounded FIFO queue in front of them.

    wait_s = await admission.acquire(time_remaining)   # may raise Overloaded / DeadlineTooShort
    try:
        ... run the request ...
    finally:
        admission.release()

A request that finds the queue full is refused at once with RESOURCE_EXHAUSTED and
a retry hint. A request whose deadline cannot cover its expected wait plus time
to first token (both learnt from recent requests) is refused at once with
DEADLINE_EXCEEDED, rather than queued to burn a GPU slot on an answer nobody will
read. Estimates start only after a few requests, so a cold server refuses nothing
on a guess.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque

from .errors import DeadlineTooShort, Overloaded

_WARM_UP = 8  # requests observed before estimates are trusted
_ALPHA = 0.2  # weight of the newest observation in the moving averages


class Admission:
    def __init__(self, slots: int, max_queue: int) -> None:
        self._slots = slots
        self._max_queue = max_queue
        self._busy = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
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

    async def acquire(self, time_remaining: float | None) -> float:
        """Take a slot, waiting in line if needed; returns the seconds spent waiting."""
        if self._busy < self._slots and not self._waiters:
            self._check_deadline(time_remaining, 0.0)
            self._busy += 1
            return 0.0
        position = len(self._waiters)
        if position >= self._max_queue:
            raise Overloaded(
                f"server busy: {self._busy} requests running and {position} waiting",
                retry_after_s=max(self.expected_wait(0), 0.1),
            )
        self._check_deadline(time_remaining, self.expected_wait(position))
        loop = asyncio.get_running_loop()
        started = loop.time()
        waiter: asyncio.Future[None] = loop.create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self._hand_on()  # the slot was passed to us as we left: pass it on
            elif waiter in self._waiters:  # else _hand_on already dropped it, cancelled
                self._waiters.remove(waiter)
            raise
        return loop.time() - started

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
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot changes hands; busy stays the same
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
