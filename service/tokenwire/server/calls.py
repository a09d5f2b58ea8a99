"""The life of a call: from request to status, with the engine request always cleaned up.

    async with calls.rpc("Generate", context) as call:             # status, receipt, metrics
        async with calls.generation(request, context, call) as gen:  # admission, submit, abort
            ...iterate gen.handle...

Every way a call can end goes through ``generation``'s exit: a request the
engine has not finished is aborted there, at once, and counted with its reason.
grpc.aio turns a client cancel, a dropped connection and an expired deadline into
``CancelledError`` in the handler; the reason is told apart by the deadline (an
RPC cancelled within 50 ms of its deadline counts as expired). The watchdog
cancels stalled streams the same way, after marking them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import cast

import grpc
from opentelemetry.trace import Span

from tokenwire.v1 import generation_pb2 as pb

from . import convert, logs, sizes
from .admission import Admission
from .convert import Limits, RequestPlan
from .engines.base import Engine, EngineUnavailable, GenerationHandle
from .errors import DuplicateRequestId, EngineStalled, ReaderStalled, to_status
from .streaming import Progress
from .telemetry import Metrics
from .tracing import Tracing
from .watchdog import Watchdog, Watched

log = logging.getLogger("tokenwire.server")

Context = grpc.aio.ServicerContext[object, object]

DEADLINE_SLACK_S = 0.05
SERVICE = pb.DESCRIPTOR.services_by_name["GenerationService"].full_name
"""The generation service's full name, for health, reflection and spans."""


class Call:
    """One RPC's bookkeeping, filled in as it goes."""

    __slots__ = ("progress", "span", "watched")

    def __init__(self, span: Span) -> None:
        self.span = span
        self.progress: Progress | None = None
        self.watched: Watched | None = None

    def receipt(self) -> tuple[tuple[str, str], ...]:
        p = self.progress
        if p is None:
            return ()
        return convert.receipt(p.prompt_tokens, p.completion_tokens, p.finishes, p.abort_reason)


@dataclass(frozen=True, slots=True)
class Generation:
    plan: RequestPlan
    handle: GenerationHandle
    progress: Progress
    watched: Watched


