"""OpenAI request bodies -> ``GenerateRequest``, the one request shape the core validates.

The HTTP door checks only what is OpenAI's own (JSON types, OpenAI's spellings,
fields we cannot honour) and maps every field onto the native contract; ranges
and limits are checked once, by the core, for both doors. A field the core
refuses comes back under its gRPC path (``stopping.max_tokens``): ``param_for``
turns it into the parameter this client sent (``max_completion_tokens``).

Unknown fields are ignored, as OpenAI does. A known field that would change the
answer and that we cannot honour (``logit_bias``, ``echo``, the deprecated
``functions``...) is refused with 400, never silently dropped.

Structured output and tools map in ``openai_tools.py``; a conversation's earlier
calls and results come as assistant ``tool_calls`` and ``tool`` turns.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from tokenwire.v1 import generation_pb2 as pb

from ..core.errors import InvalidArgument
from . import openai_tools
from .jsonargs import boolean, get, int_list, integer, is_int, set_bool, set_float, text, text_list

Kind = Literal["chat", "completion"]

# Known OpenAI fields we cannot honour, with the value that means "off".
_REFUSED: dict[str, tuple[object, ...]] = {
    "functions": (None, []),
    "function_call": (None, "none", "auto"),
    "logit_bias": (None, {}),
    "echo": (None, False),
    "suffix": (None, ""),
    "audio": (None,),
    "prediction": (None,),
}
# Only chat takes tools; completions refuse them as OpenAI's API has none.
_CHAT_ONLY: dict[str, tuple[object, ...]] = {
    "tools": (None, []),
    "tool_choice": (None, "none", "auto"),
    "parallel_tool_calls": (None,),
}
_TEXT_ONLY = ("text",)
_MAX_TOKEN_ID = 2**32 - 1


@dataclass(frozen=True, slots=True)
class OpenAIRequest:
    """A parsed OpenAI request: the native request plus how to answer in OpenAI's shape."""

    kind: Kind
    request: pb.GenerateRequest
    stream: bool
    include_usage: bool
    logprobs: bool  # per-token logprobs wanted in the answer
    top_logprobs: int
    token_ids: bool  # vLLM's return_token_ids: each choice carries its token ids too
    # gRPC field path prefix -> the parameter name this client used.
    params: Mapping[str, str] = field(default_factory=dict)

    def param_for(self, path: str) -> str:
        """The client's parameter for a core field path (``stopping.stop[1]`` -> ``stop[1]``)."""
        for prefix in sorted(self.params, key=len, reverse=True):
            if path == prefix or path.startswith((prefix + ".", prefix + "[")):
                name, rest = self.params[prefix], path[len(prefix) :]
                # An empty name drops a message level: "sampling.top_p" -> "top_p".
                return name + rest if name else rest.lstrip(".")
        return path


