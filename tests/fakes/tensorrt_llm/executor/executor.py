"""The runtime behind ``LLM``: in-flight batching on the event loop.

Stands in for executor/proxy.py, the worker and the model. Each iteration it
handles cancellations, admits waiting requests up to ``max_batch_size``, and
gives every running sequence one token, sent as one response per sequence.
The "model" writes words from tokenwire's simulated vocabulary and, often,
accented, CJK and emoji words spelt in byte tokens.

A request with a guide, on an LLM with a guided decoding backend, gets text its guide
allows (``guided.py``); on the PyTorch LLM without one the guide is ignored, and the
TensorRT one fails it.

With stats on, each iteration also makes an iteration-stats record (the C++
``IterationStats`` as JSON: docs/tensorrt_llm.md, "Load statistics"), kept in
a list bounded as the runtime bounds it, and a task hands the list over to the
LLM's ``IterationResult`` every ``_fake.stats_period_s``, as the stats thread
does. The runtime iterates only while it has requests, so idle it makes none.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
import zlib
from collections import deque
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from tokenwire.server.engines.simtok import EOS_ID, WORDS, SimTokenizer

from .. import _fake
from ..llmapi.utils import AsyncQueue, _SyncQueue
from .guided import NO_GUIDED_DECODER, GuidedDecoder, GuideError, has_guide
from .result import IterationResult, Logprob, Response
from .stats import iteration_record
from .utils import CppExecutorError

if TYPE_CHECKING:
    from ..llmapi.tokenizer import TransformersTokenizer
    from .guided import Guided
    from .result import GenerationResult

_DEFAULT_MAX_STATS = 1000  # records the runtime keeps between hand-overs by default


async def empty_async_iterable() -> AsyncIterator[dict[str, object]]:
    """What ``aget_stats`` returns before any request: an async generator yielding nothing."""
    if False:  # an async generator with no items, as upstream writes it
        yield {}


_EXOTIC = ("café", "naïve", "日本語", "東京", "你好", "한국어", "🚀", "🎉", "Ωmega", "€")


class _Sequence:
    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.count = 0
        self.natural_length = rng.randint(10, 80)  # where the "model" says EOS
        self.pending: list[int] = []  # byte tokens of a word not yet written
        self.guide: Guided | None = None  # under a guide, from the first iteration on
        self.done = False


class _Request:
    def __init__(
        self,
        result: GenerationResult,
        fault: str | None,
        cached: int,
        to_notify: list[_SyncQueue],
        adapter: str | None = None,
    ) -> None:
        self.result = result
        self._to_notify = to_notify
        self.fault = fault
        self.guide_error: str | None = None  # set when its guide cannot be used
        self.cached = cached
        self.produced = 0
        params = result.sampling_params
        prompt = zlib.crc32(repr(result.prompt_token_ids).encode())
        # An adapter's weights (known by the path they were loaded from) change the text.
        tuned = "" if adapter is None else f":{adapter}"
        self.seqs = [
            _Sequence(random.Random(f"{params.seed or 0}:{i}:{prompt}{tuned}"))
            for i in range(params.best_of or params.n)
        ]

    def send(self, response: Response) -> None:
        """``put_nowait``, as proxy.py's dispatch does; the executor notifies in bulk later."""
        queue = self.result.queue
        if queue is not None:
            queue.put_nowait(response)
            self._to_notify.append(queue)


