"""One TensorRT-LLM request behind the seam: deltas out of a mutated result, and abort().

A result yields itself, mutated: each output's ``token_ids``, ``text`` and
``logprobs`` are cumulative (docs/tensorrt_llm.md, "Results"). Each output index
keeps what has been sent, and a step sends what is new beyond it; TensorRT-LLM's
``*_diff`` helpers would repeat tokens when n > 1. Text goes out only once it
is settled (``confirmed_end``).

At an output's end (any end: its own, an abort, an error) the text still held
goes out too, as the tokenizer's decode renders it. TensorRT-LLM's default
detokenizer never releases the bytes of a last character that did not complete
(docs/tensorrt_llm.md, "Detokenization"), so the handle decodes the output's
last few ids to find them, and only then the whole output, once.

A step applies every response already queued on the result, not just one: a
fast GPU queues several between two reads of a lagging consumer, and one step
then carries all their tokens, as the other engines' steps do. TensorRT-LLM's
``AsyncQueue`` tells ``empty()``, and ``__anext__`` with an item queued returns
without suspending (docs/tensorrt_llm.md, "The response queue"), so the drain
costs no event-loop turn, and none at all when nothing is queued. It is bounded
(``_MAX_QUEUED_PER_STEP`` per sequence) so one step cannot grow without limit.

``abort()`` enqueues a cancellation and returns. A running request answers it
with a final 'cancelled' response; one still waiting for a batch slot may never
answer. So the handle never waits after ``abort()``, and until the first
response arrives it waits for that response and for ``abort()`` together.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any, Protocol

from . import _trtllm_params as trt
from .base import (
    EngineError,
    EngineUnavailable,
    GenerationRequest,
    RequestFailed,
    SequenceDelta,
    TokenLogprob,
)

log = logging.getLogger("tokenwire.server")

# Enough ids to hold a whole UTF-8 character (4 bytes) and what is left of one.
_TAIL_TOKENS = 4
# Most queued responses one step takes beyond the one it waited for, per sequence
# (the simulator's catch-up bound).
_MAX_QUEUED_PER_STEP = 64


class Owner(Protocol):
    """What a handle needs from its engine."""

    request_error: type[Exception]
    response_queue: type | None
    """TensorRT-LLM's ``AsyncQueue``; None where it is not found (nothing is drained)."""

    def token_strings(self, token_ids: Sequence[int]) -> list[str]: ...

    def decode(self, token_ids: Sequence[int], skip_special_tokens: bool) -> str | None:
        """The tokenizer's decode of ``token_ids``; None without a tokenizer."""
        ...

    def release(self, handle: TensorRTLLMHandle) -> None: ...

    def fail(self, error: BaseException) -> None: ...


class _Sent:
    """What one output index has been sent so far."""

    __slots__ = ("chars", "closed", "logprob", "tokens")

    def __init__(self) -> None:
        self.tokens = 0
        self.chars = 0
        self.logprob = 0.0
        self.closed = False


