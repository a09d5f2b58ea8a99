"""``SamplingParams``: a keyword-only dataclass with the documented fields, and
``GuidedDecodingParams``, its ``guided_decoding``.

docs/tensorrt_llm.md, "SamplingParams", lists them and the greedy rule; "Structured
output" the guides and their one check.

An unknown field is a TypeError, as with any dataclass: the fake cannot be
handed ``random_seed``, ``stop_words``, ``beam_width`` or the like.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pydantic import BaseModel

    from .llmapi.tokenizer import TransformersTokenizer


@dataclass(slots=True, kw_only=True)
class GuidedDecodingParams:
    """One guide for a request; which backend reads it is the LLM's choice."""

    json: str | BaseModel | dict[str, object] | None = None
    regex: str | None = None
    grammar: str | None = None  # EBNF to xgrammar, Lark to llguidance
    json_object: bool = False
    structural_tag: str | None = None

    def _validate(self) -> None:
        # At most one: a falsy value ("", False) does not count, and none at all is no guide.
        num_guides = sum(bool(getattr(self, f.name)) for f in fields(self))
        if num_guides > 1:
            raise ValueError(f"Only one guide can be used for a request, but got {num_guides}.")


@dataclass(slots=True, kw_only=True)
class SamplingParams:
    end_id: int | None = None
    pad_id: int | None = None
    max_tokens: int = 32
    bad: str | list[str] | None = None
    bad_token_ids: list[int] | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    include_stop_str_in_output: bool = False

    n: int = 1
    best_of: int | None = None
    use_beam_search: bool = False

    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    top_p_min: float | None = None
    top_p_reset_ids: int | None = None
    top_p_decay: float | None = None
    seed: int | None = None
    min_tokens: int | None = None
    repetition_penalty: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    length_penalty: float | None = None
    early_stopping: int | None = None
    no_repeat_ngram_size: int | None = None
    beam_search_diversity_rate: float | None = None
    beam_width_array: list[int] | None = None

    logprobs: int | None = None
    prompt_logprobs: int | None = None
    return_context_logits: bool = False
    return_generation_logits: bool = False
    exclude_input_from_output: bool = True
    return_perf_metrics: bool = False
    additional_model_outputs: list[object] | None = None

    guided_decoding: GuidedDecodingParams | None = None
    logits_processor: object | None = None
    embedding_bias: object | None = None
    lookahead_config: object | None = None

    ignore_eos: bool = False
    detokenize: bool = True
    add_special_tokens: bool = True
    truncate_prompt_tokens: int | None = None
    skip_special_tokens: bool = True
    spaces_between_special_tokens: bool = True

    # Filled by _setup() from the tokenizer: the stop strings as token ids.
    _stop_word_ids: list[list[int]] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.pad_id is None:
            self.pad_id = self.end_id
        self.best_of = self.best_of or self.n
        if self.best_of < self.n:
            raise ValueError(f"best_of ({self.best_of}) cannot be less than n ({self.n})")
        # The LLM API refuses several greedy answers to one request (the older rule).
        if self.best_of > 1 and self._greedy and not os.environ.get("TLLM_ALLOW_N_GREEDY_DECODING"):
            raise ValueError(
                "Greedy decoding in the LLM API does not allow multiple returns. Please set to "
                f"best_of=1, got best_of={self.best_of}."
            )
        if self.truncate_prompt_tokens is not None and self.truncate_prompt_tokens < 1:
            raise ValueError("truncate_prompt_tokens must be >= 1")
        if self.top_p is not None and not 0.0 <= self.top_p <= 1.0:
            raise ValueError(f"top_p must be in [0, 1], got {self.top_p}")
        if self.top_k is not None and self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if self.temperature is not None and self.temperature < 0.0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.guided_decoding is not None:
            self.guided_decoding._validate()
        self.logprobs = self.logprobs and int(self.logprobs)

    @property
    def _greedy(self) -> bool:
        return (
            not self.use_beam_search
            and (self.top_k is None or self.top_k == 1)
            and (self.top_p is None or self.top_p == 0.0)
        )

    def _setup(self, tokenizer: TransformersTokenizer) -> SamplingParams:
        """What ``generate_async`` does when ``end_id`` is None: ids from the tokenizer."""
        if self.end_id is None:
            self.end_id = tokenizer.eos_token_id
            self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else None
            if self.pad_id is None:
                self.pad_id = self.end_id
        if self.stop is not None:
            stops = [self.stop] if isinstance(self.stop, str) else self.stop
            self._stop_word_ids = [tokenizer.encode(s, add_special_tokens=False) for s in stops]
        return self
