"""A generation handle whose deltas carry tool calls instead of their text.

    handle = ParsedCalls(engine_handle, plan.format, plan.names, n)
    async for step in handle:          # the same steps, the text split in two:
        delta.text                     #   what is not a call (the answer's content)
        delta.tool_calls               #   ToolCallDelta: id and name, then arguments

Both doors and ``Complete`` read a request with tools through this one wrapper, so
they agree on every call. A sequence that made a whole call and ended at its
end-of-sequence token finishes ``tool_calls``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

from ..engines.base import GenerationHandle, SequenceDelta
from .toolcalls import ToolFormat
from .toolparse import CallParser


class ParsedCalls:
    """Wraps an engine's handle: each sequence's text through its ``CallParser``."""

    __slots__ = ("_inner", "_it", "_parsers")

    def __init__(
        self, inner: GenerationHandle, fmt: ToolFormat, names: frozenset[str], n: int
    ) -> None:
        self._inner = inner
        self._it: AsyncIterator[Sequence[SequenceDelta]] | None = None
        self._parsers = [CallParser(fmt, names) for _ in range(n)]

    @property
    def finished(self) -> bool:
        return self._inner.finished

    @property
    def cached_prompt_tokens(self) -> int:
        return self._inner.cached_prompt_tokens

    def abort(self) -> None:
        self._inner.abort()

    def __aiter__(self) -> ParsedCalls:
        return self

    async def __anext__(self) -> list[SequenceDelta]:
        if self._it is None:
            self._it = self._inner.__aiter__()
        step = await anext(self._it)  # a cancel here loses nothing: nothing was parsed yet
        return [self._parse(d) for d in step]

    def _parse(self, d: SequenceDelta) -> SequenceDelta:
        parser = self._parsers[d.index]
        text, calls = parser.push(d.text)
        finish = d.finish_reason
        if finish is not None:
            more, last = parser.finish()
            text, calls = text + more, calls + last
            if finish == "stop" and parser.complete:
                finish = "tool_calls"
        return SequenceDelta(
            d.index,
            d.token_ids,
            text,
            d.logprobs,
            d.cumulative_logprob,
            finish,
            d.stop_match,
            calls,
        )
