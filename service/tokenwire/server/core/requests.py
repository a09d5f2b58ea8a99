"""A ``GenerateRequest`` -> the engine request, validating every field once, for both doors.

``GenerateRequest`` (protobuf, no grpc) is the one request shape: the gRPC door
receives it, the HTTP door maps OpenAI's JSON onto it. A field that is malformed
or out of range raises ``InvalidArgument`` with the field's path
(``stopping.max_tokens``, ``messages.messages[2].role``); each door names it as
its client sent it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar, cast

from google.protobuf.message import Message

from tokenwire.v1 import generation_pb2 as pb

from ..engines.base import (
    DEFAULT_PRIORITY,
    ChatMessage,
    GenerationRequest,
    ModelDescription,
    PromptInput,
    SamplingOptions,
    ToolCall,
)
from . import constraints
from .errors import InvalidArgument, ModelNotFound
from .toolcalls import ToolPlan, plan_tools

T = TypeVar("T")

MAX_REQUEST_ID_LENGTH = 128
MAX_STOP_TOKEN_IDS = 256
MAX_STREAMING_STEP = 4096
MAX_BATCH_DELAY_MS = 60_000


@dataclass(frozen=True, slots=True)
class Limits:
    """Per-request bounds in force (from Settings)."""

    max_tokens: int
    default_max_tokens: int
    max_prompt_tokens: int
    max_n: int
    max_stop_strings: int
    max_stop_string_length: int
    max_top_logprobs: int
    max_concurrent_requests: int
    max_message_bytes: int
    max_grammar_bytes: int = 64 * 1024
    tool_call_parser: str = "hermes"  # how the model writes tool calls (toolcalls.FORMATS)


@dataclass(frozen=True, slots=True)
class StreamPlan:
    """How to group tokens into messages: see StreamOptions in the proto."""

    step: int = 1
    max_delay_s: float | None = None


@dataclass(frozen=True, slots=True)
class RequestPlan:
    """A validated GenerateRequest whose prompt is not tokenized yet."""

    request_id: str
    input_field: str  # "prompt", "token_ids" or "messages": names errors about the prompt
    prompt: PromptInput | None  # text or chat to tokenize, or None for token ids
    token_ids: tuple[int, ...]
    max_tokens: int | None
    template: GenerationRequest  # all but the prompt, max_tokens and stream_step, as validated
    stream: StreamPlan
    tools: ToolPlan | None = None  # tools offered: calls are parsed out of the answer

    def generation(
        self, prompt_ids: Sequence[int], model: ModelDescription, limits: Limits
    ) -> GenerationRequest:
        """The engine request, once the prompt's length is known."""
        if len(prompt_ids) > limits.max_prompt_tokens:
            raise InvalidArgument(
                self.input_field,
                f"prompt has {len(prompt_ids)} tokens, more than the limit of "
                f"{limits.max_prompt_tokens}",
            )
        room = model.max_context_length - len(prompt_ids)
        if room < 1:
            raise InvalidArgument(
                self.input_field,
                f"prompt has {len(prompt_ids)} tokens, the model's context is "
                f"{model.max_context_length}",
            )
        max_tokens = self.max_tokens
        if max_tokens is None:
            max_tokens = min(limits.default_max_tokens, room)
        elif max_tokens > room:
            raise InvalidArgument(
                "stopping.max_tokens",
                f"{len(prompt_ids)} prompt tokens + max_tokens {max_tokens} exceed the "
                f"model's context of {model.max_context_length}",
            )
        # The template holds every other field already validated: nothing to copy by hand.
        return dataclasses.replace(
            self.template,
            prompt_token_ids=tuple(prompt_ids),
            max_tokens=max_tokens,
            # Grouping that may wait for tokens (no zero delay bound) may take them in bulk.
            stream_step=self.stream.step if self.stream.max_delay_s != 0 else 1,
        )


