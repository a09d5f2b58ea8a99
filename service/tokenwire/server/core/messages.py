"""Engine types -> the contract's messages (both doors send them): stream messages, whole
answers, usage, timing, the usage receipt."""

from __future__ import annotations

import time
from collections.abc import Sequence

from tokenwire.v1 import generation_pb2 as pb

from ..engines.base import (
    EngineLoad,
    FinishReason,
    GenerationHandle,
    ModelDescription,
    SequenceDelta,
    TokenLogprob,
)
from .coalescing import Flush
from .progress import Progress
from .requests import Limits
from .toolparse import merge_calls

FINISH_REASONS: dict[FinishReason | None, pb.FinishReason] = {
    None: pb.FINISH_REASON_UNSPECIFIED,
    "stop": pb.FINISH_REASON_STOP,
    "length": pb.FINISH_REASON_LENGTH,
    "stop_sequence": pb.FINISH_REASON_STOP_SEQUENCE,
    "cancelled": pb.FINISH_REASON_CANCELLED,
    "tool_calls": pb.FINISH_REASON_TOOL_CALLS,
}


def stop_match(match: str | int | None) -> pb.StopMatch | None:
    if match is None:
        return None
    if isinstance(match, str):
        return pb.StopMatch(stop_text=match)
    return pb.StopMatch(stop_token_id=match)


def logprobs(items: Sequence[TokenLogprob]) -> list[pb.TokenLogprob]:
    return [
        pb.TokenLogprob(
            token_id=lp.token_id,
            token=lp.token,
            logprob=lp.logprob,
            top=[
                pb.TopLogprob(token_id=t.token_id, token=t.token, logprob=t.logprob) for t in lp.top
            ],
        )
        for lp in items
    ]


def response(
    request_id: str,
    index: int,
    deltas: Sequence[SequenceDelta],
    completion_tokens: int,
) -> pb.GenerateResponse:
    """One stream message from one or more consecutive deltas of one sequence."""
    last = deltas[-1]
    if len(deltas) == 1:
        text, ids, lps, calls = last.text, last.token_ids, last.logprobs, last.tool_calls
    else:
        text = "".join(d.text for d in deltas)
        ids = tuple(t for d in deltas for t in d.token_ids)
        lps = tuple(lp for d in deltas for lp in d.logprobs)
        calls = merge_calls(d.tool_calls for d in deltas)
    msg = pb.GenerateResponse(
        request_id=request_id,
        index=index,
        text=text,
        token_ids=ids,
        completion_tokens=completion_tokens,
        finish_reason=FINISH_REASONS[last.finish_reason],
    )
    if lps:
        msg.logprobs.extend(logprobs(lps))
    if calls:
        msg.tool_calls.extend(
            pb.ToolCallDelta(index=c.index, id=c.id, name=c.name, arguments=c.arguments)
            for c in calls
        )
    if last.cumulative_logprob is not None:
        msg.cumulative_logprob = last.cumulative_logprob
    match = stop_match(last.stop_match)
    if match is not None:
        msg.stop_match.CopyFrom(match)
    return msg


def stream_message(
    request_id: str, flush: Flush, progress: Progress, handle: GenerationHandle
) -> pb.GenerateResponse:
    """A stream's message for one flush; the call's last carries usage and timing."""
    msg = response(request_id, flush.index, flush.deltas, flush.completion_tokens)
    if flush.last:
        msg.usage.CopyFrom(usage(progress, handle.cached_prompt_tokens))
        msg.timing.CopyFrom(timing(progress))
    return msg


class StreamMessages:
    """One gRPC stream's messages, most of them written into one reused object.

    grpc.aio serializes a message inside ``context.write`` before that call first
    awaits (``_ServicerContext.write`` passes ``serialize(...)`` as an argument),
    so once a write has returned the object is free for the next flush. Setting
    its five fields costs a third of building a message anew, a few hundred
    nanoseconds of every message. Flushes with logprobs, a stop match or several
    deltas, and the call's last (usage, timing), get a message of their own.
    """

    __slots__ = ("_msg", "_request_id")

    def __init__(self, request_id: str) -> None:
        self._request_id = request_id
        self._msg = pb.GenerateResponse(request_id=request_id)

    def of(self, flush: Flush, progress: Progress, handle: GenerationHandle) -> pb.GenerateResponse:
        """The message for ``flush``; valid until the next call."""
        deltas = flush.deltas
        d = deltas[0]
        if (
            len(deltas) > 1
            or flush.last
            or d.logprobs
            or d.cumulative_logprob is not None
            or d.stop_match is not None
            or d.tool_calls
        ):
            return stream_message(self._request_id, flush, progress, handle)
        msg = self._msg
        msg.index = flush.index
        msg.text = d.text
        msg.token_ids[:] = d.token_ids
        msg.completion_tokens = flush.completion_tokens
        msg.finish_reason = FINISH_REASONS[d.finish_reason]
        return msg