def parse(kind: Kind, body: object) -> OpenAIRequest:
    """Validate an OpenAI body's shape and map it; raise InvalidArgument naming the param."""
    if not isinstance(body, dict):
        raise InvalidArgument("body", "must be a JSON object")
    refused = _REFUSED if kind == "chat" else _REFUSED | _CHAT_ONLY
    for name, off in refused.items():
        if name in body and body[name] not in off:
            raise InvalidArgument(name, "is not supported by this server")
    modalities = body.get("modalities")
    if modalities is not None and modalities != ["text"]:
        raise InvalidArgument("modalities", "only ['text'] is supported")

    req = pb.GenerateRequest()
    params = _base_params()
    model = text(body, "model", required=False)
    if model:
        req.model = model
    if kind == "chat":
        _messages(body, req, params)
        openai_tools.tools(body, req, params)
    else:
        _prompt(body, req, params)
    openai_tools.structured(body, req, params)

    s, st, out = req.sampling, req.stopping, req.output
    set_float(body, "temperature", s)
    set_float(body, "top_p", s)
    set_float(body, "min_p", s)
    set_float(body, "repetition_penalty", s)
    set_float(body, "presence_penalty", s)
    set_float(body, "frequency_penalty", s)
    top_k = integer(body, "top_k")
    if top_k is not None and top_k not in (-1, 0):  # -1 and 0 mean "off" in vLLM
        if top_k < 0:
            raise InvalidArgument("top_k", "must be -1 (off) or a positive integer")
        s.top_k = top_k
    seed = integer(body, "seed", bits=64)
    if seed is not None:
        # OpenAI takes any 64-bit integer; engines take the bits as given.
        s.seed = seed % (1 << 64)
    n = integer(body, "n")
    if n is not None:
        if n < 1:
            raise InvalidArgument("n", "must be at least 1")
        s.n = n
    best_of = integer(body, "best_of")
    if best_of is not None and best_of != (n or 1):
        raise InvalidArgument("best_of", "is not supported (only best_of == n)")

    max_tokens = integer(body, "max_completion_tokens")
    if max_tokens is not None:
        params["stopping.max_tokens"] = "max_completion_tokens"
    else:
        max_tokens = integer(body, "max_tokens")
    if max_tokens is not None:
        if max_tokens < 1:
            raise InvalidArgument(params["stopping.max_tokens"], "must be at least 1")
        st.max_tokens = max_tokens
    min_tokens = integer(body, "min_tokens")
    if min_tokens is not None:
        if min_tokens < 0:
            raise InvalidArgument("min_tokens", "must not be negative")
        st.min_tokens = min_tokens
    stop = body.get("stop")
    if isinstance(stop, str):
        st.stop.append(stop)
        params["stopping.stop[0]"] = "stop"
    elif stop is not None:
        st.stop.extend(text_list(stop, "stop"))
    for i, token in enumerate(int_list(body.get("stop_token_ids"), "stop_token_ids")):
        if not 0 <= token <= _MAX_TOKEN_ID:  # the contract's ids are uint32
            raise InvalidArgument(f"stop_token_ids[{i}]", f"must be between 0 and {_MAX_TOKEN_ID}")
        st.stop_token_ids.append(token)
    set_float(body, "priority", req)
    set_bool(body, "ignore_eos", st, "ignore_eos")
    set_bool(body, "include_stop_str_in_output", st, "include_stop_in_output")
    set_bool(body, "skip_special_tokens", out, "skip_special_tokens")

    logprobs, top = _logprobs(kind, body, params)
    if logprobs:
        out.logprobs = True
    if top:
        out.top_logprobs = top

    stream = boolean(body, "stream") or False
    options = body.get("stream_options")
    include_usage = False
    if options is not None:
        if not isinstance(options, dict):
            raise InvalidArgument("stream_options", "must be an object")
        if not stream:
            raise InvalidArgument("stream_options", "is only allowed when stream is true")
        include_usage = bool(boolean(options, "include_usage", "stream_options.include_usage"))
        step = integer(options, "streaming_step", "stream_options.streaming_step")
        if step is not None:
            if step < 0:
                raise InvalidArgument("stream_options.streaming_step", "must not be negative")
            req.stream.streaming_step = step
        delay = integer(options, "max_batch_delay_ms", "stream_options.max_batch_delay_ms")
        if delay is not None:
            if delay < 0:
                raise InvalidArgument("stream_options.max_batch_delay_ms", "must not be negative")
            req.stream.max_batch_delay_ms = delay
        grace = integer(options, "resume_grace_ms", "stream_options.resume_grace_ms")
        if grace is not None:  # resumable (docs/resume.md); the cap is the core's check
            if not 0 <= grace < 2**32:
                raise InvalidArgument("stream_options.resume_grace_ms", "must not be negative")
            req.stream.resume_grace_ms = grace
    token_ids = bool(boolean(body, "return_token_ids"))
    return OpenAIRequest(kind, req, stream, include_usage, logprobs, top, token_ids, params)


def _base_params() -> dict[str, str]:
    return {
        "sampling": "",
        "stopping": "",
        "output": "",
        "stopping.max_tokens": "max_tokens",
        "stopping.include_stop_in_output": "include_stop_str_in_output",
        "stream": "stream_options",
        "messages.messages": "messages",
        "prompt": "prompt",
        "token_ids.ids": "prompt",
        "request_id": "X-Request-Id",
    }


