"""Type aliases shared by the sync and async clients."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal, TypedDict

FinishReason = Literal["stop", "length", "stop_sequence", "cancelled", "tool_calls"]
"""Why a sequence ended. stop: the model's end-of-sequence token; length: max_tokens
or the model's context; stop_sequence: one of `stop` or `stop_token_ids` matched;
cancelled: aborted before it finished; tool_calls: it ended with tool calls."""

Message = Mapping[str, object] | tuple[str, str]
"""One chat turn: ``{"role": "user", "content": "Hi"}`` or ``("user", "Hi")``.

An assistant turn may carry the calls it made, ``"tool_calls": [...]``, each a
`ToolCall`, ``{"id", "name", "arguments"}`` or OpenAI's ``{"id", "type": "function",
"function": {"name", "arguments"}}`` (arguments a dict or JSON text); its
``content`` may then be left out. A tool turn answers one call:
``{"role": "tool", "tool_call_id": "call_...", "content": "18 degrees"}``.
"""

Messages = Sequence[Message]

Tool = Mapping[str, object]
"""A function the model may call, in OpenAI's shape ``{"type": "function", "function":
{"name", "description", "parameters"}}`` or flat ``{"name", "description",
"parameters"}``; ``parameters`` is the JSON Schema of its arguments object, a dict or
JSON text (left out: no arguments)."""

MetadataLike = Mapping[str, str] | Sequence[tuple[str, str]]
"""gRPC metadata sent with every call: a mapping or (key, value) pairs."""

ChannelOptions = Sequence[tuple[str, str | int]]
"""gRPC channel arguments, e.g. ``[("grpc.max_receive_message_length", 64 << 20)]``."""


class GenerateOptions(TypedDict, total=False):
    """Keyword options of `generate()`, `chat()` and `complete()`.

    Every option left out keeps the server's default (the proto's fields are
    ``optional``), so passing ``temperature=0`` is not the same as leaving it out.
    """

    max_tokens: int
    """Most tokens to generate per sequence (at least 1)."""
    min_tokens: int
    """Fewest tokens before end-of-sequence or a stop may end a sequence."""
    stop: str | Sequence[str]
    """Stop when the text contains one of these strings."""
    stop_token_ids: Sequence[int]
    """Stop when one of these token ids is generated."""
    ignore_eos: bool
    """Keep generating past end-of-sequence, up to max_tokens or a stop."""
    include_stop_in_output: bool
    """Keep the matched stop string in the text."""
    temperature: float
    """Softmax temperature in [0, 2]; 0 is greedy."""
    top_p: float
    """Nucleus sampling threshold in (0, 1]."""
    top_k: int
    """Sample from the k most likely tokens only; 0 disables the filter."""
    min_p: float
    """Drop tokens less likely than min_p times the most likely one."""
    repetition_penalty: float
    """Penalty (> 0) on tokens already present; 1 is none."""
    presence_penalty: float
    """Additive penalty in [-2, 2] on tokens already present."""
    frequency_penalty: float
    """Additive penalty in [-2, 2] scaled by how often a token appeared."""
    seed: int
    """Random seed: the same request and seed give the same output."""
    n: int
    """Number of sequences to generate; each is streamed with its own index."""
    logprobs: bool
    """Report the log probability of each sampled token."""
    top_logprobs: int
    """Also report this many most likely alternatives per token."""
    skip_special_tokens: bool
    """Leave special tokens out of the text (server default: true)."""
    streaming_step: int
    """Send a response once this many new tokens exist; 0 sends whatever is ready."""
    max_batch_delay_ms: int
    """Longest time tokens may be held back to fill a step."""
    request_id: str
    """Caller's id, echoed on every response; the server assigns one when unset."""
    model: str
    """Must name the served model when set (see `model_info()`)."""

    # Structured output: at most one of the five.
    json_schema: Mapping[str, object] | str
    """The answer is JSON valid against this JSON Schema (a dict, or its JSON text)."""
    json_object: bool
    """True: the answer is a JSON object, any object (False: no constraint)."""
    regex: str
    """The whole answer matches this regular expression."""
    grammar: str
    """The answer matches the root rule of this GBNF grammar (llama.cpp's EBNF)."""
    choice: Sequence[str]
    """The answer is exactly one of these strings."""

    # Tools: need `messages`; calls come back in `tool_calls`.
    tools: Sequence[Tool]
    """Functions the model may call."""
    tool_choice: str
    """"auto" (the default with tools), "none", "required" (at least one call), or a
    tool's name (a call of that tool); a required or named call is forced and its
    arguments validate against the tool's parameters."""
    parallel_tool_calls: bool
    """False: a sequence makes one call at most, which the server enforces on a forced
    call (server default: true)."""
