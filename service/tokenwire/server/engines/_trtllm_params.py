"""Translations between tokenwire and TensorRT-LLM's LLM API, as pure functions.

Settings to ``LLM(...)`` kwargs, a request to ``SamplingParams`` kwargs, and
back: finish reasons, logprobs, the text that is safe to send, the model's
limits, and the load an iteration-stats record reports. The TensorRT-LLM
behaviour they rely on is in docs/tensorrt_llm.md, with the upstream files it
was read from.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .base import (
    EngineLoad,
    EngineUnavailable,
    FinishReason,
    GenerationRequest,
    TokenLogprob,
    TopLogprob,
)

if TYPE_CHECKING:
    from ..settings import Settings

# Finish reasons after which an output gets no more tokens ('not_finished' is a
# disaggregated context-only request's, which this adapter never sends).
ENDED = frozenset({"stop", "length", "timeout", "cancelled"})
_NO_LIMIT = 10**9  # HF's model_max_length is a huge sentinel when the model sets none


def llm_kwargs(
    settings: Settings,
    kv_cache_config: Callable[..., object],
    lora_config: object = None,
    guided_backend: str | None = None,
) -> dict[str, object]:
    """``LLM(**kwargs)`` for the settings that are set: the LLM refuses unknown kwargs.

    ``lora_config``: a ``LoraConfig`` when adapters are served (``_trtllm_lora.py``);
    ``guided_backend``: the grammar engine for structured output (``_trtllm_guided.py``).
    """
    kwargs: dict[str, object] = {"model": settings.model}
    if settings.tokenizer:
        kwargs["tokenizer"] = settings.tokenizer
    if settings.trust_remote_code:
        kwargs["trust_remote_code"] = True
    if settings.dtype != "auto":
        kwargs["dtype"] = settings.dtype
    if settings.tensor_parallel_size != 1:
        kwargs["tensor_parallel_size"] = settings.tensor_parallel_size
    if settings.kv_cache_memory_fraction is not None:
        fraction = settings.kv_cache_memory_fraction
        kwargs["kv_cache_config"] = kv_cache_config(free_gpu_memory_fraction=fraction)
    limits = {
        "max_batch_size": settings.max_batch_size,
        "max_seq_len": settings.max_seq_len,
        "max_num_tokens": settings.max_num_tokens,
    }
    kwargs.update((name, value) for name, value in limits.items() if value is not None)
    if lora_config is not None:
        # The PyTorch backend serves LoRA for a lora_config (and ignores enable_lora);
        # the TensorRT one builds the LoRA plugin in for enable_lora, taking its
        # largest rank from lora_config (docs/tensorrt_llm.md, "LoRA adapters").
        kwargs["lora_config"] = lora_config
        if settings.trtllm_backend == "tensorrt":
            kwargs["enable_lora"] = True
    if guided_backend is not None:
        # Unset, TensorRT-LLM has no guided decoder: the PyTorch backend then ignores a
        # request's guide (docs/tensorrt_llm.md, "Structured output").
        kwargs["guided_decoding_backend"] = guided_backend
    if settings.trtllm_backend == "pytorch":
        # Per-iteration stats (``get_stats_async``, what ``load()`` reads) are off by
        # default on the PyTorch backend; the TensorRT backend has them always, and its
        # LLM refuses this kwarg (docs/tensorrt_llm.md, "Load statistics").
        kwargs["enable_iter_perf_stats"] = True
    return kwargs


def sampling_kwargs(request: GenerationRequest, end_id: int | None) -> dict[str, object]:
    """``SamplingParams(**kwargs)`` for a request, with the names it really has.

    A request that asks for variety (n > 1 or a seed) and gives no temperature,
    top_p or top_k samples at temperature 1.0, as on the other engines; left to
    itself TensorRT-LLM would decode greedily, and refuse n > 1 outright.
    """
    s = request.sampling
    kwargs: dict[str, object] = {
        "max_tokens": request.max_tokens,  # the default is 32: always set it
        "n": s.n,  # best_of stays unset: it defaults to n, so outputs keep their order
        "detokenize": True,
        "skip_special_tokens": request.skip_special_tokens,
    }
    if s.temperature == 0.0:
        # Greedy. TensorRT-LLM wants temperature > 0 and calls top_k=1 greedy.
        kwargs["top_k"] = 1
    else:
        optional = {"temperature": s.temperature, "top_p": s.top_p, "top_k": s.top_k}
        if (
            s.temperature is None
            and s.top_p is None
            and s.top_k is None
            and s.effective_temperature
        ):
            # Every TensorRT-LLM version reads a top_p that is neither unset nor 0 as
            # sampling; 1.0 keeps the whole distribution.
            optional |= {"temperature": s.effective_temperature, "top_p": 1.0}
        optional["min_p"] = s.min_p
        kwargs.update((k, v) for k, v in optional.items() if v is not None)
    penalties = {
        "repetition_penalty": s.repetition_penalty,
        "presence_penalty": s.presence_penalty,
        "frequency_penalty": s.frequency_penalty,
        "seed": s.seed,
    }
    kwargs.update((k, v) for k, v in penalties.items() if v is not None)
    if request.min_tokens:
        kwargs["min_tokens"] = request.min_tokens
    if request.stop:
        kwargs["stop"] = list(request.stop)
    if request.stop_token_ids:
        kwargs["stop_token_ids"] = list(request.stop_token_ids)
    if request.include_stop_in_output:
        kwargs["include_stop_str_in_output"] = True
    if request.ignore_eos:
        kwargs["ignore_eos"] = True
    if request.logprobs:
        # Top-k logprobs per token; the sampled token is always among them.
        kwargs["logprobs"] = max(1, request.top_logprobs)
    if end_id is not None:  # only without a tokenizer: with one, TensorRT-LLM sets it
        kwargs["end_id"] = end_id
    return kwargs


# A ValueError from SamplingParams or generate_async names no field; its text does.
_FIELDS = (
    ("best_of", "sampling.n"),
    ("sampling_params.n", "sampling.n"),
    ("logprobs", "output.logprobs"),
    ("max_tokens (", "stopping.max_tokens"),
    ("top_p", "sampling.top_p"),
    ("top_k", "sampling.top_k"),
    ("temperature", "sampling.temperature"),
    ("one guide", "structured_output"),
)


def invalid_field(message: str, default: str) -> str:
    """The request field a TensorRT-LLM ValueError is about, as clients name it."""
    return next((name for needle, name in _FIELDS if needle in message), default)


def finish_reason(
    reason: str | None, stop_reason: object, *, cut: bool, at_length: bool
) -> tuple[FinishReason, str | int | None]:
    """tokenwire's finish reason and stop match for an output that has ended.

    'timeout' (the runtime's TIMED_OUT; tokenwire sets no per-request time
    budget) is reported as "length": the output was cut short by a limit. An
    output the request ended without a reason of its own (n > 1: another
    output's stop string ends the whole request) reads as "length" when it
    reached max_tokens and as "cancelled" otherwise.
    """
    if reason == "stop":
        if isinstance(stop_reason, str | int) and not isinstance(stop_reason, bool):
            return "stop_sequence", stop_reason
        return "stop", None
    if reason in ("length", "timeout"):
        return "length", None
    if reason == "cancelled" or cut or not at_length:
        return "cancelled", None
    return "length", None


def confirmed_end(text: str, final: bool, stops: Sequence[str]) -> int:
    """How much of an output's cumulative text will not change any more.

    Before the end, a trailing U+FFFD is a character whose bytes have not all
    arrived, and a tail that could still grow into a stop string may yet be cut
    from ``text`` by TensorRT-LLM. At the end all of it is settled: a U+FFFD
    then is how decode renders bytes that never completed.
    """
    end = len(text)
    if final:
        return end
    while end and text[end - 1] == "\ufffd":
        end -= 1
    if not stops:
        return end
    for size in range(min(end, max(len(s) for s in stops)), 0, -1):
        tail = text[end - size : end]
        if any(s.startswith(tail) for s in stops):
            return end - size
    return end


def token_logprobs(
    token_ids: Sequence[int],
    entries: Sequence[Any],
    top_n: int,
    token_strings: Callable[[Sequence[int]], list[str]],
) -> tuple[TokenLogprob, ...]:
    """Logprobs of sampled tokens, from ``dict[id, Logprob]`` entries (top-k by rank) or floats."""
    ranked: list[list[tuple[int, float]]] = []
    for entry in entries:
        if isinstance(entry, Mapping):
            items = sorted(entry.items(), key=_by_rank)[:top_n]
            ranked.append([(int(t), float(lp.logprob)) for t, lp in items])
    wanted = sorted({*token_ids, *(t for top in ranked for t, _ in top)})
    names = dict(zip(wanted, token_strings(wanted), strict=True))
    out: list[TokenLogprob] = []
    tops = iter(ranked)
    for token, entry in zip(token_ids, entries, strict=True):
        if isinstance(entry, Mapping):
            own = entry.get(token)
            value = float(own.logprob) if own is not None else math.nan
            top = tuple(TopLogprob(t, names[t], v) for t, v in next(tops))
        else:
            value, top = float(entry), ()
        out.append(TokenLogprob(token, names[token], value, top))
    return tuple(out)


def _by_rank(item: tuple[Any, Any]) -> tuple[float, float]:
    rank = item[1].rank
    return (math.inf if rank is None else float(rank), -float(item[1].logprob))


def iteration_load(record: object) -> EngineLoad | None:
    """The load one iteration-stats record reports; None for anything else.

    ``numQueuedRequests`` waiting, ``numActiveRequests`` running, and from
    ``kvCacheStats`` (null when the runtime has none) ``usedNumBlocks`` (else
    ``maxNumBlocks - freeNumBlocks``) over ``maxNumBlocks``, ``tokensPerBlock``
    and ``maxNumBlocks``, 0 where absent (docs/tensorrt_llm.md, "Load statistics").
    """
    if not isinstance(record, Mapping):
        return None
    running = _count(record.get("numActiveRequests"))
    waiting = _count(record.get("numQueuedRequests"))
    if running is None or waiting is None:
        return None
    kv = record.get("kvCacheStats")
    kv = kv if isinstance(kv, Mapping) else {}
    total = _count(kv.get("maxNumBlocks")) or 0
    used = _count(kv.get("usedNumBlocks"))
    if used is None:
        free = _count(kv.get("freeNumBlocks"))
        used = total - free if free is not None else 0
    return EngineLoad(
        waiting=waiting,
        running=running,
        kv_cache_utilization=min(max(used / total, 0.0), 1.0) if total else 0.0,
        kv_block_size=_count(kv.get("tokensPerBlock")) or 0,
        kv_total_blocks=total,
    )


def _count(value: object) -> int | None:
    """A non-negative whole number from JSON, else None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if not math.isfinite(value) or value < 0 or value != int(value):
        return None
    return int(value)


def model_config(llm: Any, settings: Settings) -> dict[str, Any]:
    """The model's config.json (an HF checkpoint's, or a built engine's), when local."""
    for directory in (getattr(llm, "_hf_model_dir", None), settings.model):
        path = Path(directory) / "config.json" if directory else None
        if path is not None and path.is_file():
            try:
                data = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            if isinstance(data, dict):
                return data
    return {}


def context_length(llm: Any, config: Mapping[str, Any], settings: Settings) -> int:
    """Prompt plus completion tokens the engine takes; ``llm.args.max_seq_len`` may be None."""
    hf = getattr(llm.tokenizer, "tokenizer", None)
    candidates = (
        getattr(llm.args, "max_seq_len", None),
        config.get("max_position_embeddings"),
        (config.get("build_config") or {}).get("max_seq_len"),  # a TensorRT engine's config
        getattr(hf, "model_max_length", None),
        settings.max_seq_len,
    )
    for value in candidates:
        if isinstance(value, int) and 0 < value < _NO_LIMIT:
            return value
    raise EngineUnavailable("cannot tell the model's context length: set --max-seq-len")


def vocab_size(llm: Any, config: Mapping[str, Any]) -> int:
    if llm.tokenizer is not None:
        return len(llm.tokenizer.tokenizer)
    value = config.get("vocab_size") or (config.get("pretrained_config") or {}).get("vocab_size")
    if isinstance(value, int) and value > 0:
        return value
    raise EngineUnavailable("the model has no tokenizer and its config names no vocab_size")


def eos_token_id(llm: Any, config: Mapping[str, Any]) -> int:
    value = llm.tokenizer.eos_token_id if llm.tokenizer is not None else None
    if value is None:
        value = config.get("eos_token_id")
    if isinstance(value, list) and value:
        value = value[0]
    if isinstance(value, int) and value >= 0:
        return value
    raise EngineUnavailable(
        "cannot tell the model's end-of-sequence token: it loaded without a tokenizer "
        "and its config.json names none; set --tokenizer"
    )
