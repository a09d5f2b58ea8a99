"""Engines that misbehave on purpose, wrapped around the simulator, for fault tests."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Literal

from tokenwire.server.engines.base import GenerationRequest, RequestFailed, SequenceDelta
from tokenwire.server.engines.simulated import SimulatedEngine, SimulatorConfig

Fault = Literal["hang", "raise", "none"]


class FaultyEngine(SimulatedEngine):
    """The simulator, except that every request hangs or raises after ``after`` steps."""

    def __init__(self, fault: Fault, after: int = 3, config: SimulatorConfig | None = None) -> None:
        super().__init__(config or SimulatorConfig(itl_s=0.005))
        self.fault = fault
        self.after = after

    def submit(self, request: GenerationRequest) -> _FaultyHandle:  # type: ignore[override]
        return _FaultyHandle(self, super().submit(request))


class _FaultyHandle:
    def __init__(self, engine: FaultyEngine, inner: object) -> None:
        self._engine = engine
        self._inner = inner
        self._steps = 0
        self._failed = False

    @property
    def finished(self) -> bool:
        return self._failed or bool(self._inner.finished)  # type: ignore[attr-defined]

    @property
    def cached_prompt_tokens(self) -> int:
        return 0

    def __aiter__(self) -> _FaultyHandle:
        return self

    async def __anext__(self) -> Sequence[SequenceDelta]:
        self._steps += 1
        if self._steps > self._engine.after:
            if self._engine.fault == "raise":
                # As the real engines do: a failed request is over, its slot freed.
                self._inner.abort()  # type: ignore[attr-defined]
                self._failed = True
                raise RequestFailed("injected failure")
            if self._engine.fault == "hang":
                await asyncio.Event().wait()  # until cancelled
        return await self._inner.__anext__()  # type: ignore[attr-defined, no-any-return]

    def abort(self) -> None:
        self._inner.abort()  # type: ignore[attr-defined]
