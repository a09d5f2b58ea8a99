"""GenerationService: its RPCs, a few lines each on top of ``core.lifecycle``.

This door's own part is the gRPC ending of a call: the status code and its
details (``status.py``), the usage receipt in trailing metadata, and
``tokenwire_requests_total{method,code}``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, aclosing, asynccontextmanager
from typing import cast

import grpc

from tokenwire.v1 import generation_pb2 as pb
from tokenwire.v1 import generation_pb2_grpc as pb_grpc

from ..core import coalescing, errors, messages, requests, resume, sizes
from ..core.lifecycle import Call, Core
from ..core.resume import KeptStream
from .status import code_of, to_status

log = logging.getLogger("tokenwire.server")

Context = grpc.aio.ServicerContext[object, object]


class GenerationServicer(pb_grpc.GenerationServiceServicer):
    def __init__(self, core: Core) -> None:
        self.core = core

    def rpc(self, method: str, context: Context) -> AbstractAsyncContextManager[Call, None]:
        """Trace the call, map errors to a status, send the usage receipt, count the ending.

        Every error ends the call (``context.abort`` raises), so none is swallowed:
        typed so, a handler needs no return statement after its ``async with``."""
        return cast(AbstractAsyncContextManager[Call, None], self._rpc(method, context))

    @asynccontextmanager
    async def _rpc(self, method: str, context: Context) -> AsyncIterator[Call]:
        core = self.core
        code = grpc.StatusCode.OK
        with core.call(method, context.invocation_metadata(), context.time_remaining) as call:
            try:
                try:
                    yield call
                except asyncio.CancelledError as cancel:
                    cause = core.ending(call, cancel)
                    if not isinstance(
                        cause, errors.ReaderStalled | errors.EngineStalled | errors.Aborted
                    ):
                        code = code_of(cause)
                        context.set_trailing_metadata(messages.receipt(call.progress))
                        raise
                    # The server itself cancelled the call (its watchdog, or an Abort
                    # by id): the client still waits, so end it with a status instead.
                    task = asyncio.current_task()
                    if task is not None:
                        task.uncancel()
                    raise cause from None
                context.set_trailing_metadata(messages.receipt(call.progress))
            except Exception as error:
                status = to_status(error)
                code = status.code
                if code is grpc.StatusCode.INTERNAL:
                    log.exception("%s failed", method)
                elif code is not grpc.StatusCode.INVALID_ARGUMENT:
                    log.info("%s ended with %s: %s", method, code.name, status.message)
                metadata = status.trailing_metadata + messages.receipt(call.progress)
                await context.abort(status.code, status.message, metadata)
            finally:
                core.metrics.request_done(method, code.name)
                core.trace_end(call, code.name)

    # The write() form, not an async generator: a cancel lands in this coroutine's
    # own await, so the abort in ``Core.generation`` runs at that moment, rather
    # than whenever grpc gets round to closing a suspended generator. The
    # generated stubs only know the generator form.
    async def Generate(  # type: ignore[override]  # noqa: N802 - gRPC method name
        self, request: pb.GenerateRequest, context: Context
    ) -> None:
        if request.stream.resume_grace_ms:  # resumable: see core/resume.py
            async with self.rpc("Generate", context) as call:
                grace_s = self.core.resumes.grace_of(request)
                who = resume.identity(context.invocation_metadata())
                kept = self.core.resumable(request, call, who, grace_s)
                await self._follow(kept, 0, call, context)
            return
        async with (
            self.rpc("Generate", context) as call,
            self.core.generation(request, call) as gen,
        ):
            handle, progress, watched = gen.handle, gen.progress, gen.watched
            message = messages.StreamMessages(gen.plan.request_id).of
            flushes = self.core.flushes(gen)
            async with aclosing(flushes):  # closed at once, also on a cancel
                async for f in flushes:
                    msg = message(f, progress, handle)
                    # While a write waits, flow control is holding us back: the
                    # watchdog gives up on a reader that stays stuck.
                    watched.write_since = time.monotonic()
                    await context.write(msg)
                    watched.write_since = None

    async def Complete(  # noqa: N802
        self, request: pb.GenerateRequest, context: Context
    ) -> pb.CompleteResponse:
        limit = self.core.limits.max_message_bytes
        async with (
            self.rpc("Complete", context) as call,
            self.core.generation(request, call, whole_limit=limit) as gen,
        ):
            progress = gen.progress
            choices = messages.Choices(len(progress.counts))
            # Raises as soon as the answer cannot fit: the engine request is aborted.
            size = sizes.AnswerSize(limit)
            async for step in coalescing.steps(gen.handle, progress, gen.watched):
                for d in step:
                    size.add(d, choices.add(d))
            answer = pb.CompleteResponse(
                request_id=gen.plan.request_id,
                choices=choices.done(),
                usage=messages.usage(progress, gen.handle.cached_prompt_tokens),
                timing=messages.timing(progress),
            )
            size.check(answer)
            return answer

    async def GetModelInfo(  # noqa: N802
        self, request: pb.GetModelInfoRequest, context: Context
    ) -> pb.ModelInfo:
        async with self.rpc("GetModelInfo", context):
            return messages.model_info(self.core.engine.description, self.core.limits)

    async def GetLoad(  # noqa: N802
        self, request: pb.GetLoadRequest, context: Context
    ) -> pb.Load:
        async with self.rpc("GetLoad", context):
            return messages.load(self.core.engine.load(), self.core.admission.queue_depth)

    async def Abort(  # noqa: N802
        self, request: pb.AbortRequest, context: Context
    ) -> pb.AbortResponse:
        async with self.rpc("Abort", context):
            return pb.AbortResponse(aborted=self.core.abort(request.request_ids))

    async def Resume(  # type: ignore[override]  # noqa: N802
        self, request: pb.ResumeRequest, context: Context
    ) -> None:
        async with self.rpc("Resume", context) as call:
            who = resume.identity(context.invocation_metadata())
            after = request.after_sequence
            kept = self.core.resumes.find(request.request_id, who, after)
            await self._follow(kept, after, call, context)

    async def _follow(self, kept: KeptStream, after: int, call: Call, context: Context) -> None:
        """Write a resumable call's kept messages after ``after``, then its live ones."""
        async with self.core.following(kept, after, call) as follow:
            watched = follow.watched
            async for msg in follow.messages:
                watched.write_since = time.monotonic()
                await context.write(msg)
                watched.write_since = None

    async def Tokenize(  # noqa: N802
        self, request: pb.TokenizeRequest, context: Context
    ) -> pb.TokenizeResponse:
        async with self.rpc("Tokenize", context):
            prompt = requests.tokenize_input(request)
            add_special = (
                request.add_special_tokens if request.HasField("add_special_tokens") else True
            )
            engine = self.core.engine
            ids = await engine.tokenize(prompt, add_special_tokens=add_special)
            return pb.TokenizeResponse(token_ids=ids, tokens=engine.token_strings(ids))
