"""The runtime behind ``LLM``: in-flight batching on the event loop.

Stands in for executor/proxy.py, the worker and the model. Each iteration it
handles cancellations, admits waiting requests up to ``max_batch_size``, and
gives every running sequence one token, sent as one response per sequence.
The "model" writes words from tokenwire's simulated vocabulary and, often,
accented, CJK and emoji words spelt in byte tokens.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import zlib
from collections import deque
from typing import TYPE_CHECKING

from tokenwire.server.engines.simtok import EOS_ID, WORDS, SimTokenizer

from .. import _fake
from ..llmapi.utils import AsyncQueue, _SyncQueue
from .result import Logprob, Response
from .utils import CppExecutorError

if TYPE_CHECKING:
    from ..llmapi.tokenizer import TransformersTokenizer
    from .result import GenerationResult

_EXOTIC = ("café", "naïve", "日本語", "東京", "你好", "한국어", "🚀", "🎉", "Ωmega", "€")


class _Sequence:
    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.count = 0
        self.natural_length = rng.randint(10, 80)  # where the "model" says EOS
        self.pending: list[int] = []  # byte tokens of a word not yet written
        self.done = False


class _Request:
    def __init__(
        self,
        result: GenerationResult,
        fault: str | None,
        cached: int,
        to_notify: list[_SyncQueue],
    ) -> None:
        self.result = result
        self._to_notify = to_notify
        self.fault = fault
        self.cached = cached
        self.produced = 0
        params = result.sampling_params
        prompt = zlib.crc32(repr(result.prompt_token_ids).encode())
        self.seqs = [
            _Sequence(random.Random(f"{params.seed or 0}:{i}:{prompt}"))
            for i in range(params.best_of or params.n)
        ]

    def send(self, response: Response) -> None:
        """``put_nowait``, as proxy.py's dispatch does; the executor notifies in bulk later."""
        queue = self.result.queue
        if queue is not None:
            queue.put_nowait(response)
            self._to_notify.append(queue)


class GenerationExecutor:
    def __init__(self, tokenizer: TransformersTokenizer | None, max_batch_size: int) -> None:
        self._tokenizer = tokenizer
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

    def new_request_id(self) -> int:
        self._last_id += 1
        return self._last_id

    def enqueue(self, result: GenerationResult) -> None:
        """Queue a request. Without a running loop the fake runtime cannot run it."""
        prompt = tuple(result.prompt_token_ids)
        cached = (len(prompt) - 1) // 4 * 4 if prompt in self._seen_prompts else 0
        self._seen_prompts.add(prompt)
        fault = self._fault(result.prompt_token_ids)
        self._waiting.append(_Request(result, fault, cached, self._to_notify))
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
        while self._waiting and len(self._running) < self._max_batch_size:
            request = self._waiting.popleft()
            self._running[request.result.request_id] = request
        for request in list(self._running.values()):
            if request.fault is not None and request.produced >= _fake.FAULT_AFTER_TOKENS:
                self._fail(request)
                if self._shutdown:
                    return
                continue
            self._advance(request)

    def _advance(self, request: _Request) -> None:
        params = request.result.sampling_params
        open_seqs = [(i, s) for i, s in enumerate(request.seqs) if not s.done]
        for index, seq in open_seqs:
            token = self._next_token(request, seq)
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

    def _fail(self, request: _Request) -> None:
        if request.fault == "request":
            del self._running[request.result.request_id]
            request.send(Response(error="fake per-request failure (an ErrorResponse)"))
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
