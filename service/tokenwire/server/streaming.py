"""From engine steps to stream messages: step and delay coalescing.

Each gRPC message has a fixed cost that dwarfs its payload (about 14-19 us of
server CPU on grpc.aio, whatever the message holds), so grouping tokens is the
big lever on throughput: four tokens a message gave 3-4x the tokens per second
at almost the same message rate (docs/performance.md). The caller picks the
trade-off per request with ``StreamOptions``:

- ``streaming_step`` 0 or 1: one message per sequence per engine step, at once.
  A step carries every token the engine had ready, so a consumer that fell
  behind catches up in fewer, larger messages.
- ``streaming_step`` N > 1: hold a sequence's tokens until N are ready, or the
  sequence ends, or the oldest held token has waited ``max_batch_delay_ms``.

This module tracks progress (token counts, time to first token) for the
servicer's usage and timing, and nothing else: aborting is the servicer's job.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence

from tokenwire.v1 import generation_pb2 as pb

from . import convert
from .convert import StreamPlan
from .engines.base import GenerationHandle, SequenceDelta
from .watchdog import Watched


class Progress:
    """What a request has produced so far, for usage, timing and metrics.

    Times are ``time.perf_counter()`` readings: uvloop's ``loop.time()`` ticks in
    whole milliseconds, too coarse for latency figures.
    """

    __slots__ = (
        "abort_reason",
        "counts",
        "finishes",
        "first_token_at",
        "prompt_tokens",
        "queue_s",
        "remaining",
        "started",
    )

    def __init__(self, started: float, n: int) -> None:
        self.started = started
        self.prompt_tokens = 0
        self.queue_s = 0.0
        self.first_token_at: float | None = None
        self.counts = [0] * n
        self.finishes: list[str | None] = [None] * n
        self.remaining = n
        self.abort_reason: str | None = None

    @property
    def completion_tokens(self) -> int:
        return sum(self.counts)

    def update(self, deltas: Sequence[SequenceDelta]) -> None:
        counts = self.counts
        for d in deltas:
            if d.token_ids:
                counts[d.index] += len(d.token_ids)
                if self.first_token_at is None:
                    self.first_token_at = time.perf_counter()
            if d.finish_reason is not None:
                self.finishes[d.index] = d.finish_reason
                self.remaining -= 1


async def responses(
    handle: GenerationHandle,
    request_id: str,
    plan: StreamPlan,
    progress: Progress,
    finalize: Callable[[pb.GenerateResponse], None],
    watched: Watched,
) -> AsyncGenerator[pb.GenerateResponse, None]:
    """Stream messages for ``handle``; ``finalize`` decorates the very last one."""
    loop = asyncio.get_running_loop()
    steps = handle.__aiter__()
    hold = plan.step > 1 and plan.max_delay_s != 0
    pending: dict[int, list[SequenceDelta]] = {}
    held = [0] * len(progress.counts)  # tokens held per index
    oldest: float | None = None  # when the oldest held token arrived
    while True:
        out: list[pb.GenerateResponse] = []
        if watched.engine_since is None:
            watched.engine_since = time.monotonic()
        try:
            if oldest is not None and plan.max_delay_s is not None:
                step = await _next_within(steps, oldest + plan.max_delay_s - loop.time())
            else:
                step = await anext(steps)
        except StopAsyncIteration:
            return
        if step is None:
            # The delay bound is up: send what every sequence holds.
            for index in sorted(pending):
                out.append(_flush(request_id, index, pending, held, progress))
            oldest = None
            for msg in out:
                yield msg
            continue

        watched.engine_since = None
        progress.update(step)
        for d in step:
            if not hold:
                out.append(convert.response(request_id, d.index, (d,), progress.counts[d.index]))
                continue
            pending.setdefault(d.index, []).append(d)
            held[d.index] += len(d.token_ids)
            if d.finish_reason is not None or held[d.index] >= plan.step:
                out.append(_flush(request_id, d.index, pending, held, progress))
        if hold:
            oldest = (oldest or loop.time()) if pending else None
        if progress.remaining == 0 and out:
            finalize(out[-1])
        for msg in out:
            yield msg


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


def _flush(
    request_id: str,
    index: int,
    pending: dict[int, list[SequenceDelta]],
    held: list[int],
    progress: Progress,
) -> pb.GenerateResponse:
    deltas = pending.pop(index)
    held[index] = 0
    return convert.response(request_id, index, deltas, progress.counts[index])
