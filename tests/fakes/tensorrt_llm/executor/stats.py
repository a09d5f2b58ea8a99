"""One iteration's stats record, as the C++ ``IterationStats.to_json_str()`` writes it.

docs/tensorrt_llm.md, "Load statistics", has the keys; the optional parts the fake
has none of are null.
"""

from __future__ import annotations

import time

from .. import _fake


def iteration_record(
    *,
    iteration: int,
    used_blocks: int,
    new: int,
    active: int,
    queued: int,
    completed: int,
    started: float,
    max_batch_size: int,
) -> dict[str, object]:
    """The record of iteration ``iteration``: ``used_blocks`` of the KV pool held,
    ``new`` requests admitted, ``active`` and ``queued`` once they were, ``completed``
    in it, and ``started`` (``perf_counter``) when its work began."""
    per_block = _fake.tokens_per_block
    total = _fake.kv_total_blocks
    used = min(used_blocks, total)
    return {
        "timestamp": time.strftime("%m-%d-%Y %H:%M:%S"),
        "iter": iteration,
        "iterLatencyMS": (time.perf_counter() - started) * 1e3 + _fake.step_s * 1e3,
        "newActiveRequestsQueueLatencyMS": 0.0,
        "numNewActiveRequests": new,
        "numActiveRequests": active,
        "numQueuedRequests": queued,
        "numCompletedRequests": completed,
        "maxNumActiveRequests": max_batch_size,
        "maxBatchSizeStatic": max_batch_size,
        "maxBatchSizeTunerRecommended": 0,
        "maxBatchSizeRuntime": max_batch_size,
        "maxNumTokensStatic": 8192,
        "maxNumTokensTunerRecommended": 0,
        "maxNumTokensRuntime": 8192,
        "gpuMemUsage": 0,
        "cpuMemUsage": 0,
        "pinnedMemUsage": 0,
        "kvCacheStats": {
            "maxNumBlocks": total,
            "freeNumBlocks": total - used,
            "usedNumBlocks": used,
            "tokensPerBlock": per_block,
            "allocTotalBlocks": used,
            "allocNewBlocks": 0,
            "reusedBlocks": 0,
            "missedBlocks": 0,
            "cacheHitRate": 0.0,
        },
        "staticBatchingStats": None,
        "inflightBatchingStats": {
            "numScheduledRequests": active,
            "numContextRequests": new,
            "numGenRequests": active - new,
            "numPausedRequests": 0,
            "numCtxTokens": 0,
            "microBatchId": 0,
            "avgNumDecodedTokensPerIter": 1.0,
        },
        "specDecodingStats": None,
    }
