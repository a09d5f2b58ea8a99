"""Choosing one sequence's next token from the model's logits, as its request asks.

The order is vLLM's and Hugging Face's:

1. repetition penalty over the prompt and the output so far (divides positive
   logits, multiplies negative ones);
2. presence and frequency penalties over the output so far (OpenAI's definition);
3. under structured output, the grammar's mask: tokens it does not allow next get
   -inf (``_hf_grammar.Guide``); end-of-sequence and stop token ids are banned
   until ``min_tokens`` exist, unless the grammar allows nothing else (it wins);
4. temperature. 0 is greedy. **Unset is greedy for a plain request** (the engine
   is deterministic unless asked otherwise, as with TGI's defaults and the
   simulator's), **and 1.0 when the request asks for variety**: ``n`` > 1 or a
   ``seed`` (``SamplingOptions.effective_temperature``, vLLM's default then);
5. logprobs are read here: the distribution after steps 1-4, before truncation,
   so alternatives keep finite values, and under a grammar they describe the
   constrained distribution;
6. top-k, top-p and min-p truncate, and the token is drawn with the sequence's
   own ``torch.Generator`` (seeded from the request's seed and the sequence
   index, so the same seed gives the same text whatever else runs in the batch).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

import torch

from ._hf_grammar import Guide
from .base import SamplingOptions

_GOLDEN = 0x9E3779B97F4A7C15  # spreads the seeds of a request's n sequences apart
_MASK64 = (1 << 64) - 1


class Sampler:
    """One sequence's sampling state: its penalties' counts and its random generator."""

    __slots__ = (
        "_banned",
        "_counts",
        "_generator",
        "_guide",
        "_min_tokens",
        "_options",
        "_seen",
        "_temperature",
    )

    def __init__(
        self,
        options: SamplingOptions,
        index: int,
        prompt_ids: Sequence[int],
        banned_early: Collection[int],
        min_tokens: int,
        vocab_size: int,
        device: torch.device,
        guide: Guide | None = None,
    ) -> None:
        self._options = options
        self._guide = guide
        self._temperature = options.effective_temperature
        self._min_tokens = min_tokens
        self._banned = torch.tensor(sorted(banned_early), dtype=torch.long, device=device)
        penalty = options.repetition_penalty
        self._seen: torch.Tensor | None = None
        if penalty is not None and penalty != 1.0:
            self._seen = torch.zeros(vocab_size, dtype=torch.bool, device=device)
            seen = [t for t in prompt_ids if t < vocab_size]  # not embedding padding rows
            self._seen[torch.tensor(seen, dtype=torch.long, device=device)] = True
        self._counts: torch.Tensor | None = None
        if options.presence_penalty or options.frequency_penalty:
            self._counts = torch.zeros(vocab_size, dtype=torch.float32, device=device)
        self._generator: torch.Generator | None = None
        if not self.greedy:
            self._generator = torch.Generator(device=device)
            if options.seed is None:
                self._generator.seed()
            else:
                self._generator.manual_seed((options.seed + index * _GOLDEN) & _MASK64)

    @property
    def greedy(self) -> bool:
        return not self._temperature

    def sample(
        self, logits: torch.Tensor, generated: int, want_logprobs: bool
    ) -> tuple[int, torch.Tensor | None]:
        """The next token, and with ``want_logprobs`` the log-probabilities of step 5."""
        o = self._options
        logits = logits.float().clone()
        if self._seen is not None:
            assert o.repetition_penalty is not None
            seen = logits[self._seen]
            penalised = torch.where(
                seen > 0, seen / o.repetition_penalty, seen * o.repetition_penalty
            )
            logits[self._seen] = penalised
        if self._counts is not None:
            logits -= (o.frequency_penalty or 0.0) * self._counts
            logits -= (o.presence_penalty or 0.0) * (self._counts > 0).float()
        if self._guide is not None:
            logits += self._guide.bias(generated < self._min_tokens)
        elif generated < self._min_tokens and self._banned.numel():
            logits[self._banned] = -torch.inf
        if not self.greedy:
            logits /= self._temperature
        logprobs = torch.log_softmax(logits, dim=-1) if want_logprobs else None
        if self._generator is None:
            token = int(torch.argmax(logits))
        else:
            token = self._draw(logits, self._generator)
        if self._seen is not None:
            self._seen[token] = True
        if self._counts is not None:
            self._counts[token] += 1.0
        return token, logprobs

    def _draw(self, logits: torch.Tensor, generator: torch.Generator) -> int:
        o = self._options
        if o.top_k is not None and 0 < o.top_k < logits.numel():
            kth = torch.topk(logits, o.top_k).values[-1]
            logits[logits < kth] = -torch.inf
        probs = torch.softmax(logits, dim=-1)
        if o.top_p is not None and o.top_p < 1.0:
            sorted_probs, order = torch.sort(probs, descending=True)
            # Drop a token when the ones before it already reach top_p; keep the first.
            drop = (torch.cumsum(sorted_probs, dim=-1) - sorted_probs) >= o.top_p
            probs[order[drop]] = 0.0
        if o.min_p:
            probs[probs < o.min_p * probs.max()] = 0.0
        return int(torch.multinomial(probs, 1, generator=generator))
