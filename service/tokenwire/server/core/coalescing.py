"""From engine steps to flushes: what each door sends as one message or event.

Each message has a fixed cost that dwarfs its payload (a gRPC message costs
about the same with one token or four), so grouping tokens is the big lever on
throughput. The caller picks the trade-off per request with ``StreamOptions``:

- ``streaming_step`` 0 or 1: one flush per sequence per engine step, at once.
  A step carries every token the engine had ready, so a consumer that fell
  behind catches up in fewer, larger messages; while the event loop itself
  runs late, such a stream also pauses before its next read (``pacing.py``).
- ``streaming_step`` N > 1: hold a sequence's tokens until N are ready, or the
  sequence ends, or the oldest held token has waited ``max_batch_delay_ms``.

A flush is door-neutral: the sequence's index, its deltas, its token count so
far, and whether it is the call's last. Each door renders it (a protobuf
message, an SSE event, an NDJSON line).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence

from ..engines.base import GenerationHandle, SequenceDelta
from .pacing import Pacer
from .progress import Progress
from .requests import StreamPlan
from .watchdog import Watched


class Flush:
    """One message's worth of one sequence."""

    __slots__ = ("completion_tokens", "deltas", "index", "last")

    def __init__(
        self, index: int, deltas: Sequence[SequenceDelta], completion_tokens: int, last: bool
    ) -> None:
        self.index = index
        self.deltas = deltas
        self.completion_tokens = completion_tokens  # this sequence's tokens so far
        self.last = last  # the call's very last flush: usage and timing go with it

    def tokens(self) -> int:
        deltas = self.deltas
        if len(deltas) == 1:
            return len(deltas[0].token_ids)
        return sum(len(d.token_ids) for d in deltas)


async def steps(
    handle: GenerationHandle, progress: Progress, watched: Watched
) -> AsyncGenerator[Sequence[SequenceDelta], None]:
    """The engine's steps, counted, with the engine-stall clock running while we wait."""
    it = handle.__aiter__()
    while True:
        watched.engine_since = time.monotonic()
        try:
            step = await anext(it)
        except StopAsyncIteration:
            watched.engine_since = None
            return
        watched.engine_since = None
        progress.update(step)
        yield step


def flushes(
    handle: GenerationHandle,
    plan: StreamPlan,
    progress: Progress,
    watched: Watched,
    tokens_per_message: Callable[[float], None] = lambda _: None,
    pacer: Pacer | None = None,
) -> AsyncGenerator[Flush, None]:
    """The flushes of ``handle``'s stream, grouped as ``plan`` says; each one's token
    count goes to ``tokens_per_message`` (the metrics' histogram). ``pacer``: pause
    ungrouped streams whose engine runs ahead while the event loop is late."""
    if plan.step > 1 and plan.max_delay_s != 0:
        return _grouped(handle, plan, progress, watched, tokens_per_message)
    # max_batch_delay_ms 0 asks for every token at once: no pacing either.
    bound = math.inf if plan.max_delay_s is None else plan.max_delay_s
    return _each_step(handle, progress, watched, tokens_per_message, pacer, bound)


async def _each_step(
    handle: GenerationHandle,
    progress: Progress,
    watched: Watched,
    tokens_per_message: Callable[[float], None],
    pacer: Pacer | None,
    max_pause_s: float,
) -> AsyncGenerator[Flush, None]:
    """A flush per sequence per engine step: the path of most streams, kept short,
    since it runs once per message. While the event loop runs late, a stream whose
    engine ran ahead pauses before its next read (``pacing.py``)."""
    it = handle.__aiter__()
    counts, update, clock = progress.counts, progress.update, time.monotonic
    ran_ahead = False  # the last step carried more than one token for a sequence
    while True:
        # Only with more to come: the call's end (status, [DONE], the slot) never waits.
        if ran_ahead and progress.remaining and pacer is not None and pacer.pause_s and max_pause_s:
            await asyncio.sleep(min(pacer.pause_s, max_pause_s))
        watched.engine_since = clock()
        try:
            step = await anext(it)
        except StopAsyncIteration:
            return
        watched.engine_since = None
        update(step)
        last = len(step) - 1 if progress.remaining == 0 else -1
        ran_ahead = False
        for i, d in enumerate(step):
            tokens = len(d.token_ids)
            ran_ahead = ran_ahead or tokens > 1
            tokens_per_message(tokens)
            yield Flush(d.index, (d,), counts[d.index], i == last)


async def _grouped(
    handle: GenerationHandle,
    plan: StreamPlan,
    progress: Progress,
    watched: Watched,
    tokens_per_message: Callable[[float], None],
) -> AsyncGenerator[Flush, None]:
    """Hold each sequence's tokens until ``plan.step`` are ready, it ends, or the
    oldest held token has waited ``plan.max_delay_s``."""
    loop = asyncio.get_running_loop()
    it = handle.__aiter__()
    pending: dict[int, list[SequenceDelta]] = {}
    held = [0] * len(progress.counts)  # tokens held per index
    oldest: float | None = None  # when the oldest held token arrived
    counts = progress.counts
    while True:
        out: list[Flush] = []
        if watched.engine_since is None:
            # Not after a delay bound's flush: the engine wait goes on.
            watched.engine_since = time.monotonic()
        try:
            if oldest is not None and plan.max_delay_s is not None:
                step = await _next_within(it, oldest + plan.max_delay_s - loop.time())
            else:
                step = await anext(it)
        except StopAsyncIteration:
            return
        except Exception:
            # The engine failed this request: what it handed over before that is
            # the client's, sent before the error.
            for index in sorted(pending):
                flush = Flush(index, pending.pop(index), counts[index], False)
                tokens_per_message(flush.tokens())
                yield flush
            raise
        if step is None:
            # The delay bound is up: send what every sequence holds.
            for index in sorted(pending):
                held[index] = 0
                out.append(Flush(index, pending.pop(index), counts[index], False))
            oldest = None
            for flush in out:
                tokens_per_message(flush.tokens())
                yield flush
            continue

        watched.engine_since = None
        progress.update(step)
        for d in step:
            pending.setdefault(d.index, []).append(d)
            held[d.index] += len(d.token_ids)
            if d.finish_reason is not None or held[d.index] >= plan.step:
                held[d.index] = 0
                out.append(Flush(d.index, pending.pop(d.index), counts[d.index], False))
        oldest = (oldest or loop.time()) if pending else None
        if progress.remaining == 0 and out:
            out[-1].last = True
        for flush in out:
            tokens_per_message(flush.tokens())
            yield flush


async def _next_within(
    steps: AsyncIterator[Sequence[SequenceDelta]], wait: float
) -> Sequence[SequenceDelta] | None:
    """The engine's next step, or None if it does not come within ``wait`` seconds.

    Only this wait is timed: a TimeoutError raised by the engine itself propagates.
    Engine handles lose nothing when a pending step is cancelled (see engines/base.py).
    """
    if wait <= 0:
        return None
    pending = anext(steps)
    try:
        async with asyncio.timeout(wait) as timer:
            return await pending
    except TimeoutError:
        if timer.expired():
            return None
        raise
