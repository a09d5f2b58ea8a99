"""Errors raised from a result's iteration (mirrors ``executor/utils.py``, TRTLLM_API.md §2)."""

from __future__ import annotations


class RequestError(RuntimeError):
    """One request failed (an ``ErrorResponse`` for it); the executor serves on."""


class CppExecutorError(RuntimeError):
    """The C++ executor failed: fatal, the executor shuts down (trtllm-serve raises SIGINT)."""
