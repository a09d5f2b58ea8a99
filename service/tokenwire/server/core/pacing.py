"""Pacing: fewer, larger messages when the event loop falls behind.

Both doors, every stream and the gRPC server's intake of new calls share one
event loop. When streams keep it busy, each turn of the loop gets long, and
grpc.aio takes in one new call per turn or two (its accept loop keeps a single
call request outstanding): under overload, running streams kept their full
rate while new ones waited seconds to start (docs/performance.md, "Saturation").

An engine on its own clock (TensorRT-LLM, the simulator with an inter-token
latency) goes on producing meanwhile, so the tokens are there either way. When
the loop runs late, an ungrouped stream (``streaming_step`` 0 or 1) whose
engine ran ahead of it (its last step carried more than one token for a
sequence) pauses before it reads the engine again, unless it is done, and
sends what piled up as one message: the same tokens at a fraction of the
per-message cost, which gives the loop back its slack. A stream
whose engine hands over one token per read gains nothing from waiting and is
never paused; nor is any stream while the loop keeps up.

The pause is set by a feedback loop: a monitor measures how late its own timer
fires, every ``period_s`` while streams are live, and moves the pause by
``GAIN`` times the lateness beyond ``target_lag_s``, within 0 and ``max_pause_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

GAIN = 0.5  # seconds of pause per second of lateness beyond the target, per period
IDLE_PERIOD_S = 0.1  # how often the monitor looks while no stream is live


class Pacer:
    def __init__(
        self,
        busy: Callable[[], bool],
        max_pause_s: float = 0.05,
        target_lag_s: float = 0.003,
        period_s: float = 0.005,
    ) -> None:
        self.pause_s = 0.0  # what a stream whose engine ran ahead waits before its next read
        self.lag_s = 0.0  # the monitor's last measured lateness
        self._busy = busy
        self._max = max_pause_s
        self._target = target_lag_s
        self._period = period_s
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._max > 0 and self._task is None:
            self._task = asyncio.create_task(self._run(), name="tokenwire-pacer")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.pause_s = self.lag_s = 0.0  # streams still unwinding pause no more

    def update(self, late_s: float) -> None:
        """One measurement: the monitor's timer fired ``late_s`` after it was due."""
        self.lag_s = late_s
        pause = self.pause_s + GAIN * (late_s - self._target)
        self.pause_s = min(max(pause, 0.0), self._max)

    async def _run(self) -> None:
        clock = time.perf_counter
        while True:
            if not self._busy():
                self.pause_s = self.lag_s = 0.0
                await asyncio.sleep(IDLE_PERIOD_S)
                continue
            start = clock()
            await asyncio.sleep(self._period)
            self.update(clock() - start - self._period)
