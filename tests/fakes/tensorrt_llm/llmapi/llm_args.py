"""What ``LLM(**kwargs)`` accepts on each backend, and ``KvCacheConfig``.

docs/tensorrt_llm.md, "The LLM", has the kwargs.

The real lists are the fields of ``TorchLlmArgs`` and ``TrtLlmArgs``; these are
the documented serving kwargs plus a sample of each backend's own fields.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..lora_helper import LoraConfig


@dataclass(kw_only=True)
class KvCacheConfig:
    free_gpu_memory_fraction: float | None = None
    max_tokens: int | None = None
    enable_block_reuse: bool = True

    def __post_init__(self) -> None:
        fraction = self.free_gpu_memory_fraction
        if fraction is not None and not 0.0 <= fraction <= 1.0:
            raise ValueError(f"free_gpu_memory_fraction must be in [0, 1], got {fraction}")


# Serving kwargs both backends take.
COMMON_FIELDS = frozenset(
    {
        "kv_cache_config",
        "max_batch_size",
        "max_num_tokens",
        "max_seq_len",
        "max_beam_width",
        "return_perf_metrics",
        "num_postprocess_workers",
        "postprocess_tokenizer_dir",
        "gather_generation_logits",
        "enable_chunked_prefill",
        "iter_stats_max_iterations",
        # LoRA (BaseLlmArgs): the PyTorch backend serves adapters when lora_config is
        # set (enable_lora is then ignored); the TensorRT one builds the LoRA plugin in
        # when enable_lora is (docs/tensorrt_llm.md, "LoRA adapters").
        "enable_lora",
        "lora_config",
        # BaseLlmArgs: Optional[Literal["xgrammar", "llguidance"]], None (off) by default;
        # the TensorRT LLM builds with xgrammar only (docs/tensorrt_llm.md, "Structured
        # output").
        "guided_decoding_backend",
    }
)
GUIDED_DECODING_BACKENDS = ("xgrammar", "llguidance")
# TrtLlmArgs only: the PyTorch LLM refuses them with a hint to use _tensorrt_engine.
TRT_ONLY_FIELDS = frozenset(
    {
        "build_config",
        "workspace",
        "enable_build_cache",
        "fast_build",
        "calib_config",
        "extended_runtime_perf_knob_config",
        "embedding_parallel_mode",
    }
)
# TorchLlmArgs only: the TensorRT LLM calls them invalid.
TORCH_ONLY_FIELDS = frozenset(
    {"attn_backend", "cuda_graph_config", "disable_overlap_scheduler", "enable_iter_perf_stats"}
)


@dataclass
class LlmArgs:
    """``llm.args``: the constructor's values. ``max_seq_len`` stays None unless given."""

    model: str
    backend: str
    values: dict[str, object] = field(default_factory=dict)  # everything passed, for tests

    def _get(self, name: str) -> object:
        return self.values.get(name)

    @property
    def tokenizer(self) -> object:
        return self._get("tokenizer")

    @property
    def max_seq_len(self) -> int | None:
        value = self._get("max_seq_len")
        return value if isinstance(value, int) else None

    @property
    def max_batch_size(self) -> int | None:
        value = self._get("max_batch_size")
        return value if isinstance(value, int) else None

    @property
    def max_num_tokens(self) -> int | None:
        value = self._get("max_num_tokens")
        return value if isinstance(value, int) else None

    @property
    def kv_cache_config(self) -> KvCacheConfig | None:
        value = self._get("kv_cache_config")
        return value if isinstance(value, KvCacheConfig) else None

    @property
    def gather_generation_logits(self) -> bool:
        return bool(self._get("gather_generation_logits"))

    @property
    def enable_chunked_prefill(self) -> bool:
        return bool(self._get("enable_chunked_prefill"))

    @property
    def enable_iter_perf_stats(self) -> bool:
        """PyTorch backend only; off unless asked for (TorchLlmArgs)."""
        return bool(self._get("enable_iter_perf_stats"))

    @property
    def iter_stats_max_iterations(self) -> int | None:
        value = self._get("iter_stats_max_iterations")
        return value if isinstance(value, int) else None

    @property
    def guided_decoding_backend(self) -> str | None:
        value = self._get("guided_decoding_backend")
        return value if isinstance(value, str) else None

    @property
    def enable_lora(self) -> bool:
        return bool(self._get("enable_lora"))

    @property
    def lora_config(self) -> LoraConfig | None:
        value = self._get("lora_config")
        return value if isinstance(value, LoraConfig) else None
