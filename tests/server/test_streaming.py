"""The streaming pipeline without gRPC: catching up after a consumer falls behind."""

from __future__ import annotations

import pytest

from tokenwire.server import streaming
from tokenwire.server.convert import StreamPlan
from tokenwire.server.engines.base import GenerationRequest, SequenceDelta
from tokenwire.server.engines.simulated import SimulatedEngine, SimulatorConfig
from tokenwire.server.watchdog import Watched


async def test_a_consumer_that_fell_behind_catches_up_in_bounded_messages():
    engine = SimulatedEngine(SimulatorConfig(ttft_s=0.0, itl_s=0.001))
    handle = engine.submit(GenerationRequest("r", (1,), max_tokens=300, ignore_eos=True))
    # Pretend the reader was held up for 200 token intervals (flow control held
    # our writes): those tokens are overdue when it asks again.
    handle._next_due -= 0.2
    progress = streaming.Progress(0.0, 1)
    sizes = [
        len(msg.token_ids)
        async for msg in streaming.responses(
            handle, "r", StreamPlan(1, None), progress, lambda _: None, Watched(None, "r")
        )
    ]
    assert sum(sizes) == 300
    assert sizes[0] > 1  # the backlog went out in larger messages...
    assert max(sizes) <= 64  # ...each bounded
    assert len(sizes) < 300 - 150


class _FailingHandle:
    """An engine whose next step raises a TimeoutError of its own."""

    finished = False
    cached_prompt_tokens = 0

    def __aiter__(self) -> _FailingHandle:
        return self

    async def __anext__(self) -> list[SequenceDelta]:
        raise TimeoutError("the engine timed out")

    def abort(self) -> None:
        self.finished = True


async def test_an_engine_timeout_is_not_taken_for_the_delay_bound():
    progress = streaming.Progress(0.0, 1)
    messages = streaming.responses(
        _FailingHandle(), "r", StreamPlan(4, 0.05), progress, lambda _: None, Watched(None, "r")
    )
    with pytest.raises(TimeoutError, match="engine timed out"):
        async for _ in messages:
            pass
