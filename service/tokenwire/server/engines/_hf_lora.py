"""LoRA adapters on the transformers engine, through PEFT: loaded at start, mixed per batch row.

    model = attach(model, {"sql": "/adapters/sql"}, device)   # a PeftModel, every adapter on it
    model(input_ids=..., adapter_names=["sql", BASE])          # one adapter (or none) per row

Every adapter goes onto one ``PeftModel`` under its served name. The worker runs
all live sequences as one batch, so each forward passes PEFT's ``adapter_names``,
one name per batch row (``BASE``, PEFT's own name for "no adapter", for a row of
the base model); PEFT then runs each LoRA layer's delta on the rows of its
adapter only (``LoraLayer._mixed_batch_forward``). That mode has constraints
(PEFT's ``_check_forward_args``): the model not in training mode, no merged
adapters, no DoRA, and some layer types (``MultiheadAttention``, tensor-parallel
and Transformer Engine layers) refuse it. So ``attach`` takes LoRA adapters only
and runs one token through each adapter beside a base row: an adapter that
cannot be served in a mixed batch fails the start, naming it, not every request.

Adapters are local directories, as models are: one without ``adapter_config.json``
or adapter weights is refused before PEFT sees it (PEFT would look a missing
path up on the Hub).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .base import EngineUnavailable

if TYPE_CHECKING:
    import torch

BASE = "__base__"
"""PEFT's adapter name for a batch row that runs the base model (``adapter_names``)."""

INSTALL_HINT = (
    "LoRA adapters on the transformers engine need peft: pip install 'tokenwire[transformers]'"
)
_CONFIG = "adapter_config.json"
_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")


def attach(model: Any, adapters: Mapping[str, str], device: torch.device) -> Any:
    """``model`` with every adapter loaded (a ``PeftModel``), or ``model`` itself for none.

    Raises ``EngineUnavailable`` naming the adapter that is missing, is not a LoRA
    adapter for this model, or cannot run in a mixed batch.
    """
    if not adapters:
        return model
    try:
        from peft import LoraConfig, PeftConfig, PeftModel
    except ImportError as error:
        raise EngineUnavailable(INSTALL_HINT) from error
    peft_model: Any = None
    for name, path in adapters.items():
        directory = _adapter_dir(name, path)
        try:
            config = PeftConfig.from_pretrained(str(directory))
        except Exception as error:
            raise EngineUnavailable(
                f"LoRA adapter {name!r}: cannot read {directory}: {error}"
            ) from error
        if not isinstance(config, LoraConfig):
            raise EngineUnavailable(
                f"LoRA adapter {name!r}: {directory} is a {config.peft_type} adapter, not LoRA"
            )
        if config.use_dora:
            raise EngineUnavailable(
                f"LoRA adapter {name!r}: DoRA adapters cannot be served in mixed batches (PEFT)"
            )
        at: dict[str, Any] = {"adapter_name": name, "torch_device": str(device)}
        try:
            if peft_model is None:
                with warnings.catch_warnings():
                    # PEFT reads transformers' deprecated is_gradient_checkpointing while
                    # wrapping the model (peft 0.21 on transformers 5): nothing to act on.
                    warnings.filterwarnings(
                        "ignore", ".*is_gradient_checkpointing", category=FutureWarning
                    )
                    peft_model = PeftModel.from_pretrained(
                        model, str(directory), config=config, **at
                    )
            else:
                peft_model.load_adapter(str(directory), **at)
        except Exception as error:
            raise EngineUnavailable(
                f"LoRA adapter {name!r}: cannot load {directory} onto the model: {error}"
            ) from error
    peft_model.eval()
    for name in adapters:
        _try_mixed_batch(peft_model, name, device)
    return peft_model


def base_model(model: Any) -> Any:
    """The transformers model under a ``PeftModel``; ``model`` itself otherwise."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def _adapter_dir(name: str, path: str) -> Path:
    directory = Path(path).expanduser()
    if not (directory / _CONFIG).is_file():
        raise EngineUnavailable(
            f"LoRA adapter {name!r}: {directory} is not a PEFT adapter directory (no "
            f"{_CONFIG}); adapters load from local directories only"
        )
    if not any((directory / weights).is_file() for weights in _WEIGHTS):
        raise EngineUnavailable(
            f"LoRA adapter {name!r}: {directory} has no adapter weights ({' or '.join(_WEIGHTS)})"
        )
    return directory


def _try_mixed_batch(model: Any, name: str, device: torch.device) -> None:
    """One token through the adapter beside a base row, as the worker's batches run it."""
    import torch

    ids = torch.zeros((2, 1), dtype=torch.long, device=device)
    try:
        with torch.inference_mode():
            model(input_ids=ids, attention_mask=torch.ones_like(ids), adapter_names=[name, BASE])
    except Exception as error:
        raise EngineUnavailable(
            f"LoRA adapter {name!r} cannot be served in a mixed batch: {error}"
        ) from error
