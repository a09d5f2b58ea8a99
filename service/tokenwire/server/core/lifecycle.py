"""The life of a request, whichever door it came in by: admit, submit, abort once.

    with core.call("Generate", headers, time_remaining) as call:  # span
        async with core.generation(request, call) as gen:        # admission, submit, abort
            async for flush in core.flushes(gen):                 # the door sends each
                ...

A resumable call (``StreamOptions.resume_grace_ms``) goes the same way, in a task
of its own that keeps its messages (``resume.py``), while the door follows them:

    kept = core.resumable(request, call, who, grace_s)            # its own task
    async with core.following(kept, after, call) as follow:       # attach; detach
        await follow.submitted()
        async for msg in follow.messages: ...                      # numbered, kept

A door that leaves without an Abort detaches (the generation goes on for the
grace); at the shutdown's cut it aborts (``shutdown``).

Every way a call can end goes through ``generation``'s exit: a request the
engine has not finished is aborted there, at once, and counted with its reason.
Both doors turn a client that leaves into ``CancelledError`` in the handler
(grpc.aio for a cancel, a dropped connection or an expired deadline; the HTTP
door when the connection closes), and so does the watchdog after marking a
stalled stream. ``ending()`` decides why, once, with one clock reading: the
abort's reason and the status the door answers with both come from that one
decision, so they cannot disagree near the deadline's edge.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable, Iterator
from contextlib import aclosing, asynccontextmanager, contextmanager
from dataclasses import dataclass

from opentelemetry.trace import Span

from tokenwire.v1 import generation_pb2 as pb

from .. import logs
from ..engines.base import Engine, EngineUnavailable, GenerationHandle
from . import coalescing, errors, messages, sizes
from .admission import Admission
from .pacing import Pacer
from .parsedcalls import ParsedCalls
from .progress import Progress
from .requests import Limits, RequestPlan, plan_request
from .resume import KeptStream, Resumes
from .telemetry import AbortReason, Metrics
from .tracing import Tracing
from .watchdog import Watchdog, Watched

log = logging.getLogger("tokenwire.server")

DEADLINE_SLACK_S = 0.05
"""A call cancelled within this of its deadline (or of the shutdown grace's end)
was cut by the deadline (or the shutdown), not by its client."""

SERVICE = pb.DESCRIPTOR.services_by_name["GenerationService"].full_name
"""The generation service's full name, for health, reflection and spans."""

TimeRemaining = Callable[[], float | None]

_ABORT_REASONS: tuple[tuple[type[BaseException], AbortReason], ...] = (
    (errors.ReaderStalled, "stalled"),
    (errors.DeadlineExpired, "deadline"),
    (errors.ShuttingDown, "shutdown"),
    (errors.ClientCancelled, "cancelled"),
    (errors.Aborted, "aborted"),
    (errors.Detached, "detached"),
)


class Call:
    """One call's bookkeeping, filled in as it goes."""

    __slots__ = ("cause", "progress", "span", "time_remaining", "watched")

    def __init__(self, span: Span, time_remaining: TimeRemaining) -> None:
        self.span = span
        self.time_remaining = time_remaining  # seconds to the client's deadline, or None
        self.progress: Progress | None = None
        self.watched: Watched | None = None
        self.cause: Exception | None = None  # why it was cancelled, decided once


@dataclass(frozen=True, slots=True)
class Generation:
    plan: RequestPlan
    handle: GenerationHandle
    progress: Progress
    watched: Watched


def no_deadline() -> float | None:
    return None


class Following:
    """A door attached to a kept stream: its messages, and its write clock."""

    __slots__ = ("_kept", "_resumes", "messages", "watched")

    def __init__(self, resumes: Resumes, kept: KeptStream, after: int, watched: Watched) -> None:
        self._resumes = resumes
        self._kept = kept
        self.watched = watched
        self.messages = resumes.follow(kept, after)

    async def submitted(self) -> None:
        """Until the engine has the request; raises its refusal (before any answer)."""
        await self._resumes.wait_submitted(self._kept)


class Core:
    """Everything a request needs, shared by both doors: engine, limits, admission,
    the watchdog, metrics and tracing."""

    def __init__(
        self,
        engine: Engine,
        metrics: Metrics,
        limits: Limits,
        admission: Admission,
        watchdog: Watchdog,
        tracing: Tracing,
        max_pause_s: float = 0.05,
        resumes: Resumes | None = None,
    ) -> None:
        self.engine = engine
        self.metrics = metrics
        self.limits = limits
        self.tracing = tracing
        self.admission = admission
        self._watchdog = watchdog
        self.pacer = Pacer(lambda: self.metrics.streams_active > 0, max_pause_s)
        self.live: dict[str, Call] = {}  # live generations by request id
        # Set when a shutdown begins: new generations are refused from then on,
        # and calls cancelled after the grace ends were cut by the shutdown.
        self.grace_ends_at: float | None = None
        # Resumable streams' kept messages (default bounds: those of Settings).
        self.resumes = (
            resumes if resumes is not None else Resumes(metrics, 60_000, 1 << 20, 64 << 20)
        )
        self._producers: set[asyncio.Task[None]] = set()

    @contextmanager
    def call(
        self,
        method: str,
        headers: Iterable[tuple[str, str | bytes]] | None,
        time_remaining: TimeRemaining = no_deadline,
        door: str = "grpc",
    ) -> Iterator[Call]:
        """A call's span (continuing a ``traceparent`` in ``headers``)."""
        with self.tracing.rpc_span(SERVICE, method, headers, door) as span:
            yield Call(span, time_remaining)

    def abort(self, request_ids: Iterable[str]) -> list[str]:
        """End the named live generations at once (reason ``aborted``): each one's
        task is cancelled and its ending, decided here, says it was aborted."""
        aborted = []
        for request_id in dict.fromkeys(request_ids):
            call = self.live.get(request_id)
            if call is None or call.watched is None or call.watched.task is None:
                continue
            if call.cause is None:
                call.cause = errors.Aborted(f"request {request_id!r} was aborted by its id")
            call.watched.task.cancel()
            aborted.append(request_id)
        return aborted

    def ending(self, call: Call, error: BaseException) -> Exception:
        """The error a call ends with: a raised one as it is, a cancel as its cause."""
        if not isinstance(error, asyncio.CancelledError):
            return error if isinstance(error, Exception) else errors.ServiceError(str(error))
        if call.cause is None:
            call.cause = self._cause(call)
        return call.cause

    def _cause(self, call: Call) -> Exception:
        stall = None if call.watched is None else call.watched.stall
        if stall == "reader":
            return errors.ReaderStalled("stream aborted: the client stopped reading")
        if stall == "engine":
            return errors.EngineStalled("the engine stopped producing tokens for this request")
        remaining = call.time_remaining()
        if remaining is not None and remaining <= DEADLINE_SLACK_S:
            return errors.DeadlineExpired("the client's deadline passed")
        ends = self.grace_ends_at
        if ends is not None and time.monotonic() >= ends - DEADLINE_SLACK_S:
            return errors.ShuttingDown("the server is shutting down: the stream was cut")
        return errors.ClientCancelled("cancelled by the client")

    def trace_end(self, call: Call, outcome: str) -> None:
        p = call.progress
        if p is None:
            self.tracing.ended(call.span, outcome, None, (), None, None)
            return
        first = None if p.first_token_at is None else time.perf_counter() - p.first_token_at
        self.tracing.ended(
            call.span, outcome, p.completion_tokens, p.finishes, p.abort_reason, first
        )

    def flushes(self, gen: Generation) -> AsyncGenerator[coalescing.Flush, None]:
        """``gen``'s stream as flushes, grouped as it asked, each counted in the
        tokens-per-message histogram."""
        return coalescing.flushes(
            gen.handle,
            gen.plan.stream,
            gen.progress,
            gen.watched,
            self.metrics.message_tokens,
            self.pacer,
        )

    @asynccontextmanager
    async def generation(
        self, request: pb.GenerateRequest, call: Call, *, whole_limit: int | None = None
    ) -> AsyncIterator[Generation]:
        """Admit and submit the request; on the way out, abort it unless it finished.

        ``whole_limit``: the answer goes out as one message of at most this many
        bytes, so one that is sure not to fit is refused before it takes a slot."""
        started = time.perf_counter()
        engine = self.engine
        if self.grace_ends_at is not None:
            raise errors.ShuttingDown("the server is shutting down: no new requests")
        if not engine.healthy:
            raise EngineUnavailable("the engine cannot serve: see the server's log")
        plan = plan_request(request, engine.description, self.limits)
        if plan.request_id in self.live:
            raise errors.DuplicateRequestId(
                f"request_id {plan.request_id!r} is already in progress"
            )
        self.live[plan.request_id] = call
        logs.request_id.set(plan.request_id)  # this call's task only
        self.metrics.streams_active += 1
        progress = call.progress = Progress(started, plan.template.sampling.n)
        watched = call.watched = self._watchdog.watch(plan.request_id)
        handle: GenerationHandle | None = None
        adapters, adapter = self.metrics.adapters, plan.template.adapter
        admitted_at: float | None = None
        error: BaseException | None = None
        try:
            prompt_ids = plan.token_ids
            if plan.prompt is not None:
                prompt_ids = tuple(await engine.tokenize(plan.prompt))
            progress.prompt_tokens = len(prompt_ids)
            request_ = plan.generation(prompt_ids, engine.description, self.limits)
            if whole_limit is not None:
                sizes.refuse_unfit(request_, whole_limit)
            operation = "chat" if plan.input_field == "messages" else "text_completion"
            self.tracing.request(call.span, request_, operation)
            adapters.enter(adapters.waiting, adapter)
            try:
                progress.queue_s = await self.admission.acquire(
                    call.time_remaining(), request_.priority
                )
            finally:
                adapters.leave(adapters.waiting, adapter)
            admitted_at = time.perf_counter()
            handle = engine.submit(request_)
            if plan.tools is not None:  # the answer's calls, read out of its text
                handle = ParsedCalls(
                    handle, plan.tools.format, plan.tools.names, len(progress.counts)
                )
            adapters.enter(adapters.running, adapter)
            yield Generation(plan, handle, progress, watched)
        except BaseException as caught:
            error = caught
            raise
        finally:
            # First, before any bookkeeping: free the engine slot at once.
            if handle is not None and not handle.finished:
                self._abort(handle, call, error)
            self._watchdog.forget(watched)
            del self.live[plan.request_id]
            self.metrics.streams_active -= 1
            if admitted_at is not None:
                self.admission.release()
                first = progress.first_token_at
                self.admission.observe(
                    time.perf_counter() - admitted_at,
                    None if first is None else first - admitted_at,
                )
            if handle is not None:
                adapters.leave(adapters.running, adapter)
                self.metrics.generation_done(
                    progress.prompt_tokens,
                    progress.completion_tokens,
                    max(progress.counts),
                    progress.ttft_s,
                    time.perf_counter() - started,
                )

    # --- resumable calls ---------------------------------------------------------

    def resumable(
        self, request: pb.GenerateRequest, call: Call, who: str, grace_s: float
    ) -> KeptStream:
        """Start a resumable generation in a task of its own, keeping its messages;
        the door then follows it (``following``). Refusals before the engine has it
        come out of ``following`` as the generation raised them."""
        if not request.request_id:
            request.request_id = uuid.uuid4().hex
        if request.request_id in self.live:
            raise errors.DuplicateRequestId(
                f"request_id {request.request_id!r} is already in progress"
            )
        kept = self.resumes.open(request.request_id, who, grace_s)
        # Its own call: the door's ends with the connection, this one with the engine
        # request; the client's deadline, read now, bounds the generation either way.
        remaining = call.time_remaining()
        deadline = None if remaining is None else time.monotonic() + remaining
        produced = Call(
            call.span, no_deadline if deadline is None else lambda: deadline - time.monotonic()
        )
        task = asyncio.create_task(self._produce(request, produced, kept, remaining))
        self._producers.add(task)
        task.add_done_callback(self._producers.discard)

        def abort(cause: errors.Ended) -> None:
            if produced.cause is None:
                produced.cause = cause
            task.cancel()

        kept.abort = abort
        return kept

    async def _produce(
        self, request: pb.GenerateRequest, call: Call, kept: KeptStream, remaining: float | None
    ) -> None:
        resumes = self.resumes
        task = asyncio.current_task()
        assert task is not None
        expiry = (
            None
            if remaining is None
            else asyncio.get_running_loop().call_later(max(remaining, 0), task.cancel)
        )
        error: Exception | None = None
        submitted = False
        try:
            async with self.generation(request, call) as gen:
                submitted = True
                resumes.submitted(kept, gen.progress)
                request_id, progress, handle = gen.plan.request_id, gen.progress, gen.handle
                flushes = self.flushes(gen)
                async with aclosing(flushes):
                    async for f in flushes:
                        msg = messages.stream_message(request_id, f, progress, handle)
                        await resumes.append(kept, msg)
        except asyncio.CancelledError as cancel:
            # Ours to end (an Abort, the grace, the deadline, the shutdown): the cause
            # was decided once, and the task ends here rather than re-raising.
            error = self.ending(call, cancel)
            task.uncancel()
        except Exception as caught:
            error = caught
        finally:
            if expiry is not None:
                expiry.cancel()
        if kept.progress is None:
            kept.progress = call.progress
        resumes.finish(kept, error, refused=not submitted)

    @asynccontextmanager
    async def following(self, kept: KeptStream, after: int, call: Call) -> AsyncIterator[Following]:
        """Attach a door to ``kept`` (FAILED_PRECONDITION if one is) and follow it
        after sequence ``after``. Leaving detaches it, whatever the reason (a client's
        cancel cannot be told from a dropped connection on gRPC), except at the
        shutdown's cut, which aborts it (``shutdown``)."""
        resumes = self.resumes
        resumes.attach(kept)
        # Writes are this door's: its own clock for the stalled-reader watch.
        watched = call.watched = self._watchdog.watch(kept.request_id)
        follow = Following(resumes, kept, after, watched)
        try:
            async with aclosing(follow.messages):
                yield follow
        except BaseException as caught:
            cause = self.ending(call, caught)
            if isinstance(cause, errors.ShuttingDown) and kept.running:
                kept.abort(cause)
            raise
        finally:
            self._watchdog.forget(watched)
            call.progress = kept.progress
            resumes.detach(kept)

    async def close_resumable(self) -> None:
        """At the end of a drain: abort every generation still running (``shutdown``)
        and wait for their tasks, so none outlives the engine."""
        self.resumes.abort_all()
        if self._producers:
            await asyncio.wait(set(self._producers), timeout=5.0)

    def _abort(self, handle: GenerationHandle, call: Call, error: BaseException | None) -> None:
        """Abort an unfinished engine request and count it with its reason."""
        # Latency from when the server learnt of it: the cancel reaching this task,
        # or, for a deadline, the moment it passed.
        learned = time.perf_counter()
        remaining = call.time_remaining()
        if remaining is not None and remaining < 0:
            learned += remaining
        handle.abort()
        # No error: the consumer stopped early on its own, which is a bug somewhere.
        reason: AbortReason = "error"
        if error is not None:
            cause = self.ending(call, error)
            reason = next((r for kind, r in _ABORT_REASONS if isinstance(cause, kind)), "error")
        assert call.progress is not None
        call.progress.abort_reason = reason
        self.metrics.aborted(reason, time.perf_counter() - learned)
        log.info("aborted the engine request: %s", reason)
