"""Controls and records of the fake: test-only, no part of TensorRT-LLM's API.

Tests reach them as ``tensorrt_llm._fake`` after importing the fake (the
fixtures in ``tests/engines/test_tensorrt_llm.py`` and ``test_contract.py`` put it on
``sys.path`` and forget it afterwards, so every test starts from these defaults).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .executor.result import GenerationResult
    from .llmapi.llm import BaseLLM

step_s = 0.0
"""Seconds per engine iteration; 0 = as fast as the event loop allows."""

stats_period_s = 0.2
"""Seconds between two hand-overs of iteration stats to the LLM's stats queue, as the
runtime's stats thread sleeps 0.2 s between batches (docs/tensorrt_llm.md, "Load
statistics")."""

kv_total_blocks = 2048
"""KV-cache blocks in the fake's pool (``kvCacheStats.maxNumBlocks``)."""

tokens_per_block = 32
"""Tokens per KV-cache block (``kvCacheStats.tokensPerBlock``)."""

hold_incomplete_tail = False
"""Leave a trailing U+FFFD (bytes of a character not yet complete) out of each
output's ``text``, even at its end, as TensorRT-LLM's default HF ``DecodeStream``
detokenizer does (docs/tensorrt_llm.md, "Detokenization")."""

logprobs_as_floats = False
"""Return ``logprobs`` as plain floats (the C++ runtime's form) instead of
``dict[token_id, Logprob]`` (the LLM API's top-k form)."""

REQUEST_ERROR_MARK = "[[request-error]]"
"""A prompt containing this fails its request with a RequestError mid-stream."""

FATAL_ERROR_MARK = "[[fatal-error]]"
"""A prompt containing this kills the executor mid-stream (CppExecutorError)."""

FAULT_AFTER_TOKENS = 3
"""How many tokens a request marked for a fault produces first."""

llms: list[BaseLLM] = []
"""Every LLM built, oldest first."""

results: list[GenerationResult] = []
"""Every result ``generate_async`` returned, oldest first."""

stats_calls = 0
"""How often ``get_stats_async`` was called."""

priorities: list[float] = []
"""The ``priority`` of every ``generate_async`` call, oldest first."""

lora_requests: list[object] = []
"""The ``lora_request`` of every ``generate_async`` call that had one, oldest first."""

stats_records: list[dict[str, object]] = []
"""Every iteration-stats record the runtime made, oldest first (what was queued)."""