class TensorRTLLMHandle:
    """A class with ``__anext__``, not a generator: a cancelled ``__anext__`` loses nothing."""

    def __init__(self, owner: Owner, request: GenerationRequest, result: Any) -> None:
        self._owner = owner
        self._request = request
        self._result = result  # a tensorrt_llm RequestOutput
        self._sent = [_Sent() for _ in range(request.sampling.n)]
        self._open = request.sampling.n
        self._stops = tuple(s for s in request.stop if s)
        self._aborted = False
        self._answered = False  # a response came: the request is running, not queued
        self._ended = False  # the result stopped iterating
        self._abort_signal: asyncio.Future[None] | None = None
        self._failure: EngineError | None = None  # raised once the held text is out
        self._leftover: list[SequenceDelta] = []  # that held text
        queue = getattr(result, "aqueue", None)  # a Ray queue on the Ray path: not drained
        kind = owner.response_queue
        self._queue: Any = queue if kind is not None and isinstance(queue, kind) else None
        self._queued_bound = _MAX_QUEUED_PER_STEP * request.sampling.n

    @property
    def finished(self) -> bool:
        return self._open == 0 or self._aborted

    @property
    def cached_prompt_tokens(self) -> int:
        return int(getattr(self._result, "cached_tokens", 0) or 0)

    def __aiter__(self) -> TensorRTLLMHandle:
        return self

    async def __anext__(self) -> list[SequenceDelta]:
        while self._open:
            deltas = self._collect()
            if deltas:
                return deltas
            await self._step()
        if self._leftover:
            deltas, self._leftover = self._leftover, []
            return deltas
        if self._failure is not None:
            failure, self._failure = self._failure, None
            raise failure
        raise StopAsyncIteration

    def abort(self) -> None:
        if self.finished:
            return
        self._aborted = True
        if not self._result.finished:  # a request that just finished needs no abort
            try:
                self._result.abort()
            except Exception:  # the executor is gone already, and the request with it
                log.warning("TensorRT-LLM abort failed", exc_info=True)
        self._owner.release(self)
        if self._abort_signal is not None and not self._abort_signal.done():
            self._abort_signal.set_result(None)

    async def _step(self) -> None:
        """Wait for the next response, then take those queued behind it; the result
        applies each to itself."""
        try:
            if self._answered:
                more = await self._next_response()
            else:
                more = await self._first_response()
            if more:
                more = await self._take_queued()
        except self._owner.request_error as error:
            self._fail(RequestFailed(f"TensorRT-LLM failed the request: {error}"), error)
            return
        except Exception as error:  # anything else from the executor is fatal
            self._owner.fail(error)
            self._fail(EngineUnavailable(f"TensorRT-LLM failed: {error}"), error)
            return
        self._ended = self._ended or not more

    def _fail(self, failure: EngineError, cause: BaseException) -> None:
        """End every output: what each holds goes out first, then ``failure`` is raised."""
        failure.__cause__ = cause
        self._failure = failure
        outputs = self._result.outputs
        for index, sent in enumerate(self._sent):
            out = outputs[index]
            if not sent.closed:
                ids = tuple(out.token_ids or ())[sent.tokens :]
                text = self._whole_text(out, out.text or "")[sent.chars :]
                if ids or text:
                    self._leftover.append(SequenceDelta(index, ids, text))
        self._close()

    async def _next_response(self) -> bool:
        try:
            await self._result.__anext__()
        except StopAsyncIteration:
            return False
        self._answered = True
        return True

    async def _take_queued(self) -> bool:
        """Apply the responses already queued, without waiting; False once the result ends.

        With an item queued, ``__anext__`` pops it at once (``AsyncQueue.get`` waits
        only while the deque is empty), so this never suspends.
        """
        queue, result = self._queue, self._result
        for _ in range(self._queued_bound):
            if queue is None or queue.empty() or result.finished or self._aborted:
                break
            if not await self._next_response():
                return False
        return True

    async def _first_response(self) -> bool:
        loop = asyncio.get_running_loop()
        answer = loop.create_task(self._next_response())
        self._abort_signal = aborted = loop.create_future()
        try:
            await asyncio.wait((answer, aborted), return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._abort_signal = None
            answer.cancel()  # a no-op once done; else the queued response stays queued
            if answer.done() and not answer.cancelled():
                answer.exception()  # retrieved, even when this wait was cancelled
        return answer.result() if answer.done() else True

    def _collect(self) -> list[SequenceDelta]:
        done = self._ended or bool(self._result.finished)
        cut = self._aborted and not done  # nothing more will be read: cancelled
        outputs = self._result.outputs
        deltas = []
        for index, sent in enumerate(self._sent):
            if not sent.closed:
                delta = self._delta(index, sent, outputs[index], done or cut, cut)
                if delta is not None:
                    deltas.append(delta)
        return deltas

    def _delta(
        self, index: int, sent: _Sent, out: Any, done: bool, cut: bool
    ) -> SequenceDelta | None:
        request = self._request
        token_ids: Sequence[int] = out.token_ids or ()
        text: str = out.text or ""
        reason, match = out.finish_reason, out.stop_reason
        final = done or reason in trt.ENDED
        cut_at_stop = final and isinstance(match, str) and bool(match)
        if final and not cut_at_stop:
            text = self._whole_text(out, text)
        end = trt.confirmed_end(text, final, self._stops)
        if cut_at_stop and not request.include_stop_in_output:
            # Runtime stop-word matches trim token_ids; make sure the text lost the stop too.
            assert isinstance(match, str)
            end -= len(match) if text.endswith(match, 0, end) else 0
        if final and type(match) is int and (not token_ids or token_ids[-1] != match):
            # TensorRT-LLM trims a matched stop token id; tokenwire's contract keeps it
            # (it was generated, and usage counts it), as the other engines do.
            token_ids = [*token_ids, match]
        new_ids = token_ids[sent.tokens :]
        new_text = text[sent.chars : end]
        if not (new_ids or new_text or final):
            return None
        logprobs = self._logprobs(out, sent, token_ids) if request.logprobs and new_ids else ()
        sent.logprob += sum(lp.logprob for lp in logprobs)
        sent.tokens = max(sent.tokens, len(token_ids))
        sent.chars = max(sent.chars, end)
        finish = stop_match = None
        if final:
            at_length = len(token_ids) >= request.max_tokens
            finish, stop_match = trt.finish_reason(reason, match, cut=cut, at_length=at_length)
            sent.closed = True
            self._open -= 1
            if not self._open:
                self._owner.release(self)
        cumulative = None
        if request.logprobs:
            cumulative = out.cumulative_logprob
            cumulative = sent.logprob if cumulative is None else float(cumulative)
        return SequenceDelta(
            index=index,
            token_ids=tuple(new_ids),
            text=new_text,
            logprobs=logprobs,
            cumulative_logprob=cumulative,
            finish_reason=finish,
            stop_match=stop_match,
        )

    def _whole_text(self, out: Any, text: str) -> str:
        """An ended output's text, with the bytes TensorRT-LLM may still hold back.

        Unchanged when it already ends in U+FFFD (TensorRT-LLM flushed them) or
        the last few ids decode to a whole character (nothing is held); else the
        decode of all its ids, if that extends the text TensorRT-LLM made.
        """
        ids: Sequence[int] = out.token_ids or ()
        if not ids or text.endswith("\ufffd"):
            return text
        skip = self._request.skip_special_tokens
        tail = self._owner.decode(ids[-_TAIL_TOKENS:], skip)
        if not tail or not tail.endswith("\ufffd"):
            return text
        whole = self._owner.decode(ids, skip)
        return whole if whole is not None and whole.startswith(text) else text

    def _logprobs(
        self, out: Any, sent: _Sent, token_ids: Sequence[int]
    ) -> tuple[TokenLogprob, ...]:
        start, end = sent.tokens, len(token_ids)
        entries: Sequence[Any] = out.logprobs or ()
        if len(entries) >= end:  # cumulative, like token_ids
            window = entries[start:end]
        elif len(entries) == end - start:  # this step's only (a version that diffs them)
            window = entries
        else:
            return ()
        top_n = self._request.top_logprobs
        return trt.token_logprobs(token_ids[start:end], window, top_n, self._owner.token_strings)

    def _close(self) -> None:
        for sent in self._sent:
            sent.closed = True
        self._open = 0
        self._owner.release(self)
