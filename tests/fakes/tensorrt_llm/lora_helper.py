"""``LoraConfig`` and the module-name map (lora_helper.py upstream; older versions define
them in lora_manager.py). docs/tensorrt_llm.md, "LoRA adapters"."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path


def get_default_trtllm_modules_to_hf_modules() -> dict[str, str]:
    """TensorRT-LLM's LoRA module names to Hugging Face's."""
    return {
        "attn_q": "q_proj",
        "attn_k": "k_proj",
        "attn_v": "v_proj",
        "attn_dense": "o_proj",
        "mlp_h_to_4h": "gate_proj",
        "mlp_4h_to_h": "down_proj",
        "mlp_gate": "up_proj",
        "mlp_gate_up": "gate_up_proj",
        "moe_h_to_4h": "w1",
        "moe_4h_to_h": "w2",
        "moe_gate": "w3",
        "moe_router": "gate",
    }


@dataclass
class LoraConfig:
    lora_dir: list[str] = field(default_factory=list)
    lora_ckpt_source: str = "hf"
    max_lora_rank: int = 64
    lora_target_modules: list[str] = field(default_factory=list)
    trtllm_modules_to_hf_modules: dict[str, str] = field(default_factory=dict)
    max_loras: int | None = None
    max_cpu_loras: int | None = None
    swap_gate_up_proj: bool = True

    def __post_init__(self) -> None:
        assert self.lora_ckpt_source in ["hf", "nemo"], (
            f"lora_ckpt_source must be one of 'hf' or 'nemo', got {self.lora_ckpt_source}"
        )


def hf_target_modules(lora_dir: str, to_hf: dict[str, str]) -> list[str]:
    """The TensorRT-LLM modules an HF adapter directory targets (``HfLoraLoader``'s
    ``get_target_modules``): a directory without ``adapter_config.json`` is an error."""
    config_file = Path(lora_dir) / "adapter_config.json"
    if not config_file.is_file():
        raise ValueError(f"{lora_dir} is not a LoRA checkpoint: no adapter_config.json")
    targets = json.loads(config_file.read_text()).get("target_modules") or []
    from_hf = {hf: trt for trt, hf in to_hf.items()}
    return sorted({from_hf[t] for t in targets if t in from_hf})
