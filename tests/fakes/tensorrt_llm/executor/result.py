"""``GenerationResult``, ``CompletionOutput`` and ``IterationResult`` (executor/result.py
upstream).

docs/tensorrt_llm.md, "Results", "Abort", "Stop strings and stop token ids" and
"Load statistics" say what this mirrors.

The executor puts raw responses on a result's queue (``aqueue``, an
``AsyncQueue``: docs/tensorrt_llm.md, "The response queue"); each ``__anext__``
takes one and applies it to the result, which it then returns: the same object
every time, with cumulative ``token_ids``/``text``/``logprobs`` per output.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from .. import _fake
from ..llmapi.utils import AsyncQueue, _SyncQueue
from .utils import RequestError

if TYPE_CHECKING:
    from ..llmapi.tokenizer import TransformersTokenizer
    from ..sampling_params import SamplingParams
    from .executor import GenerationExecutor

FinishReason = Literal["stop", "length", "timeout", "cancelled"]


@dataclass(slots=True)
class Logprob:
    logprob: float
    rank: int | None = None


@dataclass(slots=True)
class CompletionOutput:
    index: int
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    cumulative_logprob: float | None = None
    logprobs: list[dict[int, Logprob]] | list[float] = field(default_factory=list)
    finish_reason: FinishReason | None = None
    stop_reason: int | str | None = None

    @property
    def length(self) -> int:
        return len(self.token_ids)


@dataclass(frozen=True, slots=True)
class Response:
    """What the runtime sends for one sequence of one request in one iteration."""

    index: int = 0
    token_ids: tuple[int, ...] = ()
    logprobs: tuple[dict[int, Logprob] | float, ...] = ()
    # Runtime finish reasons: "end_id", "stop_words" (a stop token id), "length", "cancelled".
    finish: str | None = None
    is_final: bool = False
    cached_tokens: int = 0
    error: str | None = None  # a per-request ErrorResponse
    fatal: BaseException | None = None  # the executor died


def _loop_queues() -> tuple[AsyncQueue | None, _SyncQueue | None]:
    """A result's ``aqueue`` and ``queue``: an async queue only if a loop runs now, bound
    to it (upstream's sync fallback, a queue.Queue, is left out: nothing here reads it)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return None, None
    queue = AsyncQueue()
    return queue, queue.sync_q


class GenerationResult:
    def __init__(
        self,
        request_id: int,
        prompt_token_ids: list[int],
        sampling_params: SamplingParams,
        executor: GenerationExecutor,
        tokenizer: TransformersTokenizer | None,
    ) -> None:
        self.request_id = request_id
        self.prompt_token_ids = prompt_token_ids
        self.sampling_params = sampling_params
        self.tokenizer = tokenizer
        self.cached_tokens = 0
        self._executor = executor
        self._done = False
        self._aborted = False
        best_of = sampling_params.best_of or sampling_params.n
        self._outputs = [CompletionOutput(i) for i in range(best_of)]
        self.aqueue, self.queue = _loop_queues()
        self.abort_calls = 0  # test record: how often abort() was called
        self.waiting = False  # test record: an __anext__ is waiting for a response
        _fake.results.append(self)

    @property
    def outputs(self) -> list[CompletionOutput]:
        return self._outputs[: self.sampling_params.n]

    @property
    def finished(self) -> bool:
        return self._done

    def abort(self) -> None:
        """Ask the executor to cancel; returns at once. Aborting twice only warns there."""
        self.abort_calls += 1
        self._executor.abort_request(self.request_id)
        self._aborted = True

    def aborted(self) -> bool:
        return self._aborted

    def __aiter__(self) -> GenerationResult:
        return self

    async def __anext__(self) -> GenerationResult:
        if self._done:
            raise StopAsyncIteration
        assert self.aqueue is not None, (
            "The asyncio event loop was not present during initialization, "
            "so async operations are not available."
        )
        self.waiting = True
        try:
            # AsyncQueue.get takes the item only once awake: a cancelled wait loses nothing;
            # with an item queued it returns without suspending.
            response = await self.aqueue.get()
        finally:
            self.waiting = False
        self._handle_response(response)
        return self

    async def aresult(self) -> GenerationResult:
        while not self._done:
            await self.__anext__()
        return self

    def _handle_response(self, response: Response) -> None:
        if response.error is not None:
            self._done = True
            raise RequestError(response.error)
        if response.fatal is not None:
            self._done = True
            raise response.fatal
        self._done = response.is_final
        self.cached_tokens = max(self.cached_tokens, response.cached_tokens)
        if response.finish == "cancelled":
            for out in self._outputs:  # 'cancelled' on all outputs
                out.finish_reason = "cancelled"
            return
        out = self._outputs[response.index]
        out.token_ids.extend(response.token_ids)
        if response.logprobs:
            out.logprobs = [*out.logprobs, *response.logprobs]
            sampled = [
                v if isinstance(v, float) else v[t].logprob
                for t, v in zip(response.token_ids, response.logprobs, strict=True)
            ]
            out.cumulative_logprob = (out.cumulative_logprob or 0.0) + sum(sampled)
        params = self.sampling_params
        if response.finish == "end_id":
            out.finish_reason = "stop"
        elif response.finish == "length":
            out.finish_reason = "length"
        elif response.finish == "stop_words":
            out.finish_reason = "stop"
            out.stop_reason = out.token_ids[-1]
            if not params.include_stop_str_in_output:  # runtime matches trim token_ids too
                out.token_ids = out.token_ids[:-1]
        if params.detokenize and self.tokenizer is not None:
            out.text = self.tokenizer.decode(
                out.token_ids, skip_special_tokens=params.skip_special_tokens
            )
            if _fake.hold_incomplete_tail:
                out.text = out.text.rstrip("\ufffd")
            self._match_stop_strings(out)

    def _match_stop_strings(self, out: CompletionOutput) -> None:
        """Stop strings are matched in Python on the decoded text."""
        stop = self.sampling_params.stop
        if not stop or out.finish_reason is not None:
            return
        found = [(out.text.find(s), s) for s in ([stop] if isinstance(stop, str) else stop)]
        hits = [(at, s) for at, s in found if at >= 0]
        if not hits:
            return
        at, s = min(hits)
        keep = at + len(s) if self.sampling_params.include_stop_str_in_output else at
        out.text = out.text[:keep]
        out.finish_reason = "stop"
        out.stop_reason = s
        # As TensorRT-LLM does: abort the request and call the whole result done,
        # even when n > 1 and the other outputs had not finished.
        self.abort()
        self._done = True


class IterationResult:
    """The LLM's one stats iterator: what ``get_stats_async`` returns once a request
    was submitted (docs/tensorrt_llm.md, "Load statistics").

    The runtime ``put_nowait``s JSON strings on its queue; ``__anext__`` parses one.
    A wait with a timeout > 0 that runs out marks it done, and done it stays (no
    more records) until ``mark_undone``, which the next submit calls; with a timeout
    <= 0 an empty queue raises ``asyncio.QueueEmpty`` and leaves it as it was.
    """

    def __init__(self) -> None:
        self._done = False
        self._timeout: float | None = 2
        self.aqueue, self.queue = _loop_queues()

    def set_timeout(self, timeout: float | None) -> None:
        self._timeout = timeout

    def mark_undone(self) -> None:
        self._done = False

    def __aiter__(self) -> IterationResult:
        return self

    async def __anext__(self) -> dict[str, object]:
        if self._done:
            raise StopAsyncIteration
        assert self.aqueue is not None, (
            "The asyncio event loop was not present during initialization, "
            "so async operations are not available."
        )
        try:
            data = await self.aqueue.get(timeout=self._timeout)
        except TimeoutError:
            self._done = True
            raise StopAsyncIteration from None
        record: dict[str, object] = json.loads(data)
        return record
