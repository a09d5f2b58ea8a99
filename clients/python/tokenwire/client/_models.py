"""Plain, immutable results of the client's calls; built from protobuf in `_convert.py`."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from tokenwire.client._types import FinishReason


@dataclass(frozen=True, slots=True)
class TopLogprob:
    """One likely alternative at a position."""

    token_id: int
    token: str
    logprob: float


@dataclass(frozen=True, slots=True)
class TokenLogprob:
    """The log probability of one sampled token, and its top alternatives when asked for."""

    token_id: int
    token: str
    logprob: float
    top: tuple[TopLogprob, ...] = ()


@dataclass(frozen=True, slots=True)
class StopMatch:
    """The stop that ended a sequence: one of `stop` (text) or `stop_token_ids` (token_id)."""

    text: str | None = None
    token_id: int | None = None


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts of a whole request."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    cached_prompt_tokens: int


@dataclass(frozen=True, slots=True)
class Timing:
    """Where the server spent the time of a request, in milliseconds."""

    queue_ms: float
    time_to_first_token_ms: float
    total_ms: float


@dataclass(frozen=True, slots=True)
class ToolCall:
    """One whole call of a tool: run it, then send its result back in a tool turn.

        for call in completion.tool_calls:
            result = TOOLS[call.name](**call.parsed_arguments())
            messages.append({"role": "tool", "tool_call_id": call.id, "content": result})

    The assistant turn before those results may carry the calls themselves, as
    ``{"role": "assistant", "tool_calls": completion.tool_calls}``.
    """

    id: str
    """Unique in its conversation: a tool turn names it in ``tool_call_id``."""
    name: str
    arguments: str
    """The arguments object, as the model wrote it (JSON text)."""

    def parsed_arguments(self) -> dict[str, Any]:
        """The arguments as a dict; ValueError when they are not a JSON object (a
        call cut short by a cancel or by max_tokens)."""
        value = json.loads(self.arguments)
        if not isinstance(value, dict):
            raise ValueError(f"arguments of {self.name} are not a JSON object")
        return value


@dataclass(frozen=True, slots=True)
class ToolCallDelta:
    """Part of a tool call as it streams: a call's first delta has its `id` and
    `name`, later ones the next fragment of its `arguments` ("" where absent).
    `ToolCallAccumulator` puts them back together."""

    index: int
    """Which call of the sequence this is, from 0."""
    id: str
    name: str
    arguments: str


@dataclass(frozen=True, slots=True)
class Chunk:
    """One streamed piece of one sequence: the text and tokens new since the last chunk.

    `finish_reason` is set on a sequence's last chunk; `usage` and `timing` on the
    last chunk of the whole call. `tool_calls` carries the calls as they stream.
    """

    request_id: str
    index: int
    text: str
    token_ids: tuple[int, ...]
    completion_tokens: int
    finish_reason: FinishReason | None = None
    stop_match: StopMatch | None = None
    logprobs: tuple[TokenLogprob, ...] = ()
    cumulative_logprob: float | None = None
    usage: Usage | None = None
    timing: Timing | None = None
    tool_calls: tuple[ToolCallDelta, ...] = ()


@dataclass(frozen=True, slots=True)
class Choice:
    """One whole generated sequence."""

    index: int
    text: str
    token_ids: tuple[int, ...]
    finish_reason: FinishReason | None
    stop_match: StopMatch | None = None
    logprobs: tuple[TokenLogprob, ...] = ()
    cumulative_logprob: float | None = None
    tool_calls: tuple[ToolCall, ...] = ()


@dataclass(frozen=True, slots=True)
class Completion:
    """A whole generation, from `complete()` or a stream's `collect()`.

    `text`, `finish_reason` and `tool_calls` are those of the first sequence; with
    ``n > 1`` read `choices`.
    """

    request_id: str
    choices: tuple[Choice, ...]
    usage: Usage | None
    timing: Timing | None

    @property
    def text(self) -> str:
        return self.choices[0].text if self.choices else ""

    @property
    def finish_reason(self) -> FinishReason | None:
        return self.choices[0].finish_reason if self.choices else None

    @property
    def tool_calls(self) -> tuple[ToolCall, ...]:
        return self.choices[0].tool_calls if self.choices else ()


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds the server enforces on each request."""

    max_tokens: int
    default_max_tokens: int
    max_prompt_tokens: int
    max_n: int
    max_stop_strings: int
    max_stop_string_length: int
    max_top_logprobs: int
    max_concurrent_requests: int


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """What the server serves: the model, its engine, and the limits in force."""

    model: str
    engine: str
    max_context_length: int
    vocab_size: int
    eos_token_id: int
    limits: Limits


@dataclass(frozen=True, slots=True)
class Tokenization:
    """A tokenized prompt: ids and their text, in the same order."""

    token_ids: tuple[int, ...]
    tokens: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.token_ids)
