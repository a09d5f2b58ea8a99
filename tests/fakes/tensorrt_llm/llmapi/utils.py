"""``AsyncQueue`` and its ``_SyncQueue`` face (llmapi/utils.py upstream).

docs/tensorrt_llm.md, "The response queue", says what this mirrors: a deque the
runtime appends to without waking anyone (``put_nowait``), an event set later by
``notify`` (``notify_many`` for a whole batch, scheduled on the loop), and a
``get`` that waits only while the deque is empty, or with ``timeout <= 0``
raises ``asyncio.QueueEmpty`` at once. ``empty()`` is the only size it tells.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Iterable
from typing import Any


class AsyncQueue:
    class EventLoopShutdownError(Exception):
        pass

    class MixedSyncAsyncAPIError(Exception):
        pass

    def __init__(self) -> None:
        self._q: collections.deque[Any] = collections.deque()
        self._event = asyncio.Event()
        self._tainted = False
        self._sync_q = _SyncQueue(self)

    @property
    def sync_q(self) -> _SyncQueue:
        return self._sync_q

    def full(self) -> bool:
        return len(self._q) == self._q.maxlen

    def empty(self) -> bool:
        return not self._q

    def put(self, item: Any) -> None:
        self._q.append(item)
        self._event.set()

    def put_nowait(self, item: Any) -> None:
        """Append without waking a waiter: ``notify`` does that, later."""
        self._q.append(item)

    def notify(self) -> None:
        if self._q:  # a late notify after a drain must not wake anyone
            self._event.set()

    async def get(self, timeout: float | None = None) -> Any:  # noqa: ASYNC109 (upstream API)
        if self._tainted:
            raise AsyncQueue.MixedSyncAsyncAPIError()
        if timeout is None:
            while not self._q:  # takes the item only once awake
                await self._event.wait()
        elif timeout > 0:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout
            while not self._q:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise TimeoutError()
                await asyncio.wait_for(self._event.wait(), timeout=remaining)
        elif not self._q:  # timeout <= 0: never waits
            raise asyncio.QueueEmpty()
        item = self._q.popleft()
        if not self._q:
            self._event.clear()
        return item


class _SyncQueue:
    """The runtime's side: ``put_nowait`` per response, then one ``notify_many``."""

    def __init__(self, queue: AsyncQueue, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._aq = queue
        self._loop = loop or asyncio.get_running_loop()

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def put_nowait(self, item: Any) -> None:
        self._aq.put_nowait(item)

    @staticmethod
    async def _notify_many(queues: Iterable[_SyncQueue]) -> None:
        for queue in queues:
            queue._aq.notify()

    @staticmethod
    def notify_many(loop: asyncio.AbstractEventLoop, queues: list[_SyncQueue]) -> None:
        """Wake the queues' readers, on their loop, some time after the puts."""
        if not loop.is_running():
            raise AsyncQueue.EventLoopShutdownError()
        asyncio.run_coroutine_threadsafe(_SyncQueue._notify_many(frozenset(queues)), loop)
