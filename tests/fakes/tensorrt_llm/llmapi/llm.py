"""``LLM`` (PyTorch backend) and ``_TrtLLM`` (prebuilt engines), as llmapi/llm.py shapes them.

    llm = LLM("some/model", max_batch_size=8)       # ValueError on an unknown kwarg
    result = llm.generate_async({"prompt_token_ids": ids}, sampling_params, streaming=True)
    async for out in result: ...                     # the same RequestOutput, mutated
    async for stat in llm.get_stats_async(0): ...    # iteration stats, as dicts
    llm.shutdown()

A model that is an existing directory without tokenizer files loads with no
tokenizer (``llm.tokenizer`` is None), as ``load_hf_tokenizer`` does.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from .. import _fake
from ..executor.executor import GenerationExecutor
from ..executor.request import LoRARequest
from ..executor.result import GenerationResult
from ..executor.utils import RequestError
from ..lora_helper import LoraConfig, get_default_trtllm_modules_to_hf_modules, hf_target_modules
from ..sampling_params import SamplingParams
from .llm_args import (
    COMMON_FIELDS,
    GUIDED_DECODING_BACKENDS,
    TORCH_ONLY_FIELDS,
    TRT_ONLY_FIELDS,
    KvCacheConfig,
    LlmArgs,
)
from .tokenizer import FakeHFTokenizer, TransformersTokenizer

_DEFAULT_MAX_BATCH_SIZE = 64
_BUILT_MAX_SEQ_LEN = 4096  # what a prebuilt engine's config.json would say


class RequestOutput(GenerationResult):
    """What ``generate_async`` returns; ``prompt`` is None for token-id input."""

    prompt: str | None = None


class BaseLLM:
    _fields: frozenset[str] = COMMON_FIELDS

    def __init__(
        self,
        model: str | Path,
        tokenizer: str | Path | None = None,
        tokenizer_mode: str = "auto",
        skip_tokenizer_init: bool = False,
        trust_remote_code: bool = False,
        tensor_parallel_size: int = 1,
        dtype: str = "auto",
        revision: str | None = None,
        tokenizer_revision: str | None = None,
        **kwargs: Any,
    ) -> None:
        backend = kwargs.pop("backend", None)
        for key in kwargs:
            if key not in self._fields:
                raise ValueError(f"{type(self).__name__} got invalid argument: {key}")
        config = kwargs.get("kv_cache_config")
        if config is not None and not isinstance(config, KvCacheConfig):
            raise ValueError(f"kv_cache_config must be a KvCacheConfig, got {type(config)}")
        if tensor_parallel_size < 1:
            raise ValueError("tensor_parallel_size must be >= 1")
        guided = kwargs.get("guided_decoding_backend")
        if guided is not None and guided not in GUIDED_DECODING_BACKENDS:
            # The pydantic Literal check of the args model.
            raise ValueError(
                "1 validation error for LlmArgs\nguided_decoding_backend\n  Input should be "
                f"'xgrammar' or 'llguidance' [type=literal_error, input_value={guided!r}]"
            )
        lora_config = kwargs.get("lora_config")
        if lora_config is not None:
            if not isinstance(lora_config, LoraConfig):
                raise ValueError(f"lora_config must be a LoraConfig, got {type(lora_config)}")
            if not lora_config.lora_dir and not lora_config.lora_target_modules:
                # BaseLlmArgs.validate_lora_config_consistency warns, then expects them all.
                defaults = get_default_trtllm_modules_to_hf_modules()
                lora_config.lora_target_modules = list(defaults)
        values: dict[str, object] = {
            "tokenizer": tokenizer,
            "tokenizer_mode": tokenizer_mode,
            "skip_tokenizer_init": skip_tokenizer_init,
            "trust_remote_code": trust_remote_code,
            "tensor_parallel_size": tensor_parallel_size,
            "dtype": dtype,
            "revision": revision,
            "tokenizer_revision": tokenizer_revision,
            **kwargs,
        }
        self.args = LlmArgs(model=str(model), backend=backend or "tensorrt", values=values)
        model_dir = Path(model)
        self._hf_model_dir = model_dir if model_dir.is_dir() else None
        no_tokenizer_files = model_dir.is_dir() and not (model_dir / "tokenizer.json").exists()
        self._loras: dict[int, str] = {}  # the runtime's adapter cache: int id -> path
        self._tokenizer: TransformersTokenizer | None = None
        if not skip_tokenizer_init and (tokenizer is not None or not no_tokenizer_files):
            self._tokenizer = TransformersTokenizer(FakeHFTokenizer())
        self._check_guided_decoding_backend()
        self._executor: GenerationExecutor | None = GenerationExecutor(
            self._tokenizer,
            self.args.max_batch_size or _DEFAULT_MAX_BATCH_SIZE,
            iter_stats=self._iter_stats_enabled(),
            max_stats=self.args.iter_stats_max_iterations,
            guided_backend=self.args.guided_decoding_backend,
            unset_guides_fail=isinstance(self, _TrtLLM),
        )
        _fake.llms.append(self)

    @property
    def tokenizer(self) -> TransformersTokenizer | None:
        return self._tokenizer

    def generate_async(
        self,
        inputs: str | list[int] | dict[str, list[int]],
        sampling_params: SamplingParams | None = None,
        lora_request: object | None = None,
        prompt_adapter_request: object | None = None,
        streaming: bool = False,
        kv_cache_retention_config: object | None = None,
        disaggregated_params: object | None = None,
        _postproc_params: object | None = None,
        scheduling_params: object | None = None,
        cache_salt: str | None = None,
        priority: float = 0.5,
    ) -> RequestOutput:
        """Enqueue one request and return its handle at once (not a coroutine).

        ``priority`` as newer versions take it: [0, 1], higher first, ValueError
        outside (``executor/request.py``)."""
        if not 0.0 <= priority <= 1.0:
            raise ValueError(f"priority must be in [0, 1], got {priority}")
        _fake.priorities.append(priority)
        executor = self._executor
        if executor is None or executor.is_shutdown():
            raise RuntimeError("LLM is shutting down")
        params = self._prepare_sampling_params(sampling_params)
        prompt_ids = self._prompt_token_ids(inputs)
        self._check_arguments(len(prompt_ids), params)
        adapter = self._lora_weights(lora_request)
        executor._maybe_initialize_iteration_results()  # as GenerationExecutor.generate_async
        result = RequestOutput(
            executor.new_request_id(), prompt_ids, params, executor, self._tokenizer
        )
        executor.enqueue(result, adapter)
        return result

    def _lora_weights(self, lora_request: object | None) -> str | None:
        """The adapter weights a request runs with (the path they came from), or None.

        As the worker does (executor/base_worker.py): without a LoRA manager a
        ``lora_request`` is ignored, and the base model answers; with one, the
        adapter is loaded the first time its int id is seen and cached under that
        id, so a later request with the same id gets those weights whatever its
        path; an adapter that cannot be loaded fails the request (RequestError).
        """
        if lora_request is None:
            return None
        _fake.lora_requests.append(lora_request)
        if not self._lora_enabled():
            return None
        assert isinstance(lora_request, LoRARequest)
        uid = lora_request.adapter_id
        if uid not in self._loras:
            try:
                hf_target_modules(lora_request.path, get_default_trtllm_modules_to_hf_modules())
            except ValueError as error:
                raise RequestError(f"Failed to load LoRA adapter: {error}") from error
            self._loras[uid] = lora_request.path
        return self._loras[uid]

    def _lora_enabled(self) -> bool:
        raise NotImplementedError

    def _check_guided_decoding_backend(self) -> None:
        """Setting a backend up reads the tokenizer's vocabulary: there must be one."""
        if self.args.guided_decoding_backend is not None:
            assert self._tokenizer is not None  # get_guided_decoding_config's assert

    def get_stats_async(self, timeout: float | None = 2) -> AsyncIterator[dict[str, object]]:
        """Iteration stats: an async iterator of dicts (docs/tensorrt_llm.md, "Load
        statistics"). After ``shutdown()`` there is no executor (an AttributeError)."""
        executor = self._executor
        if executor is None:
            raise AttributeError("'NoneType' object has no attribute 'aget_stats'")
        return executor.aget_stats(timeout=timeout)

    def shutdown(self) -> None:
        if self._executor is not None:
            self._executor.shutdown()
            self._executor = None

    def __enter__(self) -> BaseLLM:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    def _prepare_sampling_params(self, params: SamplingParams | None) -> SamplingParams:
        if params is None:
            params = SamplingParams()
        if not isinstance(params, SamplingParams):
            raise TypeError(f"The sampling_params must be type SamplingParams, got {type(params)}")
        if params.end_id is None:
            if self._tokenizer is None:
                raise ValueError(
                    "tokenizer is required to reset end_id if it is None, or you can "
                    "explicitly specify the end_id for sampling_params"
                )
            params._setup(self._tokenizer)
        elif params.stop is not None and params._stop_word_ids is None:
            # The real one fails later, in _get_stop_words, with this RuntimeError.
            raise RuntimeError(f"SamplingParams.stop ({params.stop}) is not processed by tokenizer")
        return params

    def _prompt_token_ids(self, inputs: str | list[int] | dict[str, list[int]]) -> list[int]:
        if isinstance(inputs, dict):
            return list(inputs["prompt_token_ids"])
        if isinstance(inputs, str):
            if self._tokenizer is None:
                raise ValueError("a text prompt needs a tokenizer")
            return self._tokenizer.encode(inputs)
        if isinstance(inputs, list):
            return list(inputs)
        raise TypeError(f"The inputs must be type str or list of int, but got {type(inputs)}")

    def _check_arguments(self, prompt_len: int, params: SamplingParams) -> None:
        raise NotImplementedError

    def _iter_stats_enabled(self) -> bool:
        raise NotImplementedError


