"""GenerationService: validate, submit to the engine, stream, and always clean up.

Every way a call can end goes through one ``finally``: a request the engine has
not finished is aborted there, at once, and counted with its reason. grpc.aio
turns a client cancel, a dropped connection and an expired deadline into
``CancelledError`` in the handler; the reason is told apart by the deadline
(an RPC cancelled within 50 ms of its deadline counts as expired).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import grpc

from tokenwire.v1 import generation_pb2 as pb
from tokenwire.v1 import generation_pb2_grpc as pb_grpc

from . import convert, streaming
from .admission import Admission
from .convert import Limits, RequestPlan
from .engines.base import Engine, GenerationHandle
from .errors import DuplicateRequestId, to_status
from .telemetry import Metrics

log = logging.getLogger("tokenwire.server")

Context = grpc.aio.ServicerContext[object, object]

DEADLINE_SLACK_S = 0.05


class _Call:
    """One RPC's bookkeeping: the generation's progress, for the usage receipt."""

    __slots__ = ("progress",)

    def __init__(self) -> None:
        self.progress: streaming.Progress | None = None

    def receipt(self) -> tuple[tuple[str, str], ...]:
        p = self.progress
        if p is None:
            return ()
        return convert.receipt(p.prompt_tokens, p.completion_tokens, p.finishes, p.abort_reason)


class GenerationServicer(pb_grpc.GenerationServiceServicer):
    def __init__(
        self, engine: Engine, metrics: Metrics, limits: Limits, admission: Admission
    ) -> None:
        self._engine = engine
        self._metrics = metrics
        self._limits = limits
        self._admission = admission
        self._live: set[str] = set()  # request ids of live generations
        self.draining = False  # set on shutdown: cancellations then count as "shutdown"

    # The write() form, not an async generator: a cancel lands in this coroutine's
    # own await, so the abort in ``_generation``'s finally runs at that moment,
    # rather than whenever grpc gets round to closing a suspended generator.
    # The generated stubs only know the generator form.
    async def Generate(  # type: ignore[override]  # noqa: N802 - gRPC method name
        self, request: pb.GenerateRequest, context: Context
    ) -> None:
        async with (
            self._rpc("Generate", context) as call,
            self._generation(request, context, call) as run,
        ):
            plan, handle, progress = run

            def finalize(msg: pb.GenerateResponse) -> None:
                msg.usage.CopyFrom(self._usage(handle, progress))
                msg.timing.CopyFrom(self._timing(progress))

            async for msg in streaming.responses(
                handle, plan.request_id, plan.stream, progress, finalize
            ):
                await context.write(msg)

    async def Complete(  # noqa: N802
        self, request: pb.GenerateRequest, context: Context
    ) -> pb.CompleteResponse:
        async with (
            self._rpc("Complete", context) as call,
            self._generation(request, context, call) as run,
        ):
            plan, handle, progress = run
            n = len(progress.counts)
            texts: list[list[str]] = [[] for _ in range(n)]
            choices = [pb.Choice(index=i) for i in range(n)]
            async for step in handle:
                progress.update(step)
                for d in step:
                    choice = choices[d.index]
                    texts[d.index].append(d.text)
                    choice.token_ids.extend(d.token_ids)
                    if d.logprobs:
                        choice.logprobs.extend(convert.logprobs(d.logprobs))
                    if d.cumulative_logprob is not None:
                        choice.cumulative_logprob = d.cumulative_logprob
                    if d.finish_reason is not None:
                        choice.finish_reason = convert.FINISH_REASONS[d.finish_reason]
                        match = convert.stop_match(d.stop_match)
                        if match is not None:
                            choice.stop_match.CopyFrom(match)
            for choice, parts in zip(choices, texts, strict=True):
                choice.text = "".join(parts)
            return pb.CompleteResponse(
                request_id=plan.request_id,
                choices=choices,
                usage=self._usage(handle, progress),
                timing=self._timing(progress),
            )
        raise AssertionError("unreachable: _rpc aborts the call on every error")

    async def GetModelInfo(  # noqa: N802
        self, request: pb.GetModelInfoRequest, context: Context
    ) -> pb.ModelInfo:
        async with self._rpc("GetModelInfo", context):
            return convert.model_info(self._engine.description, self._limits)
        raise AssertionError("unreachable")

    async def Tokenize(  # noqa: N802
        self, request: pb.TokenizeRequest, context: Context
    ) -> pb.TokenizeResponse:
        async with self._rpc("Tokenize", context):
            prompt = convert.tokenize_input(request)
            add_special = (
                request.add_special_tokens if request.HasField("add_special_tokens") else True
            )
            ids = await self._engine.tokenize(prompt, add_special_tokens=add_special)
            return pb.TokenizeResponse(token_ids=ids, tokens=self._engine.token_strings(ids))
        raise AssertionError("unreachable")

    @asynccontextmanager
    async def _rpc(self, method: str, context: Context) -> AsyncIterator[_Call]:
        """Map errors to a status, send the usage receipt, count every ending by its code."""
        code = grpc.StatusCode.OK
        call = _Call()
        try:
            yield call
            context.set_trailing_metadata(call.receipt())
        except asyncio.CancelledError:
            code = self._cancel_code(context)
            context.set_trailing_metadata(call.receipt())
            raise
        except Exception as error:
            status = to_status(error)
            code = status.code
            if code is grpc.StatusCode.INTERNAL:
                log.exception("%s failed", method)
            metadata = status.trailing_metadata + call.receipt()
            await context.abort(status.code, status.message, metadata)
        finally:
            self._metrics.request_done(method, code.name)

    @asynccontextmanager
    async def _generation(
        self, request: pb.GenerateRequest, context: Context, call: _Call
    ) -> AsyncIterator[tuple[RequestPlan, GenerationHandle, streaming.Progress]]:
        """Submit the request; on the way out, abort it unless the engine finished it."""
        started = time.perf_counter()
        engine = self._engine
        plan = convert.plan_request(request, engine.description, self._limits)
        if plan.request_id in self._live:
            raise DuplicateRequestId(f"request_id {plan.request_id!r} is already in progress")
        self._live.add(plan.request_id)
        self._metrics.streams_active.add(1)
        handle: GenerationHandle | None = None
        progress = call.progress = streaming.Progress(started, plan.template.sampling.n)
        admitted_at: float | None = None
        try:
            prompt_ids = plan.token_ids
            if plan.prompt is not None:
                prompt_ids = tuple(await engine.tokenize(plan.prompt))
            progress.prompt_tokens = len(prompt_ids)
            generation = plan.generation(prompt_ids, engine.description, self._limits)
            progress.queue_s = await self._admission.acquire(context.time_remaining())
            admitted_at = time.perf_counter()
            handle = engine.submit(generation)
            yield plan, handle, progress
        except BaseException as error:
            if handle is not None and not handle.finished:
                handle.abort()
                progress.abort_reason = self._abort_reason(error, context)
                self._metrics.aborted(progress.abort_reason)
            raise
        finally:
            self._live.discard(plan.request_id)
            self._metrics.streams_active.add(-1)
            if admitted_at is not None:
                self._admission.release()
                first = progress.first_token_at
                self._admission.observe(
                    time.perf_counter() - admitted_at,
                    None if first is None else first - admitted_at,
                )
            if handle is not None:
                if not handle.finished:  # the consumer stopped early without an error
                    handle.abort()
                    progress.abort_reason = "error"
                    self._metrics.aborted("error")
                ttft = (
                    None if progress.first_token_at is None else progress.first_token_at - started
                )
                self._metrics.generation_done(
                    progress.prompt_tokens,
                    progress.completion_tokens,
                    ttft,
                    time.perf_counter() - started,
                )

    def _abort_reason(self, error: BaseException, context: Context) -> str:
        if isinstance(error, asyncio.CancelledError):
            if self._cancel_code(context) is grpc.StatusCode.DEADLINE_EXCEEDED:
                return "deadline"
            return "shutdown" if self.draining else "cancelled"
        return "error"

    @staticmethod
    def _cancel_code(context: Context) -> grpc.StatusCode:
        remaining = context.time_remaining()
        if remaining is not None and remaining <= DEADLINE_SLACK_S:
            return grpc.StatusCode.DEADLINE_EXCEEDED
        return grpc.StatusCode.CANCELLED

    def _usage(self, handle: GenerationHandle, progress: streaming.Progress) -> pb.Usage:
        return convert.usage(
            progress.prompt_tokens, progress.completion_tokens, handle.cached_prompt_tokens
        )

    def _timing(self, progress: streaming.Progress) -> pb.Timing:
        now = time.perf_counter()
        ttft = (
            None if progress.first_token_at is None else progress.first_token_at - progress.started
        )
        return convert.timing(progress.queue_s, ttft, now - progress.started)
