"""Errors raised from a result's iteration (mirrors ``executor/utils.py``).

docs/tensorrt_llm.md, "Errors", says which is which."""

from __future__ import annotations


class RequestError(RuntimeError):
    """One request failed (an ``ErrorResponse`` for it); the executor serves on."""


class CppExecutorError(RuntimeError):
    """The C++ executor failed: fatal, the executor shuts down (trtllm-serve raises SIGINT)."""
