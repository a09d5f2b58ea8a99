"""Prebuilt TensorRT engines: ``from tensorrt_llm._tensorrt_engine import LLM``."""

from ..llmapi.llm import _TrtLLM as LLM

__all__ = ["LLM"]