def plan_request(req: pb.GenerateRequest, model: ModelDescription, limits: Limits) -> RequestPlan:
    """Validate a GenerateRequest; raise InvalidArgument / ModelNotFound."""
    adapter: str | None = None
    if req.model and req.model != model.name:
        if req.model not in model.adapters:
            served = ", ".join(repr(name) for name in (model.name, *model.adapters))
            raise ModelNotFound(
                f"model {req.model!r} is not served here; this server serves {served}"
            )
        adapter = req.model
    request_id = req.request_id or uuid.uuid4().hex
    if len(request_id) > MAX_REQUEST_ID_LENGTH or not request_id.isprintable():
        raise InvalidArgument(
            "request_id", f"must be printable and at most {MAX_REQUEST_ID_LENGTH} characters"
        )

    which = req.WhichOneof("input")
    prompt: PromptInput | None = None
    token_ids: tuple[int, ...] = ()
    if which == "prompt":
        if not req.prompt:
            raise InvalidArgument("prompt", "must not be empty")
        prompt = PromptInput(text=req.prompt)
    elif which == "token_ids":
        token_ids = tuple(req.token_ids.ids)
        if not token_ids:
            raise InvalidArgument("token_ids.ids", "must not be empty")
        for i, token in enumerate(token_ids):
            if token >= model.vocab_size:
                raise InvalidArgument(
                    f"token_ids.ids[{i}]",
                    f"{token} is not below the vocabulary size {model.vocab_size}",
                )
    elif which == "messages":
        prompt = PromptInput(messages=chat_messages(req.messages, "messages"))
    else:
        raise InvalidArgument("input", "set one of prompt, token_ids or messages")

    # Structured output and tools (docs/structured-output.md, docs/tools.md).
    tools = plan_tools(req, which, limits.tool_call_parser, limits.max_grammar_bytes)
    constraint = constraints.structured_output(req.structured_output, limits.max_grammar_bytes)
    if tools is not None:
        constraint = constraint or tools.forced
        assert prompt is not None and prompt.messages is not None  # plan_tools checked
        prompt = PromptInput(messages=prompt.messages, tools=tools.tools)
    if constraint is not None and req.stopping.ignore_eos:
        raise InvalidArgument(
            "stopping.ignore_eos",
            "cannot be combined with structured output or a forced tool call: the "
            "answer ends where its grammar does",
        )

    s, st, out = req.sampling, req.stopping, req.output
    n = _opt(s, "n", 1)
    if not 1 <= n <= limits.max_n:
        raise InvalidArgument("sampling.n", f"must be between 1 and {limits.max_n}")
    sampling = SamplingOptions(
        temperature=_float(s, "sampling", "temperature", 0.0, 2.0),
        top_p=_float(s, "sampling", "top_p", 0.0, 1.0, low_open=True),
        top_k=_opt(s, "top_k", cast(int | None, None)),
        min_p=_float(s, "sampling", "min_p", 0.0, 1.0),
        repetition_penalty=_float(s, "sampling", "repetition_penalty", 0.0, 10.0, low_open=True),
        presence_penalty=_float(s, "sampling", "presence_penalty", -2.0, 2.0),
        frequency_penalty=_float(s, "sampling", "frequency_penalty", -2.0, 2.0),
        seed=_opt(s, "seed", cast(int | None, None)),
        n=n,
    )

    max_tokens = _opt(st, "max_tokens", cast(int | None, None))
    if max_tokens is not None and not 1 <= max_tokens <= limits.max_tokens:
        raise InvalidArgument("stopping.max_tokens", f"must be between 1 and {limits.max_tokens}")
    min_tokens = _opt(st, "min_tokens", 0)
    if min_tokens > (max_tokens if max_tokens is not None else limits.max_tokens):
        raise InvalidArgument("stopping.min_tokens", "must not exceed max_tokens")
    if len(st.stop) > limits.max_stop_strings:
        raise InvalidArgument("stopping.stop", f"at most {limits.max_stop_strings} stop strings")
    for i, stop in enumerate(st.stop):
        if not 1 <= len(stop) <= limits.max_stop_string_length:
            raise InvalidArgument(
                f"stopping.stop[{i}]",
                f"must be 1 to {limits.max_stop_string_length} characters long",
            )
    if len(st.stop_token_ids) > MAX_STOP_TOKEN_IDS:
        raise InvalidArgument("stopping.stop_token_ids", f"at most {MAX_STOP_TOKEN_IDS} ids")
    for i, token in enumerate(st.stop_token_ids):
        if token >= model.vocab_size:
            raise InvalidArgument(
                f"stopping.stop_token_ids[{i}]",
                f"{token} is not below the vocabulary size {model.vocab_size}",
            )

    top_logprobs = _opt(out, "top_logprobs", 0)
    if top_logprobs > limits.max_top_logprobs:
        raise InvalidArgument("output.top_logprobs", f"must be at most {limits.max_top_logprobs}")

    step = _opt(req.stream, "streaming_step", 1)
    if step > MAX_STREAMING_STEP:
        raise InvalidArgument("stream.streaming_step", f"must be at most {MAX_STREAMING_STEP}")
    delay_ms = _opt(req.stream, "max_batch_delay_ms", cast(int | None, None))
    if delay_ms is not None and delay_ms > MAX_BATCH_DELAY_MS:
        raise InvalidArgument("stream.max_batch_delay_ms", f"must be at most {MAX_BATCH_DELAY_MS}")

    priority = DEFAULT_PRIORITY
    if req.HasField("priority"):
        priority = float(req.priority)
        if not (math.isfinite(priority) and 0.0 <= priority <= 1.0):
            raise InvalidArgument("priority", "must be in [0, 1]")

    template = GenerationRequest(
        request_id=request_id,
        priority=priority,
        adapter=adapter,
        prompt_token_ids=(),
        max_tokens=0,
        sampling=sampling,
        min_tokens=min_tokens,
        stop=tuple(st.stop),
        stop_token_ids=tuple(st.stop_token_ids),
        ignore_eos=_opt(st, "ignore_eos", False),
        include_stop_in_output=_opt(st, "include_stop_in_output", False),
        logprobs=_opt(out, "logprobs", False) or top_logprobs > 0,
        top_logprobs=top_logprobs,
        skip_special_tokens=_opt(out, "skip_special_tokens", True),
        constraint=constraint,
        tools=() if tools is None else tools.tools,
        tool_call=None if tools is None else tools.offered,
    )
    return RequestPlan(
        request_id=request_id,
        input_field=which,
        prompt=prompt,
        token_ids=token_ids,
        max_tokens=max_tokens,
        template=template,
        stream=StreamPlan(step, None if delay_ms is None else delay_ms / 1000.0),
        tools=tools if tools is not None and tools.parses else None,
    )


