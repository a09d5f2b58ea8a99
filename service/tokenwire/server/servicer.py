"""GenerationService: the four RPCs, on top of the call life cycle in ``calls.py``."""

from __future__ import annotations

import time
from contextlib import aclosing

from tokenwire.v1 import generation_pb2 as pb
from tokenwire.v1 import generation_pb2_grpc as pb_grpc

from . import convert, sizes, streaming
from .calls import Calls, Context
from .engines.base import GenerationHandle


class GenerationServicer(pb_grpc.GenerationServiceServicer):
    def __init__(self, calls: Calls) -> None:
        self.calls = calls

    # The write() form, not an async generator: a cancel lands in this coroutine's
    # own await, so the abort in ``Calls.generation`` runs at that moment, rather
    # than whenever grpc gets round to closing a suspended generator. The
    # generated stubs only know the generator form.
    async def Generate(  # type: ignore[override]  # noqa: N802 - gRPC method name
        self, request: pb.GenerateRequest, context: Context
    ) -> None:
        async with (
            self.calls.rpc("Generate", context) as call,
            self.calls.generation(request, context, call) as gen,
        ):
            handle, progress, watched = gen.handle, gen.progress, gen.watched

            def finalize(msg: pb.GenerateResponse) -> None:
                msg.usage.CopyFrom(_usage(handle, progress))
                msg.timing.CopyFrom(_timing(progress))

            messages = streaming.responses(
                handle, gen.plan.request_id, gen.plan.stream, progress, finalize, watched
            )
            async with aclosing(messages):  # closed at once, also on a cancel
                async for msg in messages:
                    # While a write waits, flow control is holding us back: the
                    # watchdog gives up on a reader that stays stuck.
                    watched.write_since = time.monotonic()
                    await context.write(msg)
                    watched.write_since = None

    async def Complete(  # noqa: N802
        self, request: pb.GenerateRequest, context: Context
    ) -> pb.CompleteResponse:
        async with (
            self.calls.rpc("Complete", context) as call,
            self.calls.generation(request, context, call, whole=True) as gen,
        ):
            progress, watched = gen.progress, gen.watched
            n = len(progress.counts)
            texts: list[list[str]] = [[] for _ in range(n)]
            choices = [pb.Choice(index=i) for i in range(n)]
            # Raises as soon as the answer cannot fit: the engine request is aborted.
            size = sizes.AnswerSize(self.calls.limits.max_message_bytes)
            steps = aiter(gen.handle)
            while True:
                watched.engine_since = time.monotonic()
                try:
                    step = await anext(steps)
                except StopAsyncIteration:
                    break
                progress.update(step)
                for d in step:
                    choice = choices[d.index]
                    texts[d.index].append(d.text)
                    choice.token_ids.extend(d.token_ids)
                    logprobs = convert.logprobs(d.logprobs) if d.logprobs else []
                    size.add(d, logprobs)
                    choice.logprobs.extend(logprobs)
                    if d.cumulative_logprob is not None:
                        choice.cumulative_logprob = d.cumulative_logprob
                    if d.finish_reason is not None:
                        choice.finish_reason = convert.FINISH_REASONS[d.finish_reason]
                        match = convert.stop_match(d.stop_match)
                        if match is not None:
                            choice.stop_match.CopyFrom(match)
            watched.engine_since = None
            for choice, parts in zip(choices, texts, strict=True):
                choice.text = "".join(parts)
            answer = pb.CompleteResponse(
                request_id=gen.plan.request_id,
                choices=choices,
                usage=_usage(gen.handle, progress),
                timing=_timing(progress),
            )
            size.check(answer)
            return answer

    async def GetModelInfo(  # noqa: N802
        self, request: pb.GetModelInfoRequest, context: Context
    ) -> pb.ModelInfo:
        async with self.calls.rpc("GetModelInfo", context):
            return convert.model_info(self.calls.engine.description, self.calls.limits)

    async def Tokenize(  # noqa: N802
        self, request: pb.TokenizeRequest, context: Context
    ) -> pb.TokenizeResponse:
        async with self.calls.rpc("Tokenize", context):
            prompt = convert.tokenize_input(request)
            add_special = (
                request.add_special_tokens if request.HasField("add_special_tokens") else True
            )
            engine = self.calls.engine
            ids = await engine.tokenize(prompt, add_special_tokens=add_special)
            return pb.TokenizeResponse(token_ids=ids, tokens=engine.token_strings(ids))


def _usage(handle: GenerationHandle, progress: streaming.Progress) -> pb.Usage:
    return convert.usage(
        progress.prompt_tokens, progress.completion_tokens, handle.cached_prompt_tokens
    )


def _timing(progress: streaming.Progress) -> pb.Timing:
    first = progress.first_token_at
    ttft = None if first is None else first - progress.started
    return convert.timing(progress.queue_s, ttft, time.perf_counter() - progress.started)
