"""Engines behind one seam (``base.py``); ``create_engine`` picks one from settings."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import Engine, EngineUnavailable

if TYPE_CHECKING:
    from ..settings import Settings

__all__ = ["Engine", "create_engine"]


def create_engine(settings: Settings) -> Engine:
    """The engine ``settings.engine`` names; heavy engines are imported only when chosen."""
    if settings.engine == "simulated":
        from .simulated import SimulatedEngine, SimulatorConfig

        return SimulatedEngine(
            SimulatorConfig(
                model=settings.model,
                ttft_s=settings.sim_ttft_ms / 1000.0,
                itl_s=settings.sim_itl_ms / 1000.0,
                max_context_length=settings.sim_max_context,
                kv_blocks=settings.sim_kv_blocks,
                adapters=tuple(settings.lora_adapters()),
            )
        )
    if settings.engine == "transformers":
        from .transformers import TransformersEngine

        return TransformersEngine.from_settings(settings)
    if settings.engine == "tensorrt-llm":
        from .tensorrt_llm import TensorRTLLMEngine

        return TensorRTLLMEngine.from_settings(settings)
    raise EngineUnavailable(f"unknown engine {settings.engine!r}")
