"""The one account of a request: token counts, finishes, timing, the abort reason.

Both doors read usage, timing and receipts from it; the lifecycle feeds the
metrics from it once, at the end.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from ..engines.base import SequenceDelta


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

    @property
    def ttft_s(self) -> float | None:
        first = self.first_token_at
        return None if first is None else first - self.started

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
