"""The transformers engine's handles, and the jobs the worker thread sees.

The worker never touches a handle: it posts ``Event``s, which ``dispatch`` hands
to the handles on the event loop (through ``loop.call_soon_threadsafe``). A
handle keeps what arrived in a queue until its consumer reads it; ``abort()``
only sets flags, and the worker drops the job's sequences before its next step.

Each step also says what every sequence holds back after it (an incomplete
character, a possible start of a stop string). A handle that ends a sequence
itself, on ``abort()`` or an error, sends that text as the sequence's last, so
even then the text adds up to the decode of the ids it handed out.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

from .base import GenerationRequest, RequestFailed, SequenceDelta

if TYPE_CHECKING:
    from llguidance import LLMatcher


class Job:
    """A request as the worker sees it. The event loop sets ``aborted``; the worker reads it.

    ``matchers``: under structured output, one grammar matcher per sequence (made
    by ``submit``, so a grammar that cannot bind is refused before anything runs).
    """

    __slots__ = ("aborted", "handle", "matchers", "request", "stop_ids")

    def __init__(
        self,
        request: GenerationRequest,
        handle: TransformersHandle,
        matchers: tuple[LLMatcher, ...] = (),
    ) -> None:
        self.request = request
        self.handle = handle
        self.matchers = matchers
        self.stop_ids = frozenset(request.stop_token_ids)
        self.aborted = False


class Gained(NamedTuple):
    """What a job gained in one step: one delta per sequence that advanced, and
    the text each of them holds back after it (by position, "" for none)."""

    deltas: list[SequenceDelta]
    held: list[str]


Event = tuple[Job, Gained | str]
"""What a job gained in one step, or its error."""


def dispatch(events: list[Event]) -> None:
    """On the event loop: hand the worker's events to their handles."""
    for job, payload in events:
        if isinstance(payload, str):
            job.handle.fail(payload)
        else:
            job.handle.receive(payload)


class TransformersHandle:
    """A submitted request: its steps wait in a queue until read.

    A class with ``__anext__`` rather than an async generator, so a consumer may
    cancel a pending ``__anext__`` (a timeout) and call it again without losing
    anything. Each ``__anext__`` returns everything that arrived since the last,
    one delta per sequence, so a slow reader catches up in one step.
    """

    def __init__(
        self,
        request: GenerationRequest,
        release: Callable[[TransformersHandle], None],
        matchers: tuple[LLMatcher, ...] = (),
    ) -> None:
        self.job = Job(request, self, matchers)
        self._release = release  # the engine stops counting it in flight
        self._ready: deque[list[SequenceDelta]] = deque()
        self._running = set(range(request.sampling.n))  # not finished by the engine
        self._unread = set(range(request.sampling.n))  # finish not yet handed out
        self._waiter: asyncio.Future[None] | None = None
        self._aborted = False
        self._error: str | None = None
        # Text each sequence holds back: after the deltas read so far (``_held``), and
        # after those still queued (``_queued_held``, which an abort discards).
        self._held: dict[int, str] = {}
        self._queued_held: dict[int, str] = {}

    @property
    def finished(self) -> bool:
        return not self._running or self._aborted or self._error is not None

    @property
    def cached_prompt_tokens(self) -> int:
        return 0

    def __aiter__(self) -> TransformersHandle:
        return self

    async def __anext__(self) -> list[SequenceDelta]:
        while True:
            if self._aborted:
                cancelled = [
                    SequenceDelta(i, (), self._held.get(i, ""), finish_reason="cancelled")
                    for i in sorted(self._unread)
                ]
                self._unread.clear()
                if cancelled:
                    return cancelled
                raise StopAsyncIteration
            if self._ready:
                return self._take()
            if self._error is not None:
                # What the sequences held back goes out before the error does.
                held, self._held = self._held, {}
                flushed = [SequenceDelta(i, (), text) for i, text in sorted(held.items()) if text]
                if flushed:
                    return flushed
                raise RequestFailed(self._error)
            if not self._unread:
                raise StopAsyncIteration
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    def abort(self) -> None:
        if self.finished:
            return
        self._aborted = True
        self.job.aborted = True  # the worker drops its sequences before its next step
        self._release(self)
        self._wake()

    def receive(self, gained: Gained) -> None:
        if self._aborted:
            return
        deltas = gained.deltas
        self._ready.append(deltas)
        for d, held in zip(deltas, gained.held, strict=True):
            self._queued_held[d.index] = held
            if d.finish_reason is not None:
                self._running.discard(d.index)
        if not self._running:
            self._release(self)
        self._wake()

    def fail(self, message: str) -> None:
        if not self._aborted and self._error is None:
            self._error = message
            self._release(self)
            self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _take(self) -> list[SequenceDelta]:
        """Everything ready, merged into one delta per sequence."""
        merged: dict[int, list[SequenceDelta]] = {}
        while self._ready:
            for d in self._ready.popleft():
                merged.setdefault(d.index, []).append(d)
        out = [parts[0] if len(parts) == 1 else _join(parts) for parts in merged.values()]
        self._held.update(self._queued_held)
        self._queued_held.clear()
        for d in out:
            if d.finish_reason is not None:
                self._unread.discard(d.index)
                self._held.pop(d.index, None)
        return out


def _join(parts: list[SequenceDelta]) -> SequenceDelta:
    last = parts[-1]
    return SequenceDelta(
        index=last.index,
        token_ids=tuple(t for d in parts for t in d.token_ids),
        text="".join(d.text for d in parts),
        logprobs=tuple(lp for d in parts for lp in d.logprobs),
        cumulative_logprob=last.cumulative_logprob,
        finish_reason=last.finish_reason,
        stop_match=last.stop_match,
    )
