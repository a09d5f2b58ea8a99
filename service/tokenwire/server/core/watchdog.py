"""Stall detection for live generations, from one periodic task per server.

A stream is stalled when its client has not taken a message for
``stall_timeout_s`` (flow control, HTTP/2's or TCP's, holds our write back: the
reader stopped reading), or when its engine request has produced nothing for
``engine_stall_timeout_s``. Either way the stream's task is cancelled with a
reason; ``core.generation`` then aborts the engine request and the door ends the
call.

The per-message cost is one clock read and two attribute writes; the scan runs
a few times per timeout, over live streams only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Literal

log = logging.getLogger("tokenwire.server")

Stall = Literal["reader", "engine"]


class Watched:
    """A live stream's clocks: when its pending write or engine wait began."""

    __slots__ = ("engine_since", "request_id", "stall", "task", "write_since")

    def __init__(self, task: asyncio.Task[object] | None, request_id: str) -> None:
        self.task = task
        self.request_id = request_id
        self.write_since: float | None = None
        self.engine_since: float | None = None
        self.stall: Stall | None = None


class Watchdog:
    def __init__(self, stall_timeout_s: float, engine_stall_timeout_s: float) -> None:
        self._reader_timeout = stall_timeout_s
        self._engine_timeout = engine_stall_timeout_s
        self._live: set[Watched] = set()
        self._task: asyncio.Task[None] | None = None

    def watch(self, request_id: str) -> Watched:
        watched = Watched(asyncio.current_task(), request_id)
        self._live.add(watched)
        return watched

    def forget(self, watched: Watched) -> None:
        self._live.discard(watched)

    def start(self) -> None:
        timeouts = [t for t in (self._reader_timeout, self._engine_timeout) if t > 0]
        if timeouts:
            period = min(max(min(timeouts) / 4, 0.01), 1.0)
            self._task = asyncio.create_task(self._run(period), name="tokenwire-watchdog")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self, period: float) -> None:
        while True:
            await asyncio.sleep(period)
            self.scan(time.monotonic())

    def scan(self, now: float) -> None:
        for watched in list(self._live):
            if watched.stall is not None or watched.task is None:
                continue
            if self._expired(watched.write_since, self._reader_timeout, now):
                watched.stall = "reader"
            elif self._expired(watched.engine_since, self._engine_timeout, now):
                watched.stall = "engine"
            else:
                continue
            log.warning(
                "stream stalled (%s): aborting it",
                watched.stall,
                extra={"request_id": watched.request_id},
            )
            watched.task.cancel()

    @staticmethod
    def _expired(since: float | None, timeout: float, now: float) -> bool:
        return since is not None and timeout > 0 and now - since > timeout
