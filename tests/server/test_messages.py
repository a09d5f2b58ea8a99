"""Stream messages: the reused message object says exactly what a new one would."""

from __future__ import annotations

import time
from typing import cast

from tokenwire.server.core import messages
from tokenwire.server.core.coalescing import Flush
from tokenwire.server.core.progress import Progress
from tokenwire.server.engines.base import GenerationHandle, SequenceDelta, TokenLogprob


class _Handle:
    cached_prompt_tokens = 0


def test_a_reused_message_carries_nothing_over():
    progress = Progress(time.perf_counter(), 2)
    handle = cast(GenerationHandle, _Handle())  # only its cached_prompt_tokens is read
    flushes = [
        Flush(0, (SequenceDelta(0, (5,), " a"),), 1, False),
        Flush(1, (SequenceDelta(1, (6, 7), " b c", finish_reason="length"),), 2, False),
        Flush(0, (SequenceDelta(0, (8,), " d", (TokenLogprob(8, " d", -0.5),), -0.5),), 2, False),
        Flush(0, (SequenceDelta(0, (9,), " e", stop_match=" f"),), 3, False),
        Flush(0, (SequenceDelta(0, (10,), " g"), SequenceDelta(0, (11,), " h")), 5, False),
        Flush(0, (SequenceDelta(0, (12,), " i"),), 6, False),
        Flush(0, (SequenceDelta(0, (13,), " j", finish_reason="stop"),), 7, True),
    ]
    reused = messages.StreamMessages("r").of
    for flush in flushes:
        got = reused(flush, progress, handle)
        want = messages.stream_message("r", flush, progress, handle)
        got_bytes = got.SerializeToString(deterministic=True)
        if flush.last:  # timing reads the clock: compare the rest
            got.ClearField("timing")
            want.ClearField("timing")
            got_bytes = got.SerializeToString(deterministic=True)
        assert got_bytes == want.SerializeToString(deterministic=True), flush.deltas