class _TorchLLM(BaseLLM):
    _fields = COMMON_FIELDS | TORCH_ONLY_FIELDS

    def _lora_enabled(self) -> bool:
        # The worker makes a LoRA manager on the PyTorch backend only for a lora_config.
        return self.args.lora_config is not None

    def _iter_stats_enabled(self) -> bool:
        # PyExecutor.get_latest_iteration_stats returns [] unless enable_iter_perf_stats.
        return self.args.enable_iter_perf_stats

    def __init__(self, model: str | Path, *args: Any, **kwargs: Any) -> None:
        backend = kwargs.pop("backend", "pytorch")
        trt_only = sorted(k for k in kwargs if k in TRT_ONLY_FIELDS)
        if trt_only:
            raise ValueError(
                f"The following arguments are specific to TensorRT backend and cannot be used "
                f"with PyTorch backend: {trt_only}.\nPlease use 'from "
                f"tensorrt_llm._tensorrt_engine import LLM' instead to use the TensorRT backend."
            )
        super().__init__(model, *args, backend=backend, **kwargs)
        lora_config = self.args.lora_config
        if lora_config is not None:
            # The PyTorch executor's resources (pyexecutor/_util.py): one lora_dir is read
            # for its target modules (load_torch_hf_lora); otherwise they must be given.
            if len(lora_config.lora_dir) == 1:
                to_hf = get_default_trtllm_modules_to_hf_modules()
                modules = hf_target_modules(lora_config.lora_dir[0], to_hf)
                lora_config.lora_target_modules = lora_config.lora_target_modules or modules
            assert len(lora_config.lora_target_modules) >= 1, (
                "Expecting at least one lora target module"
            )

    def _check_arguments(self, prompt_len: int, params: SamplingParams) -> None:
        max_num_tokens = self.args.max_num_tokens
        if max_num_tokens and not self.args.enable_chunked_prefill and prompt_len > max_num_tokens:
            raise ValueError(
                f"The sum of prompt length ({prompt_len}), query length (0) should not exceed "
                f"max_num_tokens ({max_num_tokens})"
            )


