"""A fake ``tensorrt_llm`` for tests: the LLM API surface tokenwire uses, on no GPU.

It behaves as shared/TRTLLM_API.md describes TensorRT-LLM 1.2 (section numbers
below refer to it), including the awkward parts an adapter must cope with:

- ``LLM(...)`` rejects unknown kwargs, and TensorRT-only ones on the PyTorch
  backend, with ValueError (§1); ``SamplingParams`` is a keyword-only dataclass
  with exactly the documented fields (§3).
- ``generate_async`` is not a coroutine; its result binds to the running loop
  and yields itself, mutated, once per engine response (§2).
- ``text`` is the whole output decoded with ``errors="replace"``, so a step that
  ends inside a multi-byte character ends in U+FFFD. Current TensorRT-LLM holds
  such text back itself (§6); the fake does not, to keep the adapter honest.
- ``abort()`` answers a running request with a final 'cancelled' response, and a
  request still waiting for a batch slot with nothing at all (§2).

Test controls live in ``tensorrt_llm._fake``.
"""

from .llmapi import LLM, CompletionOutput, KvCacheConfig, RequestError, RequestOutput
from .sampling_params import SamplingParams

__version__ = "1.2.1+fake"

__all__ = [
    "LLM",
    "CompletionOutput",
    "KvCacheConfig",
    "RequestError",
    "RequestOutput",
    "SamplingParams",
]
