"""The engine seam: everything the servicer needs from an engine, and nothing more.

The shape follows TensorRT-LLM's ``GenerationResult``: ``submit()`` returns at once
with a handle; iterating the handle yields what each engine step produced; and
``abort()`` frees the request's slot without waiting.

    handle = engine.submit(request)
    try:
        async for step in handle:          # one engine step at a time
            for delta in step:             # one entry per sequence that advanced
                send(delta.index, delta.text, delta.token_ids)
    finally:
        if not handle.finished:
            handle.abort()                 # idempotent, never blocks

Nothing here (or anywhere under ``engines/``) imports grpc or protobuf: the
servicer converts these types to the protocol in ``convert.py``.

Error tree (answered per door by the table in ``server/core/errors.py``)::

    EngineError
    ├── EngineUnavailable    the engine cannot take requests (not ready, dead)
    ├── RequestFailed        this request failed inside the engine; others go on
    └── InvalidInput         the engine rejects an input value (names the field)
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

DEFAULT_SAMPLING_TEMPERATURE = 1.0
"""The temperature of a request that asks for variety (n > 1, a seed) and gives none:
vLLM's and OpenAI's default."""

FinishReason = Literal["stop", "length", "stop_sequence", "cancelled", "tool_calls"]
"""stop: end-of-sequence token; length: max_tokens or context; stop_sequence: a
stop string or stop token id; cancelled: aborted before it finished; tool_calls:
ended (end-of-sequence) after calling tools, which the server's tool-call parser
found in the text (engines never set it)."""


class EngineError(Exception):
    """Base class of every error an engine raises."""


class EngineUnavailable(EngineError):
    """The engine cannot take requests now: still loading, shut down, or dead."""


class RequestFailed(EngineError):
    """One request failed inside the engine; the engine keeps serving others."""


class InvalidInput(EngineError):
    """The engine rejects an input value, such as a token id outside the vocabulary."""

    def __init__(self, field_path: str, description: str) -> None:
        super().__init__(f"{field_path}: {description}")
        self.field_path = field_path
        self.description = description


DEFAULT_PRIORITY = 0.5  # a request's priority when it names none (TensorRT-LLM's default)


@dataclass(frozen=True, slots=True)
class ToolSpec:
    """A function the model may call (rendered through its chat template)."""

    name: str
    description: str = ""
    parameters_json: str = ""  # JSON Schema text of its arguments object; "" for none


@dataclass(frozen=True, slots=True)
class ToolCall:
    """One whole call of a tool, as an assistant turn carries it."""

    id: str
    name: str
    arguments: str  # JSON text


@dataclass(frozen=True, slots=True)
class ChatMessage:
    role: str
    content: str
    tool_calls: tuple[ToolCall, ...] = ()  # an assistant turn's calls
    tool_call_id: str = ""  # a tool turn: which call this is the result of


@dataclass(frozen=True, slots=True)
class PromptInput:
    """Text or a conversation to tokenize; exactly one of the two is set.

    ``tools`` go to the chat template with a conversation (``tools=`` of
    ``apply_chat_template``); they mean nothing to plain text.
    """

    text: str | None = None
    messages: tuple[ChatMessage, ...] | None = None
    tools: tuple[ToolSpec, ...] = ()


ConstraintKind = Literal["json_schema", "json_object", "regex", "grammar", "choice", "lark"]


@dataclass(frozen=True, slots=True)
class Constraint:
    """Structured output: what a sequence's whole text must match, validated and
    compiled by the core before it reaches an engine (docs/structured-output.md).

    ``value`` is the JSON Schema text (json_schema), the regular expression
    (regex), the GBNF grammar (grammar) or a Lark grammar in llguidance's dialect
    (lark: the server's own, for tool calls); empty for json_object and choice,
    whose answers are ``choices``. ``grammar`` is the same constraint in
    llguidance's grammar format, for engines that mask tokens with llguidance.
    """

    kind: ConstraintKind
    value: str = ""
    choices: tuple[str, ...] = ()
    grammar: str = ""


@dataclass(frozen=True, slots=True)
class SamplingOptions:
    """How to pick tokens; None means the engine's default.

    The default temperature: greedy (0) for a plain request, but 1.0 when the
    request asks for variety without giving a temperature (``n`` > 1 or a
    ``seed``), since several greedy answers are one answer n times and a seed
    means nothing to greedy decoding. ``effective_temperature`` says which.
    """

    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    seed: int | None = None
    n: int = 1

    @property
    def effective_temperature(self) -> float:
        """The temperature to sample at; 0 means greedy."""
        if self.temperature is not None:
            return self.temperature
        return DEFAULT_SAMPLING_TEMPERATURE if self.n > 1 or self.seed is not None else 0.0


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    """One validated generation, prompt already tokenized (see ``Engine.tokenize``)."""

    request_id: str
    prompt_token_ids: tuple[int, ...]
    max_tokens: int
    sampling: SamplingOptions = field(default_factory=SamplingOptions)
    min_tokens: int = 0
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    include_stop_in_output: bool = False
    logprobs: bool = False
    top_logprobs: int = 0
    skip_special_tokens: bool = True
    priority: float = DEFAULT_PRIORITY
    """In [0, 1], higher first: engines that schedule by priority take it."""
    adapter: str | None = None
    """The LoRA adapter to generate with, by name (one of ``ModelDescription.adapters``),
    or None for the base model."""
    stream_step: int = 1
    """Tokens the consumer groups into one message: an engine that has several ready
    may hand them over in one step (as TensorRT-LLM's ``stream_interval`` does),
    sparing a wake-up per token. A hint; one token per step is always correct."""
    constraint: Constraint | None = None
    """Structured output every sequence's text must match, or None."""
    tools: tuple[ToolSpec, ...] = ()
    """The tools offered (already in the prompt through the chat template)."""
    tool_call: Constraint | None = None
    """What a call of one of ``tools`` looks like in the server's tool-call format,
    when the model may choose to call one (``tool_choice`` auto): an engine that
    makes up its answers (the simulator) may answer with one. Real engines ignore
    it: their model decides, and the server parses what it wrote."""


@dataclass(frozen=True, slots=True)
class TopLogprob:
    token_id: int
    token: str
    logprob: float


@dataclass(frozen=True, slots=True)
class TokenLogprob:
    token_id: int
    token: str
    logprob: float
    top: tuple[TopLogprob, ...] = ()


@dataclass(frozen=True, slots=True)
class ToolCallDelta:
    """Part of a tool call as it streams: a call's first delta has its id and name,
    later ones fragments of its arguments' JSON text (OpenAI's shape)."""

    index: int  # which call of the sequence, from 0
    id: str = ""
    name: str = ""
    arguments: str = ""


@dataclass(slots=True)
class SequenceDelta:
    """What one sequence gained in one engine step; treat it as immutable.

    Not a frozen dataclass: one is made per sequence per engine step, and a
    frozen one's ``__init__`` (``object.__setattr__`` per field) costs four times
    as much, about half a microsecond of every stream message.

    ``text`` holds whole characters only: bytes of a character split across
    tokens wait until the character is complete. ``finish_reason`` is set on
    the sequence's last delta only, and that delta also carries what was held
    back, as the tokenizer's decode renders it (U+FFFD for a character that
    never completed). So a sequence's texts add up to the decode of its token
    ids, cut before a stop string or stop token id (docs/engines.md, "Text").
    A delta may carry text and no token ids (held text, released).
    """

    index: int
    token_ids: tuple[int, ...]
    text: str
    logprobs: tuple[TokenLogprob, ...] = ()
    cumulative_logprob: float | None = None
    finish_reason: FinishReason | None = None
    stop_match: str | int | None = None
    tool_calls: tuple[ToolCallDelta, ...] = ()
    """Tool calls found in the text (by the server's parser, never an engine); the
    text then carries only what was outside them."""


class GenerationHandle(Protocol):
    """A submitted request. Iterate it for steps; ``abort()`` to stop it.

    After ``abort()`` an engine may or may not yield a last step with
    ``finish_reason="cancelled"``; callers must not wait for one.
    """

    @property
    def finished(self) -> bool:
        """True once every sequence has finished or the request was aborted."""
        ...

    @property
    def cached_prompt_tokens(self) -> int:
        """Prompt tokens the engine served from its prefix cache."""
        ...

    def __aiter__(self) -> AsyncIterator[Sequence[SequenceDelta]]: ...

    def abort(self) -> None:
        """Stop the request and free its engine slot. Idempotent; never blocks."""
        ...


@dataclass(frozen=True, slots=True)
class ModelDescription:
    name: str
    engine: str
    max_context_length: int
    vocab_size: int
    eos_token_id: int
    adapters: tuple[str, ...] = ()  # LoRA adapters served, by name (a request's model)


@dataclass(frozen=True, slots=True)
class EngineLoad:
    """The engine's own account of its load (docs/engines.md, "Load")."""

    waiting: int  # requests the engine holds and does not generate for yet
    running: int  # requests the engine is generating for
    kv_cache_utilization: float  # fraction 0-1 of its KV-cache blocks in use
    kv_block_size: int  # tokens per KV-cache block
    kv_total_blocks: int  # KV-cache blocks in all


class Engine(Protocol):
    """An engine behind the servicer: simulated, transformers or TensorRT-LLM."""

    @property
    def description(self) -> ModelDescription: ...

    async def start(self) -> None:
        """Load the model; raise EngineUnavailable if it cannot serve."""
        ...

    async def tokenize(self, prompt: PromptInput, add_special_tokens: bool = True) -> list[int]:
        """Token ids of a prompt or conversation, as ``submit`` would see them."""
        ...

    def token_strings(self, token_ids: Sequence[int]) -> list[str]:
        """Each token as text, for display (byte tokens read as ``<0xNN>``)."""
        ...

    def submit(self, request: GenerationRequest) -> GenerationHandle:
        """Start a generation and return its handle at once."""
        ...

    def in_flight(self) -> int:
        """Requests submitted and not yet finished or aborted."""
        ...

    def load(self) -> EngineLoad:
        """The engine's load now, or its latest report of it: cheap, no I/O (it is
        read on every scrape of /metrics and every GetLoad)."""
        ...

    @property
    def healthy(self) -> bool:
        """False once the engine has failed and cannot serve any more."""
        ...

    async def close(self) -> None:
        """Abort what is live and release the engine."""
        ...
