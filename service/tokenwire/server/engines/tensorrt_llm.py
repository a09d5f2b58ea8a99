"""TensorRT-LLM behind the engine seam: ``generate_async(streaming=True)`` and ``abort()``.

    engine = TensorRTLLMEngine.from_settings(settings)  # checks the package is there
    await engine.start()                                # loads the model, in a thread
    handle = engine.submit(request)                     # on the server's event loop
    async for step in handle: ...                       # deltas per sequence index

What TensorRT-LLM does that shapes this module (docs/tensorrt_llm.md has the
details and the upstream files they come from):

- ``generate_async`` is not a coroutine, and the result it returns binds to the
  loop running at that moment: ``submit`` calls it on the server's loop.
- A result yields itself, mutated, one response at a time, and ``abort()`` only
  enqueues a cancellation that a queued request may never answer:
  ``_trtllm_handle.py`` turns that into deltas (every response already queued
  in one step) and an ``abort()`` that never waits. Leaving ``async for`` aborts
  nothing in TensorRT-LLM: the servicer calls ``abort()``.
- A ``RequestError`` fails one request (``RequestFailed``). Any other error from
  the executor is fatal: the engine turns unhealthy (``EngineUnavailable``).
- Only settings that are set become ``LLM(...)`` kwargs, and only names that
  exist become ``SamplingParams`` fields: ``_trtllm_params.py``.
- Structured output: the LLM gets a grammar engine (``guided_decoding_backend``)
  and a request's constraint becomes ``GuidedDecodingParams`` written for that
  engine (``_trtllm_guided.py``). TensorRT-LLM compiles it in its executor loop, so
  a guide it cannot use fails that request only, as a ``RequestError``.
- LoRA adapters (``--lora``): the LLM gets LoRA settings, and a request for an
  adapter its ``LoRARequest(name, id, path)``, made once per adapter at start
  with a stable id (``_trtllm_lora.py``).
- ``load()`` is TensorRT-LLM's own per-iteration stats (``get_stats_async``),
  which its runtime hands over in batches every 0.2 s and only after a request
  was submitted: a task drains them while requests are live and keeps the latest.
  Before the first record of a busy spell, and when stats never come, it reports
  the adapter's own in-flight count as running and nothing else; idle, nothing.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import inspect
import logging
from collections.abc import Sequence
from types import ModuleType
from typing import TYPE_CHECKING, Any

from . import _trtllm_guided as guided
from . import _trtllm_lora as lora
from . import _trtllm_params as trt
from ._trtllm_handle import TensorRTLLMHandle
from .base import (
    EngineLoad,
    EngineUnavailable,
    GenerationRequest,
    InvalidInput,
    ModelDescription,
    PromptInput,
    RequestFailed,
)
from .chat import render_chat

if TYPE_CHECKING:
    from ..settings import Settings

__all__ = ["TensorRTLLMEngine", "TensorRTLLMHandle"]

log = logging.getLogger("tokenwire.server")

ENGINE = "tensorrt-llm"
NOT_INSTALLED = (
    "TensorRT-LLM is not installed: pip install 'tokenwire[tensorrt-llm]' on NVIDIA's "
    "TensorRT-LLM container or with NVIDIA's package index, or choose another --engine"
)
_INLINE_TOKENIZE_CHARS = 8192  # longer prompts are tokenized off the event loop
# Iteration stats (docs/tensorrt_llm.md, "Load statistics"). The runtime queues them
# every 0.2 s; reading every 25 ms takes each batch well within the 50 ms a router
# scrapes at, and costs one non-blocking queue read when there is none.
_STATS_POLL_S = 0.025
# Once nothing is live, the last iterations' records arrive within one 0.2 s batch:
# drain that long (and some), then stop until the next request.
_STATS_SETTLE_S = 0.5
_STATS_PER_POLL = 256  # records taken in one poll, at most (the rest wait for the next)


class TensorRTLLMEngine:
    """Implements ``Engine`` on ``tensorrt_llm.LLM`` or, for built engines, its TensorRT twin."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._llm: Any = None
        self._tokenizer: Any = None  # TransformersTokenizer, or None
        self._takes_priority = False  # whether generate_async has a priority argument
        self._sampling_params: Any = None  # the SamplingParams class
        self._guided_params: Any = None  # GuidedDecodingParams, if SamplingParams takes it
        self._guided_backend: str | None = None  # the LLM's guided_decoding_backend
        self.request_error: type[Exception] = _Never  # RequestError, once imported
        self.response_queue: type | None = None  # AsyncQueue, once imported
        self._end_id: int | None = None  # passed only when there is no tokenizer
        self._lora_requests: dict[str, Any] = {}  # adapter name -> its LoRARequest
        self._live: set[TensorRTLLMHandle] = set()
        self._failed = False
        self._closed = False
        # The engine's latest report this busy spell (None: none yet, or idle), and the
        # KV pool's shape (tokens per block, blocks) from the latest report that had one.
        self._reported: EngineLoad | None = None
        self._kv_shape = (0, 0)
        self._stats_task: asyncio.Task[None] | None = None
        self._stats_wake = asyncio.Event()  # set on submit: requests are live
        # Name and engine are right from the start (the server reads them at once);
        # the limits come from the model in start().
        self._description = ModelDescription(
            name=settings.model,
            engine=ENGINE,
            max_context_length=settings.max_seq_len or 0,
            vocab_size=0,
            eos_token_id=0,
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> TensorRTLLMEngine:
        if importlib.util.find_spec("tensorrt_llm") is None:
            raise EngineUnavailable(NOT_INSTALLED)
        return cls(settings)

    @property
    def description(self) -> ModelDescription:
        return self._description

    @property
    def healthy(self) -> bool:
        return not (self._failed or self._closed)

    async def start(self) -> None:
        if self._llm is not None:
            return
        if self._closed:
            raise EngineUnavailable("the TensorRT-LLM engine is closed")
        # Importing TensorRT-LLM and loading the weights take a while and block.
        await asyncio.to_thread(self._load)
        self._stats_task = asyncio.get_running_loop().create_task(
            self._poll_stats(), name="tokenwire-trtllm-stats"
        )

    def _load(self) -> None:
        s = self._settings
        tensorrt_llm = _import("tensorrt_llm")
        llmapi = _import("tensorrt_llm.llmapi")
        if s.trtllm_backend == "tensorrt":
            llm_class = _import("tensorrt_llm._tensorrt_engine").LLM
        else:
            llm_class = tensorrt_llm.LLM  # the PyTorch backend
        adapters = lora.read_adapters(s.lora_adapters())
        lora_config = self._lora_setup(adapters) if adapters else None
        backend = guided.guided_backend(s)
        try:
            llm = llm_class(**trt.llm_kwargs(s, llmapi.KvCacheConfig, lora_config, backend))
        except Exception as error:
            raise EngineUnavailable(f"TensorRT-LLM could not load {s.model!r}: {error}") from error
        try:
            config = trt.model_config(llm, s)
            self._description = ModelDescription(
                name=s.model,
                engine=ENGINE,
                max_context_length=trt.context_length(llm, config, s),
                vocab_size=trt.vocab_size(llm, config),
                eos_token_id=trt.eos_token_id(llm, config),
                adapters=tuple(self._lora_requests),
            )
        except BaseException:
            llm.shutdown()
            raise
        self._tokenizer = llm.tokenizer
        self._end_id = None if llm.tokenizer is not None else self._description.eos_token_id
        self._sampling_params = tensorrt_llm.SamplingParams
        self._guided_backend = backend
        if "guided_decoding" in inspect.signature(tensorrt_llm.SamplingParams).parameters:
            self._guided_params = getattr(llmapi, "GuidedDecodingParams", None)
        self.request_error = llmapi.RequestError
        self.response_queue = _response_queue_class()
        # Newer versions take a scheduling priority; older ones have no such argument.
        self._takes_priority = "priority" in inspect.signature(llm.generate_async).parameters
        self._llm = llm

    def _lora_setup(self, adapters: list[lora.Adapter]) -> Any:
        """The LLM's ``LoraConfig``; one ``LoRARequest`` per adapter, kept for its requests."""
        # Newer versions keep LoraConfig in lora_helper; older ones in lora_manager
        # (which newer ones still re-export it from).
        try:
            helper = importlib.import_module("tensorrt_llm.lora_helper")
        except ImportError:
            helper = _import("tensorrt_llm.lora_manager")
        request_class = _import("tensorrt_llm.executor.request").LoRARequest
        requests: dict[str, Any] = {}
        for adapter in adapters:
            try:
                requests[adapter.name] = request_class(adapter.name, adapter.int_id, adapter.path)
            except ValueError as error:  # e.g. the path went missing
                raise EngineUnavailable(f"LoRA adapter {adapter.name!r}: {error}") from error
        modules = helper.get_default_trtllm_modules_to_hf_modules()
        try:
            config = helper.LoraConfig(**lora.lora_config_kwargs(adapters, modules))
        except (AssertionError, TypeError, ValueError) as error:
            raise EngineUnavailable(f"TensorRT-LLM refused the LoRA settings: {error}") from error
        self._lora_requests = requests
        return config

    async def tokenize(self, prompt: PromptInput, add_special_tokens: bool = True) -> list[int]:
        self._running()
        tokenizer = self._tokenizer
        field = "messages" if prompt.messages is not None else "prompt"
        if tokenizer is None:
            raise InvalidInput(field, "the model has no tokenizer here: send token_ids")
        if prompt.messages is not None:
            # Tools, tool calls and tool results reach the template (InvalidInput when
            # the model has no template or it refuses the conversation).
            text = render_chat(tokenizer.tokenizer, prompt)
            add_special_tokens = False  # the template writes BOS and the like itself
        else:
            text = prompt.text or ""
        if len(text) < _INLINE_TOKENIZE_CHARS:
            return list(tokenizer.encode(text, add_special_tokens=add_special_tokens))
        ids = await asyncio.to_thread(tokenizer.encode, text, add_special_tokens=add_special_tokens)
        return list(ids)

    def token_strings(self, token_ids: Sequence[int]) -> list[str]:
        if self._tokenizer is None:
            return ["" for _ in token_ids]
        return [s or "" for s in self._tokenizer.convert_ids_to_tokens(list(token_ids))]

    def decode(self, token_ids: Sequence[int], skip_special_tokens: bool) -> str | None:
        """The tokenizer's decode of ``token_ids``; None without a tokenizer."""
        if self._tokenizer is None:
            return None
        return str(self._tokenizer.decode(list(token_ids), skip_special_tokens=skip_special_tokens))

    def submit(self, request: GenerationRequest) -> TensorRTLLMHandle:
        llm = self._running()
        if request.stop and self._tokenizer is None:
            raise InvalidInput("stopping.stop", "the model has no tokenizer here to match text")
        kwargs = trt.sampling_kwargs(request, self._end_id)
        if request.constraint is not None:
            kwargs["guided_decoding"] = guided.guided_decoding(
                self._guided_params, self._guided_backend, request.constraint
            )
        try:
            params = self._sampling_params(**kwargs)
        except ValueError as error:
            raise InvalidInput(trt.invalid_field(str(error), "sampling"), str(error)) from error
        extra: dict[str, Any] = {"priority": request.priority} if self._takes_priority else {}
        if request.adapter is not None:
            lora_request = self._lora_requests.get(request.adapter)
            if lora_request is None:  # the server checks names: a bug if it comes to this
                raise InvalidInput("model", f"no LoRA adapter {request.adapter!r} is loaded")
            extra["lora_request"] = lora_request
        try:
            result = llm.generate_async(
                {"prompt_token_ids": list(request.prompt_token_ids)},
                sampling_params=params,
                streaming=True,
                **extra,
            )
        except self.request_error as error:  # an enqueue failure
            raise RequestFailed(f"TensorRT-LLM refused the request: {error}") from error
        except ValueError as error:  # the prompt is too long, mostly
            raise InvalidInput(trt.invalid_field(str(error), "prompt"), str(error)) from error
        except RuntimeError as error:
            if "shutting down" in str(error):
                self._failed = True
            raise EngineUnavailable(f"TensorRT-LLM cannot take requests: {error}") from error
        handle = TensorRTLLMHandle(self, request, result)
        self._live.add(handle)
        self._stats_wake.set()
        return handle

    def in_flight(self) -> int:
        return len(self._live)

    def load(self) -> EngineLoad:
        """The latest iteration-stats record's load while requests are live.

        Before this busy spell's first record (or with stats off) the adapter's own
        count: its in-flight requests as running, none waiting, KV unknown (0). Idle,
        no record is published (the runtime iterates only for requests), so it reads
        0 running and 0 in use, with the pool's shape as last reported.
        """
        live = len(self._live)
        reported = self._reported
        if reported is not None and live:
            return reported
        block_size, total_blocks = self._kv_shape
        return EngineLoad(
            waiting=0,
            running=live,
            kv_cache_utilization=0.0,
            kv_block_size=block_size,
            kv_total_blocks=total_blocks,
        )

    async def _poll_stats(self) -> None:
        """While requests are live, drain TensorRT-LLM's iteration stats and keep the
        latest; idle, wait for a submit. Draining all of them also keeps the LLM's
        stats queue, which nothing bounds, from growing."""
        loop = asyncio.get_running_loop()
        while True:
            await self._stats_wake.wait()
            self._stats_wake.clear()
            quiet_since: float | None = None
            while quiet_since is None or loop.time() - quiet_since < _STATS_SETTLE_S:
                if not await self._drain_stats():
                    return
                if self._live:
                    quiet_since = None
                elif quiet_since is None:
                    quiet_since = loop.time()
                await asyncio.sleep(_STATS_POLL_S)

    async def _drain_stats(self) -> bool:
        """Take the records queued now, without waiting; False once stats cannot be read.

        ``get_stats_async(0)`` never waits: an empty queue raises ``QueueEmpty``
        (``IndexError`` in older versions' race), and no timeout marks the stats
        iterator done, as one with a timeout > 0 would until the next submit.
        """
        llm = self._llm
        if llm is None:
            return False
        latest: EngineLoad | None = None
        try:
            taken = 0
            async for record in llm.get_stats_async(0):
                latest = trt.iteration_load(record) or latest
                taken += 1
                if taken >= _STATS_PER_POLL:
                    break
        except (asyncio.QueueEmpty, IndexError):
            pass
        except Exception:
            if not (self._failed or self._closed):
                log.warning("TensorRT-LLM iteration stats cannot be read", exc_info=True)
            return False
        if latest is not None:
            if latest.kv_total_blocks:
                self._kv_shape = (latest.kv_block_size, latest.kv_total_blocks)
            if self._live:  # idle, a late record of the last spell's end is no report
                self._reported = latest
        return True

    async def close(self) -> None:
        self._closed = True
        task, self._stats_task = self._stats_task, None
        if task is not None:
            task.cancel()
            if task.get_loop() is asyncio.get_running_loop():
                await asyncio.wait((task,))  # gone before the LLM is; close() stays cancellable
        for handle in list(self._live):
            handle.abort()
        llm, self._llm = self._llm, None
        if llm is not None:
            try:
                await asyncio.to_thread(llm.shutdown)
            except Exception:
                log.warning("TensorRT-LLM did not shut down cleanly", exc_info=True)

    def _running(self) -> Any:
        if self._failed or self._closed or self._llm is None:
            raise EngineUnavailable("the TensorRT-LLM engine is not running")
        return self._llm

    def release(self, handle: TensorRTLLMHandle) -> None:
        """A handle is done with the engine: finished, failed or aborted."""
        self._live.discard(handle)
        if not self._live:
            self._reported = None  # the next busy spell starts from the adapter's count

    def fail(self, error: BaseException) -> None:
        """The executor died under a handle: nothing more can be served."""
        if not self._failed:
            log.error("TensorRT-LLM failed; the engine cannot serve any more: %s", error)
        self._failed = True


class _Never(Exception):
    """Stands for RequestError until TensorRT-LLM is imported."""


def _response_queue_class() -> type | None:
    """``tensorrt_llm.llmapi.utils.AsyncQueue``, the queue a result reads its responses from.

    Only a queue of this class is drained ahead (docs/tensorrt_llm.md, "The response
    queue"); without it each step takes one response, as before.
    """
    try:
        queue = getattr(importlib.import_module("tensorrt_llm.llmapi.utils"), "AsyncQueue", None)
    except ImportError:
        return None
    return queue if isinstance(queue, type) else None


def _import(name: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as error:
        if error.name == "tensorrt_llm":
            raise EngineUnavailable(NOT_INSTALLED) from error
        raise EngineUnavailable(f"TensorRT-LLM cannot be imported: {error}") from error
    except (ImportError, OSError) as error:  # e.g. CUDA libraries missing
        raise EngineUnavailable(f"TensorRT-LLM cannot be imported: {error}") from error
