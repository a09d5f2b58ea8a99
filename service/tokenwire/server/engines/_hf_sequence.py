"""One sequence of a request, as the transformers worker advances it token by token.

``LiveSequence.advance(logits)`` turns the model's next-token logits into a
``SequenceDelta``: sample (``_hf_sampling``), detokenize without split characters
(``_hf_text``), hold back possible stop strings (``text.StopStrings``), and decide
whether the sequence ends:

- an end-of-sequence id ends it with "stop" (unless ``ignore_eos``); the id is in
  ``token_ids`` and its text is decoded like any other (so it shows only with
  ``skip_special_tokens`` false);
- a stop token id ends it with "stop_sequence"; its text only with
  ``include_stop_in_output``; neither can be drawn before ``min_tokens``;
- a stop string ends it with "stop_sequence"; the text runs up to it (or through
  it with ``include_stop_in_output``), and it is looked for from ``min_tokens`` on;
- under structured output, a grammar that is complete (it allows nothing but
  end-of-sequence) ends it with "stop" at the token that completed it: no step
  is spent drawing the end-of-sequence token the grammar would force, and that
  holds under ``ignore_eos`` too, as nothing else could follow;
- ``max_tokens`` ends it with "length" (inside a structured answer too).

When it ends other than by a stop string, the text held back (an incomplete
character, a possible start of a stop string) goes out with the last delta.
``held`` is that text at any moment, for a handle that ends the sequence
itself (an abort, an error).
"""

from __future__ import annotations

from typing import Any

import torch

from ._hf_grammar import Guide
from ._hf_handle import Job
from ._hf_sampling import Sampler
from ._hf_text import IncrementalDetokenizer
from .base import FinishReason, SequenceDelta, TokenLogprob, TopLogprob
from .text import StopStrings

_NONE = float("-inf")  # the log-probability of a token that cannot come next


class LiveSequence:
    """One of a job's n sequences: its sampler, text state, counters and batch position."""

    __slots__ = (
        "count",
        "cumulative",
        "detok",
        "done",
        "eos_ids",
        "guide",
        "index",
        "job",
        "last",
        "position",
        "sampler",
        "stops",
        "tokenizer",
    )

    def __init__(
        self,
        job: Job,
        index: int,
        tokenizer: Any,
        eos_ids: frozenset[int],
        vocab_size: int,
        device: torch.device,
    ) -> None:
        request = job.request
        self.job, self.index, self.tokenizer, self.eos_ids = job, index, tokenizer, eos_ids
        banned = job.stop_ids if request.ignore_eos else job.stop_ids | eos_ids
        self.guide: Guide | None = None
        if job.matchers:
            # Under ignore_eos the grammar's own end-of-sequence is refused while it
            # allows anything else: the answer runs on until max_tokens or completion.
            always = eos_ids if request.ignore_eos else ()
            early = banned if request.min_tokens else ()
            self.guide = Guide(job.matchers[index], vocab_size, device, early, always)
        self.sampler = Sampler(
            request.sampling,
            index,
            request.prompt_token_ids,
            banned if request.min_tokens else (),
            request.min_tokens,
            vocab_size,
            device,
            self.guide,
        )
        self.detok = IncrementalDetokenizer(
            tokenizer, request.prompt_token_ids, request.skip_special_tokens
        )
        self.stops = StopStrings(request.stop, request.include_stop_in_output)
        self.position = len(request.prompt_token_ids)  # tokens in its cache row
        self.count = 0  # tokens generated
        self.last = 0  # the token to feed next
        self.cumulative = 0.0
        self.done = False

    def advance(self, logits: torch.Tensor) -> SequenceDelta:
        """Draw the next token from ``logits`` (vocabulary-sized); set ``done`` at the end."""
        job, request = self.job, self.job.request
        token, logprobs = self.sampler.sample(logits, self.count, request.logprobs)
        if self.guide is not None:
            self.guide.consume(token)
        self.count += 1
        self.last = token
        lps: tuple[TokenLogprob, ...] = ()
        if logprobs is not None:
            lps = (self._logprob(token, logprobs, request.top_logprobs),)
            self.cumulative += lps[0].logprob
        finish: FinishReason | None = None
        match: str | int | None = None
        if token in self.eos_ids and not request.ignore_eos:
            finish = "stop"
        elif token in job.stop_ids:
            finish, match = "stop_sequence", token
        text = ""
        if match is None or request.include_stop_in_output:
            text = self.detok.push(token)
        if finish is None and self.guide is not None and self.guide.done:
            finish = "stop"
        if finish is None and self.count >= request.max_tokens:
            finish = "length"
        if finish is not None:
            text += self.detok.flush()
        if self.stops and self.count >= request.min_tokens:
            text, stop = self.stops.push(text)
            if stop is not None:
                finish, match = "stop_sequence", stop
        if finish is not None and not isinstance(match, str):
            text += self.stops.flush()
        self.done = finish is not None
        return SequenceDelta(
            index=self.index,
            token_ids=(token,),
            text=text,
            logprobs=lps,
            cumulative_logprob=self.cumulative if request.logprobs else None,
            finish_reason=finish,
            stop_match=match,
        )

    @property
    def held(self) -> str:
        """The text this sequence holds back now: what ending it here would release."""
        return self.stops.held + self.detok.held

    def _logprob(self, token: int, logprobs: torch.Tensor, k: int) -> TokenLogprob:
        top: tuple[TopLogprob, ...] = ()
        if k:
            values, ids = torch.topk(logprobs, min(k, logprobs.numel()))
            # Fewer than k tokens may be possible (a grammar, min_tokens): the
            # impossible ones (-inf) are no alternatives.
            pairs = [
                (i, v) for i, v in zip(ids.tolist(), values.tolist(), strict=True) if v > _NONE
            ]
            names = self.tokenizer.convert_ids_to_tokens([i for i, _ in pairs])
            top = tuple(
                TopLogprob(i, name or "", v) for (i, v), name in zip(pairs, names, strict=True)
            )
        name = self.tokenizer.convert_ids_to_tokens(token)
        return TokenLogprob(token, name or "", float(logprobs[token]), top)