class Calls:
    def __init__(
        self,
        engine: Engine,
        metrics: Metrics,
        limits: Limits,
        admission: Admission,
        watchdog: Watchdog,
        tracing: Tracing,
    ) -> None:
        self.engine = engine
        self._tracing = tracing
        self.limits = limits
        self._metrics = metrics
        self._admission = admission
        self._watchdog = watchdog
        self.live: set[str] = set()  # request ids of live generations
        # On shutdown, when the grace runs out: calls cancelled after it were cut by
        # the shutdown (UNAVAILABLE, abort reason "shutdown"), not by their clients.
        self.grace_ends_at: float | None = None

    def rpc(self, method: str, context: Context) -> AbstractAsyncContextManager[Call, None]:
        """Trace the call, map errors to a status, send the usage receipt, count the ending.

        Every error ends the call (``context.abort`` raises), so none is swallowed:
        typed so, a handler needs no return statement after its ``async with``."""
        return cast(AbstractAsyncContextManager[Call, None], self._rpc(method, context))

    @asynccontextmanager
    async def _rpc(self, method: str, context: Context) -> AsyncIterator[Call]:
        code = grpc.StatusCode.OK
        with self._tracing.rpc_span(SERVICE, method, context.invocation_metadata()) as span:
            call = Call(span)
            try:
                try:
                    yield call
                except asyncio.CancelledError:
                    stall = _stall_error(call)
                    if stall is None:
                        code = self._cancel_code(context)
                        context.set_trailing_metadata(call.receipt())
                        raise
                    # Our own watchdog cancelled the call: end it with a status instead.
                    task = asyncio.current_task()
                    if task is not None:
                        task.uncancel()
                    raise stall from None
                context.set_trailing_metadata(call.receipt())
            except Exception as error:
                status = to_status(error)
                code = status.code
                if code is grpc.StatusCode.INTERNAL:
                    log.exception("%s failed", method)
                elif code is not grpc.StatusCode.INVALID_ARGUMENT:
                    log.info("%s ended with %s: %s", method, code.name, status.message)
                metadata = status.trailing_metadata + call.receipt()
                await context.abort(status.code, status.message, metadata)
            finally:
                self._metrics.request_done(method, code.name)
                self._trace_end(call, code)

    def _trace_end(self, call: Call, code: grpc.StatusCode) -> None:
        p = call.progress
        if p is None:
            self._tracing.ended(call.span, code.name, None, (), None, None)
            return
        first = None if p.first_token_at is None else time.perf_counter() - p.first_token_at
        self._tracing.ended(
            call.span, code.name, p.completion_tokens, p.finishes, p.abort_reason, first
        )

    @asynccontextmanager
    async def generation(
        self, request: pb.GenerateRequest, context: Context, call: Call, *, whole: bool = False
    ) -> AsyncIterator[Generation]:
        """Admit and submit the request; on the way out, abort it unless it finished.

        ``whole``: the answer goes out as one message (Complete), so one that is sure
        not to fit is refused before it takes a slot."""
        started = time.perf_counter()
        engine = self.engine
        if not engine.healthy:
            raise EngineUnavailable("the engine cannot serve: see the server's log")
        plan = convert.plan_request(request, engine.description, self.limits)
        if plan.request_id in self.live:
            raise DuplicateRequestId(f"request_id {plan.request_id!r} is already in progress")
        self.live.add(plan.request_id)
        logs.request_id.set(plan.request_id)  # this call's task only
        self._metrics.streams_active += 1
        progress = call.progress = Progress(started, plan.template.sampling.n)
        watched = call.watched = self._watchdog.watch(plan.request_id)
        handle: GenerationHandle | None = None
        admitted_at: float | None = None
        error: BaseException | None = None
        try:
            prompt_ids = plan.token_ids
            if plan.prompt is not None:
                prompt_ids = tuple(await engine.tokenize(plan.prompt))
            progress.prompt_tokens = len(prompt_ids)
            request_ = plan.generation(prompt_ids, engine.description, self.limits)
            if whole:
                sizes.refuse_unfit(request_, self.limits.max_message_bytes)
            operation = "chat" if plan.input_field == "messages" else "text_completion"
            self._tracing.request(call.span, request_, operation)
            progress.queue_s = await self._admission.acquire(context.time_remaining())
            admitted_at = time.perf_counter()
            handle = engine.submit(request_)
            yield Generation(plan, handle, progress, watched)
        except BaseException as caught:
            error = caught
            raise
        finally:
            # First, before any bookkeeping: free the engine slot at once.
            if handle is not None and not handle.finished:
                self._abort(handle, progress, context, watched, error)
            self._watchdog.forget(watched)
            self.live.discard(plan.request_id)
            self._metrics.streams_active -= 1
            if admitted_at is not None:
                self._admission.release()
                first = progress.first_token_at
                self._admission.observe(
                    time.perf_counter() - admitted_at,
                    None if first is None else first - admitted_at,
                )
            if handle is not None:
                first = progress.first_token_at
                self._metrics.generation_done(
                    progress.prompt_tokens,
                    progress.completion_tokens,
                    max(progress.counts),
                    None if first is None else first - started,
                    time.perf_counter() - started,
                )

    def _abort(
        self,
        handle: GenerationHandle,
        progress: Progress,
        context: Context,
        watched: Watched,
        error: BaseException | None,
    ) -> None:
        """Abort an unfinished engine request and count it with its reason."""
        # Latency from when the server learnt of it: the cancel reaching this task,
        # or, for a deadline, the moment it passed.
        learned = time.perf_counter()
        remaining = context.time_remaining()
        if remaining is not None and remaining < 0:
            learned += remaining
        handle.abort()
        # No error: the consumer stopped early on its own, which is a bug somewhere.
        reason = "error" if error is None else self._abort_reason(error, context, watched)
        progress.abort_reason = reason
        self._metrics.aborted(reason, time.perf_counter() - learned)
        log.info("aborted the engine request: %s", reason)

    def _abort_reason(self, error: BaseException, context: Context, watched: Watched) -> str:
        if watched.stall == "reader":
            return "stalled"
        if watched.stall == "engine":
            return "error"
        if isinstance(error, asyncio.CancelledError):
            code = self._cancel_code(context)
            if code is grpc.StatusCode.DEADLINE_EXCEEDED:
                return "deadline"
            return "shutdown" if code is grpc.StatusCode.UNAVAILABLE else "cancelled"
        return "error"

    def _cancel_code(self, context: Context) -> grpc.StatusCode:
        """Why grpc cancelled the handler: the deadline, the shutdown, or the client."""
        remaining = context.time_remaining()
        if remaining is not None and remaining <= DEADLINE_SLACK_S:
            return grpc.StatusCode.DEADLINE_EXCEEDED
        ends = self.grace_ends_at
        if ends is not None and time.monotonic() >= ends - DEADLINE_SLACK_S:
            return grpc.StatusCode.UNAVAILABLE
        return grpc.StatusCode.CANCELLED


def _stall_error(call: Call) -> Exception | None:
    stall = None if call.watched is None else call.watched.stall
    if stall == "reader":
        return ReaderStalled("stream aborted: the client stopped reading")
    if stall == "engine":
        return EngineStalled("the engine stopped producing tokens for this request")
    return None