def load(engine: EngineLoad, queue_depth: int) -> pb.Load:
    """GetLoad's answer: the numbers the load metrics export."""
    return pb.Load(
        num_requests_waiting=queue_depth + engine.waiting,
        num_requests_running=engine.running,
        kv_cache_utilization=engine.kv_cache_utilization,
        kv_block_size=engine.kv_block_size,
        kv_total_blocks=engine.kv_total_blocks,
    )


def usage(progress: Progress, cached: int) -> pb.Usage:
    return pb.Usage(
        prompt_tokens=progress.prompt_tokens,
        completion_tokens=progress.completion_tokens,
        total_tokens=progress.prompt_tokens + progress.completion_tokens,
        cached_prompt_tokens=cached,
    )


def timing(progress: Progress) -> pb.Timing:
    ttft = progress.ttft_s
    return pb.Timing(
        queue_ms=progress.queue_s * 1000.0,
        time_to_first_token_ms=(ttft or 0.0) * 1000.0,
        total_ms=(time.perf_counter() - progress.started) * 1000.0,
    )


def receipt(progress: Progress | None) -> tuple[tuple[str, str], ...]:
    """Trailing metadata on every ending of a generation, so that gateways can bill
    and debug a call (an aborted one too) without reading its messages."""
    if progress is None:
        return ()
    abort_reason = progress.abort_reason
    finish = "aborted" if abort_reason else ",".join(f or "none" for f in progress.finishes)
    md = (
        ("tokenwire-prompt-tokens", str(progress.prompt_tokens)),
        ("tokenwire-completion-tokens", str(progress.completion_tokens)),
        ("tokenwire-finish", finish),
    )
    return (*md, ("tokenwire-abort-reason", abort_reason)) if abort_reason else md


class Choices:
    """A Complete answer's choices, built from the same deltas a stream carries."""

    __slots__ = ("_choices", "_texts")

    def __init__(self, n: int) -> None:
        self._choices = [pb.Choice(index=i) for i in range(n)]
        self._texts: list[list[str]] = [[] for _ in range(n)]

    def add(self, d: SequenceDelta) -> list[pb.TokenLogprob]:
        """Add one delta; returns its logprobs as added (for the size check)."""
        choice = self._choices[d.index]
        self._texts[d.index].append(d.text)
        for c in d.tool_calls:  # a call's first delta opens it; the rest extend it
            if c.index >= len(choice.tool_calls):
                choice.tool_calls.add(id=c.id, name=c.name)
            choice.tool_calls[c.index].arguments += c.arguments
        choice.token_ids.extend(d.token_ids)
        lps = logprobs(d.logprobs) if d.logprobs else []
        choice.logprobs.extend(lps)
        if d.cumulative_logprob is not None:
            choice.cumulative_logprob = d.cumulative_logprob
        if d.finish_reason is not None:
            choice.finish_reason = FINISH_REASONS[d.finish_reason]
            match = stop_match(d.stop_match)
            if match is not None:
                choice.stop_match.CopyFrom(match)
        return lps

    def done(self) -> list[pb.Choice]:
        for choice, parts in zip(self._choices, self._texts, strict=True):
            choice.text = "".join(parts)
        return self._choices


def model_info(model: ModelDescription, limits: Limits) -> pb.ModelInfo:
    """The model and the limits a request can actually reach: a prompt takes at least
    one token of the context and the answer at least one, so neither may have it all."""
    room = max(model.max_context_length - 1, 1)
    max_tokens = min(limits.max_tokens, room)
    return pb.ModelInfo(
        model=model.name,
        engine=model.engine,
        max_context_length=model.max_context_length,
        vocab_size=model.vocab_size,
        eos_token_id=model.eos_token_id,
        adapters=model.adapters,
        limits=pb.Limits(
            max_tokens=max_tokens,
            default_max_tokens=min(limits.default_max_tokens, max_tokens),
            max_prompt_tokens=min(limits.max_prompt_tokens, room),
            max_n=limits.max_n,
            max_stop_strings=limits.max_stop_strings,
            max_stop_string_length=limits.max_stop_string_length,
            max_top_logprobs=limits.max_top_logprobs,
            max_concurrent_requests=limits.max_concurrent_requests,
        ),
    )