class _TrtLLM(BaseLLM):
    _fields = COMMON_FIELDS | TRT_ONLY_FIELDS

    def _check_guided_decoding_backend(self) -> None:
        """``_build_model``: the C++ executor gets xgrammar, and nothing else."""
        backend = self.args.guided_decoding_backend
        if backend is not None and backend != "xgrammar":
            raise ValueError(f"Unsupported guided decoding backend {backend}")
        if backend is not None and self._tokenizer is None:  # _xgrammar_tokenizer_info(None)
            raise AttributeError("'NoneType' object has no attribute 'eos_token_id'")

    def _lora_enabled(self) -> bool:
        # enable_lora builds the LoRA plugin in, and the worker makes a LoRA manager
        # for an engine that has it (UNCERTAIN for a prebuilt engine: its own build).
        return self.args.enable_lora

    def _iter_stats_enabled(self) -> bool:
        # The C++ executor keeps iterStatsMaxIterations records (1000 by default); 0 is none.
        return self.args.iter_stats_max_iterations != 0

    def _check_arguments(self, prompt_len: int, params: SamplingParams) -> None:
        max_seq_len = self.args.max_seq_len or _BUILT_MAX_SEQ_LEN
        if prompt_len + params.max_tokens > max_seq_len:
            raise ValueError(
                f"The sum of prompt length ({prompt_len}) and query length (0) max_tokens "
                f"({params.max_tokens}) should not exceed max_seq_len ({max_seq_len})"
            )
        if params.logprobs and not self.args.gather_generation_logits:
            raise ValueError(
                f"`sampling_params.logprobs={params.logprobs}` requires "
                "`gather_generation_logits=True` to be passed explicitly to the `LLM()` "
                "constructor."
            )


class LLM(_TorchLLM):
    """The default ``tensorrt_llm.LLM``: the PyTorch backend."""
