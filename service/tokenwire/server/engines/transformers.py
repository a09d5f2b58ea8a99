"""A real model on CPU or CUDA through Hugging Face transformers, from a local directory.

    engine = TransformersEngine.from_settings(Settings(engine="transformers", model="/models/x"))
    await engine.start()          # loads in a thread; nothing is downloaded
    handle = engine.submit(request)
    async for step in handle: ...

One worker thread owns the model and runs all live sequences as one batch, a
token per step (``_hf_scheduler.py``); results reach the event loop through
``loop.call_soon_threadsafe`` and wait in each handle's queue (``_hf_handle.py``).
The library's own continuous batching is not used: it takes one generation
config for all requests (no per-request seed, penalties or top logprobs).

LoRA adapters (``--lora NAME=PATH``) load onto the model with PEFT at start, and
a request's adapter applies to its own batch rows only: base and adapter requests
share every batch (``_hf_lora.py``).

Structured output (``_hf_grammar.py``): llguidance reads the vocabulary once, at
start; ``submit`` binds a request's grammar to it (compiled once per grammar,
copied per sequence), and the worker masks each constrained sequence's logits
with it before sampling. Unconstrained sequences do no mask work at all.

Conversations, tools and tool calls go through the model's chat template
(``chat.render_chat``); the model decides whether to call a tool, and the server
parses what it wrote (``GenerationRequest.tool_call`` is only the simulator's).

Devices: ``auto`` is CUDA when available, else CPU. Dtypes: ``auto`` is the
checkpoint's own dtype on CUDA and float32 on CPU (half precision is slow there).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import _hf_lora
from ._hf_handle import Event, TransformersHandle, dispatch
from ._hf_loading import INSTALL_HINT, Loaded, load
from .base import (
    EngineLoad,
    EngineUnavailable,
    GenerationRequest,
    InvalidInput,
    ModelDescription,
    PromptInput,
)
from .chat import render_chat

if TYPE_CHECKING:
    from llguidance import LLMatcher

    from ..settings import Settings
    from ._hf_grammar import ModelGrammars
    from ._hf_scheduler import Scheduler

log = logging.getLogger("tokenwire.engine.transformers")

_DEFAULT_BATCH = 16
_JOIN_TIMEOUT_S = 10.0
_KV_BLOCK = 16  # tokens per nominal KV block in load reports


class TransformersEngine:
    """Implements ``Engine`` with a Hugging Face causal LM."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._max_batch = settings.max_batch_size or _DEFAULT_BATCH
        self._model_dir = Path(settings.model).expanduser()
        self._description = ModelDescription(
            name=self._model_dir.name or settings.model,
            engine="transformers",
            max_context_length=settings.max_seq_len or 0,
            vocab_size=0,
            eos_token_id=0,
        )
        self._tokenizer: Any = None
        self._scheduler: Scheduler | None = None
        self._grammars: ModelGrammars | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._live: set[TransformersHandle] = set()
        self._closed = False

    @classmethod
    def from_settings(cls, settings: Settings) -> TransformersEngine:
        for package in ("torch", "transformers", "tokenizers"):
            if importlib.util.find_spec(package) is None:
                raise EngineUnavailable(INSTALL_HINT)
        if settings.lora_adapters() and importlib.util.find_spec("peft") is None:
            raise EngineUnavailable(_hf_lora.INSTALL_HINT)
        return cls(settings)

    @property
    def description(self) -> ModelDescription:
        return self._description

    @property
    def healthy(self) -> bool:
        return not self._closed and self._scheduler is not None and self._scheduler.alive

    async def start(self) -> None:
        if self._scheduler is not None:
            return
        loaded, grammars = await asyncio.to_thread(self._load)
        from ._hf_scheduler import Scheduler, SchedulerConfig

        self._tokenizer = loaded.tokenizer
        self._grammars = grammars
        self._description = ModelDescription(
            name=self._description.name,
            engine="transformers",
            max_context_length=loaded.max_context_length,
            vocab_size=loaded.vocab_size,
            eos_token_id=loaded.eos_token_id,
            adapters=loaded.adapters,
        )
        self._loop = asyncio.get_running_loop()
        config = SchedulerConfig(
            device=loaded.device,
            max_batch_size=self._max_batch,
            eos_ids=loaded.eos_ids,
            text_vocab=_text_vocab(loaded),
            lora=bool(loaded.adapters),
        )
        self._scheduler = Scheduler(loaded.model, loaded.tokenizer, config, self._publish)
        self._scheduler.start()
        log.info(
            "loaded %s on %s (%s), context %d, vocabulary %d, LoRA adapters: %s",
            self._model_dir,
            loaded.device,
            loaded.dtype,
            loaded.max_context_length,
            loaded.vocab_size,
            ", ".join(loaded.adapters) or "none",
        )

    async def tokenize(self, prompt: PromptInput, add_special_tokens: bool = True) -> list[int]:
        tok = self._require_tokenizer()
        if prompt.messages is not None:
            text = render_chat(tok, prompt)
            # A chat template writes its own BOS and markers, as apply_chat_template(tokenize=True).
            ids: list[int] = tok.encode(text, add_special_tokens=False)
            return ids
        ids = tok.encode(prompt.text or "", add_special_tokens=add_special_tokens)
        return ids

    def token_strings(self, token_ids: Sequence[int]) -> list[str]:
        names = self._require_tokenizer().convert_ids_to_tokens(list(token_ids))
        return [name or "" for name in names]

    def submit(self, request: GenerationRequest) -> TransformersHandle:
        scheduler = self._scheduler
        if self._closed or scheduler is None or not scheduler.alive:
            raise EngineUnavailable("the transformers engine is not running")
        vocab = self._description.vocab_size
        if not request.prompt_token_ids:
            raise InvalidInput("token_ids.ids", "the prompt must not be empty")
        for i, token in enumerate(request.prompt_token_ids):
            if token >= vocab:
                raise InvalidInput(
                    f"token_ids.ids[{i}]", f"{token} is not below vocab size {vocab}"
                )
        context = self._description.max_context_length
        if len(request.prompt_token_ids) + request.max_tokens > context:
            raise InvalidInput("stopping.max_tokens", f"prompt + max_tokens exceed {context}")
        matchers: tuple[LLMatcher, ...] = ()
        if request.constraint is not None:
            assert self._grammars is not None  # set with the scheduler
            matchers = self._grammars.new(request.constraint, request.sampling.n)
        handle = TransformersHandle(request, self._live.discard, matchers)
        scheduler.add(handle.job)
        self._live.add(handle)
        return handle

    def in_flight(self) -> int:
        return len(self._live)

    def load(self) -> EngineLoad:
        """From the worker's batch. A dynamic cache has no fixed pool: the pool
        reported is the batch's most, ``max_batch_size`` sequences of the whole
        context, in nominal blocks of 16 tokens, and the blocks used are the
        positions the batch's caches hold now."""
        scheduler = self._scheduler
        if scheduler is None:
            return EngineLoad(0, 0, 0.0, _KV_BLOCK, 0)
        capacity = self._max_batch * self._description.max_context_length
        total = -(-capacity // _KV_BLOCK)
        used = -(-scheduler.cache_tokens // _KV_BLOCK)
        return EngineLoad(
            waiting=scheduler.waiting_jobs,
            running=scheduler.running_jobs,
            kv_cache_utilization=min(used / total, 1.0) if total else 0.0,
            kv_block_size=_KV_BLOCK,
            kv_total_blocks=total,
        )

    @property
    def running_sequences(self) -> int:
        """Sequences in the worker's batch: aborted ones leave it before its next step."""
        return 0 if self._scheduler is None else self._scheduler.live_sequences

    async def close(self) -> None:
        self._closed = True
        for handle in list(self._live):
            handle.abort()
        scheduler, self._scheduler = self._scheduler, None
        if scheduler is not None:
            scheduler.stop()
            if not await asyncio.to_thread(scheduler.join, _JOIN_TIMEOUT_S):
                log.warning("the transformers worker did not stop within %.0fs", _JOIN_TIMEOUT_S)

    def _load(self) -> tuple[Loaded, ModelGrammars]:
        """The loading thread: the model, then its vocabulary as llguidance reads it."""
        from ._hf_grammar import ModelGrammars

        loaded = load(self._settings, self._model_dir)
        return loaded, ModelGrammars(loaded.tokenizer, _text_vocab(loaded), loaded.eos_ids)

    def _require_tokenizer(self) -> Any:
        if self._tokenizer is None:
            raise EngineUnavailable("the transformers engine is not started")
        return self._tokenizer

    def _publish(self, events: list[Event]) -> None:
        """Worker thread: hand a step's results to the event loop."""
        assert self._loop is not None
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody is left to read them
            self._loop.call_soon_threadsafe(dispatch, events)


def _text_vocab(loaded: Loaded) -> int:
    """Ids from here on are embedding padding: never sampled, nothing to a grammar."""
    return min(loaded.vocab_size, len(loaded.tokenizer))
