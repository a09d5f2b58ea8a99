"""Keyword arguments to protobuf requests, and protobuf responses to `_models`: in one place.

Only the options a caller passed are set, so that every field left out keeps the
server's default (each scalar in the proto is ``optional``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from tokenwire.client import _structured
from tokenwire.client._models import (
    Choice,
    Chunk,
    Completion,
    Limits,
    ModelInfo,
    StopMatch,
    Timing,
    Tokenization,
    TokenLogprob,
    ToolCall,
    ToolCallDelta,
    TopLogprob,
    Usage,
)
from tokenwire.client._types import FinishReason, GenerateOptions, Messages
from tokenwire.v1 import generation_pb2 as pb

# Option name -> the GenerateRequest sub-message that holds it.
_OPTION_GROUPS: dict[str, tuple[str, ...]] = {
    "sampling": (
        "temperature",
        "top_p",
        "top_k",
        "min_p",
        "repetition_penalty",
        "presence_penalty",
        "frequency_penalty",
        "seed",
        "n",
    ),
    "stopping": (
        "max_tokens",
        "min_tokens",
        "stop",
        "stop_token_ids",
        "ignore_eos",
        "include_stop_in_output",
    ),
    "output": ("logprobs", "top_logprobs", "skip_special_tokens"),
    "stream": ("streaming_step", "max_batch_delay_ms"),
}
_TOP_LEVEL = ("request_id", "model")
_REPEATED = frozenset({"stop", "stop_token_ids"})
OPTION_NAMES = frozenset(_TOP_LEVEL).union(*_OPTION_GROUPS.values(), _structured.OPTION_NAMES)

_FINISH_REASONS: dict[int, FinishReason] = {
    pb.FINISH_REASON_STOP: "stop",
    pb.FINISH_REASON_LENGTH: "length",
    pb.FINISH_REASON_STOP_SEQUENCE: "stop_sequence",
    pb.FINISH_REASON_CANCELLED: "cancelled",
    pb.FINISH_REASON_TOOL_CALLS: "tool_calls",
}


def generate_request(
    prompt: str | None,
    messages: Messages | None,
    token_ids: Sequence[int] | None,
    options: GenerateOptions,
) -> pb.GenerateRequest:
    """Build the request of `Generate` and `Complete`; raises TypeError on unknown options."""
    # A TypedDict only guards type-checked callers; a typo like `max_token=` must not
    # silently fall back to the server's default.
    values: Mapping[str, object] = options
    unknown = values.keys() - OPTION_NAMES
    if unknown:
        raise TypeError(f"unexpected keyword argument(s): {', '.join(sorted(unknown))}")
    request = pb.GenerateRequest(
        request_id=options.get("request_id", ""), model=options.get("model", "")
    )
    inputs = [x for x in (prompt, messages, token_ids) if x is not None]
    if len(inputs) != 1:
        raise TypeError("pass exactly one of prompt, messages or token_ids")
    if prompt is not None:
        request.prompt = prompt
    elif messages is not None:
        request.messages.CopyFrom(chat_messages(messages))
    elif token_ids is not None:
        request.token_ids.ids.extend(token_ids)
    for group, names in _OPTION_GROUPS.items():
        target = getattr(request, group)
        for name in names:
            if name not in values:
                continue
            value = values[name]
            if name in _REPEATED:
                getattr(target, name).extend([value] if isinstance(value, str) else value)
            else:
                setattr(target, name, value)
    _structured.apply(request, options)
    return request


def tokenize_request(
    prompt: str | None, messages: Messages | None, add_special_tokens: bool | None
) -> pb.TokenizeRequest:
    if (prompt is None) == (messages is None):
        raise TypeError("pass exactly one of prompt or messages")
    request = pb.TokenizeRequest()
    if prompt is not None:
        request.prompt = prompt
    elif messages is not None:
        request.messages.CopyFrom(chat_messages(messages))
    if add_special_tokens is not None:
        request.add_special_tokens = add_special_tokens
    return request


def chat_messages(messages: Messages) -> pb.ChatMessages:
    """``[{"role": "user", "content": "Hi"}]`` or ``[("user", "Hi")]`` to ChatMessages;
    dicts may carry ``tool_calls`` and ``tool_call_id`` (see `Message`)."""
    result = pb.ChatMessages()
    for i, message in enumerate(messages):
        if isinstance(message, tuple):
            role, content = message
            result.messages.add(role=role, content=content)
        else:
            result.messages.append(_structured.chat_message(message, f"messages[{i}]"))
    return result


def finish_reason(value: int) -> FinishReason | None:
    return _FINISH_REASONS.get(value)


def chunk(response: pb.GenerateResponse) -> Chunk:
    return Chunk(
        request_id=response.request_id,
        index=response.index,
        text=response.text,
        token_ids=tuple(response.token_ids),
        completion_tokens=response.completion_tokens,
        finish_reason=finish_reason(response.finish_reason),
        stop_match=_stop_match(response.stop_match) if response.HasField("stop_match") else None,
        logprobs=_logprobs(response.logprobs),
        cumulative_logprob=(
            response.cumulative_logprob if response.HasField("cumulative_logprob") else None
        ),
        usage=_usage(response.usage) if response.HasField("usage") else None,
        timing=_timing(response.timing) if response.HasField("timing") else None,
        tool_calls=tuple(
            ToolCallDelta(index=d.index, id=d.id, name=d.name, arguments=d.arguments)
            for d in response.tool_calls
        ),
    )


def completion(response: pb.CompleteResponse) -> Completion:
    return Completion(
        request_id=response.request_id,
        choices=tuple(
            Choice(
                index=choice.index,
                text=choice.text,
                token_ids=tuple(choice.token_ids),
                finish_reason=finish_reason(choice.finish_reason),
                stop_match=_stop_match(choice.stop_match)
                if choice.HasField("stop_match")
                else None,
                logprobs=_logprobs(choice.logprobs),
                cumulative_logprob=(
                    choice.cumulative_logprob if choice.HasField("cumulative_logprob") else None
                ),
                tool_calls=tuple(ToolCall(c.id, c.name, c.arguments) for c in choice.tool_calls),
            )
            for choice in response.choices
        ),
        usage=_usage(response.usage) if response.HasField("usage") else None,
        timing=_timing(response.timing) if response.HasField("timing") else None,
    )


def model_info(response: pb.ModelInfo) -> ModelInfo:
    limits = response.limits
    return ModelInfo(
        model=response.model,
        engine=response.engine,
        max_context_length=response.max_context_length,
        vocab_size=response.vocab_size,
        eos_token_id=response.eos_token_id,
        limits=Limits(
            max_tokens=limits.max_tokens,
            default_max_tokens=limits.default_max_tokens,
            max_prompt_tokens=limits.max_prompt_tokens,
            max_n=limits.max_n,
            max_stop_strings=limits.max_stop_strings,
            max_stop_string_length=limits.max_stop_string_length,
            max_top_logprobs=limits.max_top_logprobs,
            max_concurrent_requests=limits.max_concurrent_requests,
        ),
    )


def tokenization(response: pb.TokenizeResponse) -> Tokenization:
    return Tokenization(token_ids=tuple(response.token_ids), tokens=tuple(response.tokens))


def _stop_match(match: pb.StopMatch) -> StopMatch | None:
    which = match.WhichOneof("match")
    if which == "stop_text":
        return StopMatch(text=match.stop_text)
    if which == "stop_token_id":
        return StopMatch(token_id=match.stop_token_id)
    return None


def _logprobs(entries: Sequence[pb.TokenLogprob]) -> tuple[TokenLogprob, ...]:
    return tuple(
        TokenLogprob(
            token_id=entry.token_id,
            token=entry.token,
            logprob=entry.logprob,
            top=tuple(TopLogprob(t.token_id, t.token, t.logprob) for t in entry.top),
        )
        for entry in entries
    )


def _usage(usage: pb.Usage) -> Usage:
    return Usage(
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        total_tokens=usage.total_tokens,
        cached_prompt_tokens=usage.cached_prompt_tokens,
    )


def _timing(timing: pb.Timing) -> Timing:
    return Timing(
        queue_ms=timing.queue_ms,
        time_to_first_token_ms=timing.time_to_first_token_ms,
        total_ms=timing.total_ms,
    )
