"""LoRA adapters on TensorRT-LLM: the LLM's ``lora_config``, and one ``LoRARequest`` each.

    adapters = read_adapters({"sql": "/adapters/sql"})        # checked, ids 1, 2, ...
    LoraConfig(**lora_config_kwargs(adapters, default_map))   # the LLM's LoRA settings
    llm.generate_async(..., lora_request=LoRARequest("sql", 1, "/adapters/sql"))

What TensorRT-LLM does that shapes this (docs/tensorrt_llm.md, "LoRA adapters",
has the upstream files):

- LoRA is on only with the LLM's LoRA settings: on the PyTorch backend a
  ``lora_config``; on the TensorRT backend ``enable_lora`` (the LoRA plugin).
  Without them a ``lora_request`` is silently ignored and the base model
  answers, so the engine always passes them when adapters are configured.
- The runtime loads an adapter at its first request and caches its weights
  under ``lora_int_id``: each adapter keeps one id for the process's life
  (1, 2, ... in the order given), and no two share one.
- A broken adapter directory surfaces only at that first request, so the
  engine checks each one at start: a Hugging Face (PEFT) LoRA directory with an
  ``adapter_config.json``; ``LoRARequest`` itself refuses a missing path.
- The PyTorch executor reads the target modules from ``lora_dir`` only when it
  holds exactly one directory; with several it wants ``lora_target_modules``
  (TensorRT-LLM's names), and with neither it reserves room for every module
  it knows. So one adapter goes in ``lora_dir``; several name the union of
  their modules, mapped with TensorRT-LLM's own table, or, when one names a
  module the table lacks (or a pattern such as ``all-linear``), none.
- ``max_lora_rank`` (default 64) bounds every adapter's rank: it is set to the
  largest rank configured. ``max_loras`` (adapters on the GPU at once) and
  ``max_cpu_loras`` (cached on the host) are the number of adapters, so a batch
  can mix all of them and none is ever evicted and reloaded.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from .base import EngineUnavailable

_CONFIG = "adapter_config.json"
_DEFAULT_MAX_RANK = 64  # LoraConfig.max_lora_rank's default


@dataclass(frozen=True, slots=True)
class Adapter:
    """One configured adapter, as read at start."""

    name: str
    int_id: int  # the runtime's cache key for its weights: stable, unique, from 1
    path: str  # its directory, absolute (the runtime may run in other processes)
    rank: int | None  # the largest rank its config names; None when it names none
    modules: tuple[str, ...] | None  # Hugging Face module names; None: a pattern, or none


def read_adapters(adapters: Mapping[str, str]) -> list[Adapter]:
    """The adapters ``--lora`` names, in order, with their ids; ``EngineUnavailable``
    naming the first that is not a Hugging Face LoRA adapter directory."""
    out: list[Adapter] = []
    for int_id, (name, path) in enumerate(adapters.items(), start=1):
        directory = Path(path).expanduser().resolve()
        config_file = directory / _CONFIG
        if not config_file.is_file():
            raise EngineUnavailable(
                f"LoRA adapter {name!r}: {directory} is not a Hugging Face (PEFT) adapter "
                f"directory (no {_CONFIG})"
            )
        try:
            config = json.loads(config_file.read_text())
        except (OSError, ValueError) as error:
            raise EngineUnavailable(
                f"LoRA adapter {name!r}: cannot read {config_file}: {error}"
            ) from error
        if not isinstance(config, dict) or config.get("peft_type", "LORA") != "LORA":
            kind = config.get("peft_type") if isinstance(config, dict) else None
            raise EngineUnavailable(f"LoRA adapter {name!r}: {directory} is a {kind} adapter")
        out.append(Adapter(name, int_id, str(directory), _rank(config), _modules(config)))
    return out


def lora_config_kwargs(
    adapters: Sequence[Adapter], trtllm_to_hf: Mapping[str, str]
) -> dict[str, object]:
    """``LoraConfig(**kwargs)`` serving ``adapters`` together.

    ``trtllm_to_hf`` is TensorRT-LLM's ``get_default_trtllm_modules_to_hf_modules()``.
    """
    count = len(adapters)
    ranks = [a.rank for a in adapters if a.rank]
    kwargs: dict[str, object] = {
        "max_lora_rank": max(ranks) if ranks else _DEFAULT_MAX_RANK,
        "max_loras": count,
        "max_cpu_loras": count,
    }
    if count == 1:
        kwargs["lora_dir"] = [adapters[0].path]  # TensorRT-LLM reads its modules there
        return kwargs
    from_hf = {hf: trtllm for trtllm, hf in trtllm_to_hf.items()}
    modules: set[str] = set()
    for adapter in adapters:
        names = [from_hf.get(m) for m in adapter.modules or ()]
        if not adapter.modules or None in names:
            return kwargs  # room for every module TensorRT-LLM knows
        modules.update(n for n in names if n is not None)
    kwargs["lora_target_modules"] = sorted(modules)
    return kwargs


def _rank(config: Mapping[str, object]) -> int | None:
    ranks = [config.get("r")]
    pattern = config.get("rank_pattern")
    if isinstance(pattern, Mapping):
        ranks.extend(pattern.values())
    whole = [r for r in ranks if isinstance(r, int) and not isinstance(r, bool) and r > 0]
    return max(whole, default=None)


def _modules(config: Mapping[str, object]) -> tuple[str, ...] | None:
    targets = config.get("target_modules")
    if isinstance(targets, list) and targets and all(isinstance(t, str) for t in targets):
        # PEFT matches a name by its last part (q_proj), or by a full dotted name.
        return tuple(sorted({t.rsplit(".", 1)[-1] for t in targets}))
    return None  # a regex or a pattern such as "all-linear": not a list of names