def _messages(body: dict[str, Any], req: pb.GenerateRequest, params: dict[str, str]) -> None:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidArgument("messages", "must be a non-empty array")
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise InvalidArgument(where, "must be an object")
        role = text(m, "role", f"{where}.role")
        turn = req.messages.messages.add(role=role, content=_content(m.get("content"), where))
        turn.tool_call_id = text(m, "tool_call_id", f"{where}.tool_call_id", required=False)
        calls = m.get("tool_calls")
        if calls is None:
            continue
        if not isinstance(calls, list):
            raise InvalidArgument(f"{where}.tool_calls", "must be an array")
        for j, call in enumerate(calls):
            at = f"{where}.tool_calls[{j}]"
            function = openai_tools.function_of(call, at)
            arguments = function.get("arguments", "{}")
            if not isinstance(arguments, str):
                raise InvalidArgument(f"{at}.function.arguments", "must be a string of JSON")
            turn.tool_calls.add(
                id=text(call, "id", f"{at}.id", required=False),
                name=text(function, "name", f"{at}.function.name"),
                arguments=arguments,
            )
            for name in ("name", "arguments"):
                params[f"messages.messages[{i}].tool_calls[{j}].{name}"] = f"{at}.function.{name}"


def _content(content: object, where: str) -> str:
    """A message's text: a string, or OpenAI's list of text parts joined."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise InvalidArgument(f"{where}.content", "must be a string or an array of parts")
    texts = []
    for j, part in enumerate(content):
        kind = get(part, "type", f"{where}.content[{j}]")
        if kind not in _TEXT_ONLY:
            raise InvalidArgument(f"{where}.content[{j}].type", f"{kind!r} parts are not supported")
        texts.append(text(part, "text", f"{where}.content[{j}].text"))
    return "".join(texts)


def _prompt(body: dict[str, Any], req: pb.GenerateRequest, params: dict[str, str]) -> None:
    prompt = body.get("prompt")
    # OpenAI's batch forms (several prompts in one request) are refused: one
    # request is one stream here, as it is for the engine's abort and receipts.
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str | list):
        prompt = prompt[0]
        params["prompt"] = "prompt[0]"
        params["token_ids.ids"] = "prompt[0]"
    if isinstance(prompt, str):
        req.prompt = prompt
    elif isinstance(prompt, list) and prompt and all(is_int(t) for t in prompt):
        if any(t < 0 for t in prompt):
            raise InvalidArgument(params["token_ids.ids"], "token ids must not be negative")
        if any(t > _MAX_TOKEN_ID for t in prompt):  # the contract's ids are uint32
            raise InvalidArgument(
                params["token_ids.ids"], f"token ids must be at most {_MAX_TOKEN_ID}"
            )
        req.token_ids.ids.extend(prompt)
    elif isinstance(prompt, list) and len(prompt) > 1:
        raise InvalidArgument("prompt", "one prompt per request: batches are not supported")
    else:
        raise InvalidArgument("prompt", "must be a string or an array of token ids")


def _logprobs(kind: Kind, body: dict[str, Any], params: dict[str, str]) -> tuple[bool, int]:
    if kind == "chat":
        wanted = bool(boolean(body, "logprobs"))
        top = integer(body, "top_logprobs") or 0
        if top < 0:
            raise InvalidArgument("top_logprobs", "must not be negative")
        if top and not wanted:
            raise InvalidArgument("top_logprobs", "requires logprobs to be true")
        params["output.top_logprobs"] = "top_logprobs"
        return wanted, top
    # Completions: ``logprobs`` is the number of alternatives (0 = the chosen token only).
    value = body.get("logprobs")
    if value is None or value is False:
        return False, 0
    if not is_int(value) or value < 0:
        raise InvalidArgument("logprobs", "must be a non-negative integer")
    params["output.top_logprobs"] = "logprobs"
    return True, int(value)
