"""Loading a causal LM and its tokenizer from local directories (never the Hub).

Runs in a thread (``asyncio.to_thread``): reading weights takes seconds to minutes.
Every way loading can fail becomes ``EngineUnavailable`` naming the path (or the
LoRA adapter: ``_hf_lora.py`` puts them on the model).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._hf_lora import attach
from .base import EngineUnavailable

if TYPE_CHECKING:
    import torch

    from ..settings import Settings

INSTALL_HINT = "the transformers engine needs: pip install 'tokenwire[transformers]'"
_DTYPES = ("float32", "float16", "bfloat16")


@dataclass(frozen=True, slots=True)
class Loaded:
    model: Any  # a PeftModel around the transformers model when adapters are loaded
    tokenizer: Any
    device: torch.device
    dtype: torch.dtype
    max_context_length: int
    vocab_size: int  # rows of the input embedding: valid prompt ids are below it
    eos_token_id: int
    eos_ids: frozenset[int]  # every id that ends a sequence (tokenizer and generation config)
    adapters: tuple[str, ...] = ()  # LoRA adapters loaded onto the model, by name


def load(settings: Settings, model_dir: Path) -> Loaded:
    try:
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging
    except ImportError as error:
        raise EngineUnavailable(INSTALL_HINT) from error

    if not (model_dir / "config.json").is_file():
        raise EngineUnavailable(
            f"{model_dir} is not a model directory (no config.json); the transformers "
            "engine loads local directories only"
        )
    device = _device(settings.device)
    dtype: Any = _dtype(settings.dtype, device)
    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    tokenizer_dir = Path(settings.tokenizer).expanduser() if settings.tokenizer else model_dir
    trust = settings.trust_remote_code
    try:
        tokenizer: Any = AutoTokenizer.from_pretrained(
            tokenizer_dir, local_files_only=True, trust_remote_code=trust
        )
    except Exception as error:
        raise EngineUnavailable(f"cannot load a tokenizer from {tokenizer_dir}: {error}") from error
    try:
        model: Any = AutoModelForCausalLM.from_pretrained(
            model_dir,
            local_files_only=True,
            trust_remote_code=trust,
            dtype=dtype,
        )
        # Not device_map: that needs accelerate, which the extra does not pull in.
        model.to(device)
    except Exception as error:
        raise EngineUnavailable(f"cannot load a model from {model_dir}: {error}") from error
    model.eval()

    text_config = model.config.get_text_config(decoder=True)
    context: int | None = getattr(text_config, "max_position_embeddings", None)
    if settings.max_seq_len is not None:
        context = min(context or settings.max_seq_len, settings.max_seq_len)
    if context is None:
        raise EngineUnavailable(
            f"{model_dir}: the config gives no max_position_embeddings; set --max-seq-len"
        )
    eos_ids = _ids(tokenizer.eos_token_id)
    eos_ids |= _ids(getattr(model.generation_config, "eos_token_id", None))
    eos_ids |= _ids(getattr(text_config, "eos_token_id", None))
    first_eos = (
        tokenizer.eos_token_id if tokenizer.eos_token_id is not None else min(eos_ids, default=0)
    )
    # Read off the model before adapters wrap its layers (one may target the embedding).
    vocab_size = model.get_input_embeddings().num_embeddings
    adapters = settings.lora_adapters()
    return Loaded(
        model=attach(model, adapters, device),
        tokenizer=tokenizer,
        device=device,
        dtype=model.dtype,
        max_context_length=context,
        vocab_size=vocab_size,
        eos_token_id=first_eos,
        eos_ids=frozenset(eos_ids),
        adapters=tuple(adapters),
    )


def _device(name: str) -> torch.device:
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise EngineUnavailable(
            f"unknown device {name!r}: use auto, cpu, cuda or cuda:N"
        ) from error
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise EngineUnavailable(f"device {name!r}: CUDA is not available")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise EngineUnavailable(f"device {name!r}: only {torch.cuda.device_count()} GPU(s)")
    elif device.type != "cpu":
        raise EngineUnavailable(f"unsupported device {name!r}: use auto, cpu, cuda or cuda:N")
    return device


def _dtype(name: str, device: torch.device) -> torch.dtype | str:
    import torch

    if name == "auto":
        return "auto" if device.type == "cuda" else torch.float32
    if name not in _DTYPES:
        raise EngineUnavailable(f"unknown dtype {name!r}: use auto, {', '.join(_DTYPES)}")
    dtype: torch.dtype = getattr(torch, name)
    return dtype


def _ids(value: int | list[int] | None) -> set[int]:
    if value is None:
        return set()
    return {value} if isinstance(value, int) else set(value)