class GenerationExecutor:
    def __init__(
        self,
        tokenizer: TransformersTokenizer | None,
        max_batch_size: int,
        iter_stats: bool = False,
        max_stats: int | None = None,
        guided_backend: str | None = None,
        unset_guides_fail: bool = False,
    ) -> None:
        self._tokenizer = tokenizer
        self._guided = GuidedDecoder(guided_backend) if guided_backend else None
        self._unset_guides_fail = unset_guides_fail  # the C++ executor's assertion
        self._iter_stats = iter_stats  # the runtime makes iteration-stats records
        self._max_stats = max(max_stats or _DEFAULT_MAX_STATS, 1)
        self._stats: list[str] = []  # made since the last hand-over (the runtime's list)
        self._iter_stats_result: IterationResult | None = None
        self._stats_task: asyncio.Task[None] | None = None
        self._iter = 0
        self._model = SimTokenizer()
        self._max_batch_size = max_batch_size
        self._waiting: deque[_Request] = deque()
        self._running: dict[int, _Request] = {}
        self._cancelling: set[int] = set()
        self._seen_prompts: set[tuple[int, ...]] = set()
        self._last_id = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._shutdown = False
        self._to_notify: list[_SyncQueue] = []  # queues put to since the last notify

    def is_shutdown(self) -> bool:
        return self._shutdown

    def _maybe_initialize_iteration_results(self) -> None:
        """On every submit: make the stats iterator the first time, else mark it undone."""
        if self._iter_stats_result is None:
            self._iter_stats_result = IterationResult()
            with contextlib.suppress(RuntimeError):  # no loop: nothing can read it anyway
                loop = asyncio.get_running_loop()
                self._stats_task = loop.create_task(
                    self._dispatch_stats(self._iter_stats_result), name="fake-trtllm-stats"
                )
        else:
            self._iter_stats_result.mark_undone()

    def aget_stats(self, timeout: float | None) -> AsyncIterator[dict[str, object]]:
        _fake.stats_calls += 1
        if self._iter_stats_result is None:
            # Upstream prints "Iteration statistics are not available yet..." here.
            return empty_async_iterable()
        self._iter_stats_result.set_timeout(timeout)
        return self._iter_stats_result

    async def _dispatch_stats(self, singleton: IterationResult) -> None:
        """Every period, hand what the runtime made over: ``put_nowait`` each, one notify."""
        queue = singleton.queue
        while queue is not None and not self._shutdown:
            await asyncio.sleep(_fake.stats_period_s)
            batch, self._stats = self._stats, []
            for record in batch:
                queue.put_nowait(record)
            if batch:
                with contextlib.suppress(AsyncQueue.EventLoopShutdownError):
                    _SyncQueue.notify_many(queue.loop, [queue])

    def new_request_id(self) -> int:
        self._last_id += 1
        return self._last_id

    def enqueue(self, result: GenerationResult, adapter: str | None = None) -> None:
        """Queue a request (``adapter``: the LoRA weights it runs with, by their path).
        Without a running loop the fake runtime cannot run it."""
        prompt = tuple(result.prompt_token_ids)
        cached = (len(prompt) - 1) // 4 * 4 if prompt in self._seen_prompts else 0
        self._seen_prompts.add(prompt)
        fault = self._fault(result.prompt_token_ids)
        self._waiting.append(_Request(result, fault, cached, self._to_notify, adapter))
        with contextlib.suppress(RuntimeError):
            self._ensure_running(asyncio.get_running_loop())

    def abort_request(self, request_id: int) -> None:
        """Enqueue a cancellation; the next iteration handles it (proxy.py's CancellingRequest)."""
        if self._shutdown:
            return
        self._cancelling.add(request_id)
        if self._wakeup is not None:
            self._wakeup.set()

    def shutdown(self) -> None:
        """Abort every live request and stop; callable from any thread."""
        if self._shutdown:
            return
        self._shutdown = True
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            on_loop = asyncio.get_running_loop() is loop
        except RuntimeError:
            on_loop = False
        if on_loop:
            self._stop()
        else:
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(self._stop)

    def _ensure_running(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._task is None or self._loop is not loop:
            self._loop = loop
            self._wakeup = asyncio.Event()
            self._task = loop.create_task(self._run(self._wakeup), name="fake-trtllm-executor")
        assert self._wakeup is not None
        self._wakeup.set()

    async def _run(self, wakeup: asyncio.Event) -> None:
        while not self._shutdown:
            if not (self._waiting or self._running or self._cancelling):
                wakeup.clear()
                await wakeup.wait()
                continue
            await asyncio.sleep(_fake.step_s)
            self._iterate()
            self._notify()

    def _notify(self) -> None:
        """One bulk wake-up for an iteration's responses (proxy.py's ``notify_many``)."""
        if self._to_notify and self._loop is not None:
            queues = self._to_notify[:]
            self._to_notify.clear()
            with contextlib.suppress(AsyncQueue.EventLoopShutdownError):
                _SyncQueue.notify_many(self._loop, queues)

    def _iterate(self) -> None:
        for request_id in self._cancelling:
            running = self._running.pop(request_id, None)
            if running is not None:
                running.send(Response(finish="cancelled", is_final=True))
            else:  # still waiting for a slot: dropped without an answer (UNCERTAIN upstream)
                self._waiting = deque(r for r in self._waiting if r.result.request_id != request_id)
        self._cancelling.clear()
        new = 0
        while self._waiting and len(self._running) < self._max_batch_size:
            request = self._waiting.popleft()
            self._running[request.result.request_id] = request
            new += 1
            self._build_guides(request)
        scheduled = list(self._running.values())
        # As PyExecutor counts them: active and queued once this iteration's are admitted.
        active, queued = len(scheduled), len(self._waiting)
        started = time.perf_counter()
        for request in scheduled:
            if request.guide_error is not None:  # before any token
                self._reject(request, request.guide_error)
                continue
            if request.fault is not None and request.produced >= _fake.FAULT_AFTER_TOKENS:
                self._fail(request)
                if self._shutdown:
                    return
                continue
            self._advance(request)
        if self._iter_stats:
            done = sum(1 for r in scheduled if r.result.request_id not in self._running)
            self._record_stats(scheduled, new, active, queued, done, started)

    def _record_stats(
        self,
        scheduled: list[_Request],
        new: int,
        active: int,
        queued: int,
        completed: int,
        started: float,
    ) -> None:
        """Keep this iteration's record (``stats.py``). KV: each sequence holds whole
        blocks for its prompt and its tokens so far, through this iteration."""
        per_block = _fake.tokens_per_block
        used = 0
        for request in scheduled:
            prompt = len(request.result.prompt_token_ids)
            used += sum(-(-(prompt + seq.count) // per_block) for seq in request.seqs)
        self._iter += 1
        record = iteration_record(
            iteration=self._iter,
            used_blocks=used,
            new=new,
            active=active,
            queued=queued,
            completed=completed,
            started=started,
            max_batch_size=self._max_batch_size,
        )
        _fake.stats_records.append(record)
        if len(self._stats) >= self._max_stats:  # the runtime drops the oldest
            self._stats.pop(0)
        self._stats.append(json.dumps(record))

    def _build_guides(self, request: _Request) -> None:
        """A matcher per sequence, when the runtime first schedules the request."""
        guide = request.result.sampling_params.guided_decoding
        if not has_guide(guide):
            return
        assert guide is not None
        if self._guided is None:
            if self._unset_guides_fail:
                request.guide_error = NO_GUIDED_DECODER
            return  # the PyTorch executor has no guided decoder: the guide is ignored
        try:
            for seq in request.seqs:
                seq.guide = self._guided.sequence(guide, seq.rng)
        except GuideError as error:
            request.guide_error = f"Guided decoding error: {error}"

    def _advance(self, request: _Request) -> None:
        params = request.result.sampling_params
        open_seqs = [(i, s) for i, s in enumerate(request.seqs) if not s.done]
        for index, seq in open_seqs:
            try:
                token = self._next_token(request, seq)
            except GuideError as error:  # a dead end (PR #18896 fails the request)
                self._reject(request, f"Guided decoding error: {error}")
                return
            seq.count += 1
            ids: tuple[int, ...] = (token,)
            finish = None
            if token == params.end_id:
                finish, ids = "end_id", ()  # the end token is not part of the output
            elif token in (params.stop_token_ids or ()) and seq.count >= (params.min_tokens or 0):
                finish = "stop_words"
            elif seq.count >= params.max_tokens:
                finish = "length"
            seq.done = finish is not None
            request.produced += len(ids)
            final = all(s.done for s in request.seqs)
            logprobs = tuple(self._logprob(seq, t, params.logprobs) for t in ids)
            request.send(
                Response(
                    index=index,
                    token_ids=ids,
                    logprobs=logprobs if params.logprobs else (),
                    finish=finish,
                    is_final=final,
                    cached_tokens=request.cached,
                )
            )
            if final:
                del self._running[request.result.request_id]

    def _next_token(self, request: _Request, seq: _Sequence) -> int:
        params = request.result.sampling_params
        if seq.guide is not None:
            return seq.guide.next_token()
        if seq.pending:
            return seq.pending.pop(0)
        min_tokens = params.min_tokens or 0
        if not params.ignore_eos and seq.count >= max(seq.natural_length, min_tokens):
            return params.end_id if params.end_id is not None and params.end_id >= 0 else EOS_ID
        roll = seq.rng.random()
        if roll < 0.2:
            word = " " + seq.rng.choice(_EXOTIC)
            seq.pending = self._model.encode(word, add_special_tokens=False)
            return seq.pending.pop(0)
        token = self._model.id_of(" " + seq.rng.choice(WORDS))
        assert token is not None
        return token

    def _logprob(self, seq: _Sequence, token: int, k: int | None) -> dict[int, Logprob] | float:
        value = -abs(seq.rng.gauss(0.0, 0.7))
        if _fake.logprobs_as_floats:
            return value
        # Top-k by rank, plus the sampled token when it is not among them
        # (result.py compute_logprobs); now and then the sampled one is not the best.
        k = k or 1
        rank = 1 if seq.rng.random() < 0.75 else k + 1
        out: dict[int, Logprob] = {}
        for r in range(1, k + 1):
            other = seq.rng.randrange(self._model.vocab_size)
            while other == token or other in out:
                other = seq.rng.randrange(self._model.vocab_size)
            out[token if r == rank else other] = Logprob(value + 0.25 * (rank - r), r)
        if rank > k:
            out[token] = Logprob(value, rank)
        return out

    def _fault(self, prompt_ids: list[int]) -> str | None:
        if self._tokenizer is None:
            return None
        text = self._tokenizer.decode(prompt_ids)
        if _fake.FATAL_ERROR_MARK in text:
            return "fatal"
        return "request" if _fake.REQUEST_ERROR_MARK in text else None

    def _reject(self, request: _Request, message: str) -> None:
        """Fail one request with an error response; the rest go on."""
        del self._running[request.result.request_id]
        request.send(Response(error=message))

    def _fail(self, request: _Request) -> None:
        if request.fault == "request":
            self._reject(request, "fake per-request failure (an ErrorResponse)")
            return
        # A fatal error: every live request hears of it and the executor shuts down.
        error = CppExecutorError("fake executor failure: CUDA error (the executor is down)")
        for live in [*self._running.values(), *self._waiting]:
            live.send(Response(fatal=error))
        self._running.clear()
        self._waiting.clear()
        self._shutdown = True

    def _stop(self) -> None:
        for request in self._running.values():
            request.send(Response(finish="cancelled", is_final=True))
        self._running.clear()
        self._waiting.clear()  # requests waiting for a slot get no answer
        self._cancelling.clear()
        self._notify()
        if self._task is not None:
            self._task.cancel()
        if self._stats_task is not None:
            self._stats_task.cancel()
