"""A fake ``tensorrt_llm`` for tests: the LLM API surface tokenwire uses, on no GPU.

It behaves as docs/tensorrt_llm.md describes TensorRT-LLM 1.2 (its section
"What the fake models" lists what is modelled), including the awkward parts an
adapter must cope with:

- ``LLM(...)`` rejects unknown kwargs, and TensorRT-only ones on the PyTorch
  backend, with ValueError ("The LLM"); ``SamplingParams`` is a keyword-only
  dataclass with exactly the documented fields ("SamplingParams").
- ``generate_async`` is not a coroutine; its result binds to the running loop
  and yields itself, mutated, once per engine response ("Results").
- ``text`` is the whole output decoded with ``errors="replace"``, so a step that
  ends inside a multi-byte character ends in U+FFFD. Current TensorRT-LLM holds
  such text back itself ("Detokenization"); the fake does not, to keep the
  adapter honest, unless ``_fake.hold_incomplete_tail`` asks it to.
- ``abort()`` answers a running request with a final 'cancelled' response, and a
  request still waiting for a batch slot with nothing at all ("Abort").
- ``get_stats_async`` yields iteration-stats records, made per iteration and
  handed over every 0.2 s, once a request was submitted ("Load statistics").
- A ``lora_request`` counts only with the LLM's LoRA settings (``lora_config``,
  or ``enable_lora`` on the TensorRT backend), and is otherwise ignored; an
  adapter is cached by its int id and changes the text ("LoRA adapters").
- ``guided_decoding_backend`` ("xgrammar" or "llguidance"; prebuilt engines take
  xgrammar only) makes a guided request's text satisfy its guide, compiled when
  the request is first scheduled: a guide that does not compile fails that
  request with "Guided decoding error: ..."; without a backend the PyTorch LLM
  ignores guides ("Structured output").

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