def chat_messages(messages: pb.ChatMessages, path: str) -> tuple[ChatMessage, ...]:
    if not messages.messages:
        raise InvalidArgument(f"{path}.messages", "must not be empty")
    out = []
    for i, m in enumerate(messages.messages):
        where = f"{path}.messages[{i}]"
        if not m.role:
            raise InvalidArgument(f"{where}.role", "must not be empty")
        calls = tuple(
            _tool_call(call, f"{where}.tool_calls[{j}]") for j, call in enumerate(m.tool_calls)
        )
        out.append(ChatMessage(m.role, m.content, calls, m.tool_call_id))
    return tuple(out)


def _tool_call(call: pb.ToolCall, where: str) -> ToolCall:
    """An earlier turn's call, as the chat template will write it back to the model."""
    if not call.name:
        raise InvalidArgument(f"{where}.name", "must not be empty")
    try:
        arguments = json.loads(call.arguments or "{}")
    except (ValueError, RecursionError):
        arguments = None
    if not isinstance(arguments, dict):
        raise InvalidArgument(f"{where}.arguments", "must be a JSON object")
    return ToolCall(call.id, call.name, call.arguments or "{}")


def tokenize_input(req: pb.TokenizeRequest) -> PromptInput:
    which = req.WhichOneof("input")
    if which == "prompt":
        return PromptInput(text=req.prompt)
    if which == "messages":
        return PromptInput(messages=chat_messages(req.messages, "messages"))
    raise InvalidArgument("input", "set one of prompt or messages")


def _opt(msg: Message, name: str, default: T) -> T:
    """An optional scalar's value, or ``default`` when the client left it unset."""
    return cast(T, getattr(msg, name)) if msg.HasField(name) else default


def _float(
    msg: Message, path: str, name: str, low: float, high: float, *, low_open: bool = False
) -> float | None:
    if not msg.HasField(name):
        return None
    value = float(getattr(msg, name))
    if not math.isfinite(value) or value > high or value < low or (low_open and value == low):
        bracket = "(" if low_open else "["
        raise InvalidArgument(f"{path}.{name}", f"must be in {bracket}{low}, {high}]")
    return value
