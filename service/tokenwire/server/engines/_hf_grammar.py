"""Structured output on the transformers engine: the model's vocabulary as llguidance
sees it, and each constrained sequence's grammar as a mask over the model's logits.

    grammars = ModelGrammars(tokenizer, text_vocab, eos_ids)   # at start, loading thread
    matchers = grammars.new(request.constraint, n)             # submit(): one per sequence
    guide = Guide(matcher, text_vocab, device, early, always)  # the worker, per sequence
    logits += guide.bias(banning_early)                        # each step, after penalties
    guide.consume(token)                                       # after sampling

Building llguidance's tokenizer reads the whole vocabulary (about a second for
150k tokens): done once, at start. Binding a grammar to it is cached per grammar
(``grammar.Matchers``), so a schema sent with every request compiles once, and
each sequence gets a copy. Masks are computed in the worker thread, where
llguidance works without the GIL while the event loop goes on.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Collection
from typing import Any

import torch
from llguidance import LLMatcher

from .base import Constraint, InvalidInput, RequestFailed
from .grammar import Matchers

log = logging.getLogger("tokenwire.engine.transformers")


class ModelGrammars:
    """The model's text vocabulary as llguidance sees it, and its compiled grammars.

    Every id in ``eos_ids`` ends an answer, and only where its grammar accepts.
    A tokenizer llguidance cannot read (a slow, Python-only one) leaves the engine
    serving, without structured output: ``new`` then refuses, saying why.
    """

    __slots__ = ("_matchers", "unavailable")

    def __init__(self, tokenizer: Any, vocab: int, eos_ids: Collection[int]) -> None:
        self._matchers: Matchers | None = None
        self.unavailable = ""  # why there is no structured output, when there is none
        try:
            import llguidance.hf

            eos = sorted(i for i in eos_ids if i < vocab) or None  # None: the tokenizer's
            ll = llguidance.hf.from_tokenizer(tokenizer, n_vocab=vocab, eos_token=eos)
        except Exception as error:  # ValueError for slow tokenizers; Rust errors otherwise
            self.unavailable = f"llguidance cannot read this model's tokenizer: {error}"
            log.warning("no structured output on this model: %s", self.unavailable)
            return
        self._matchers = Matchers(ll)

    @property
    def matchers(self) -> Matchers | None:
        return self._matchers

    def new(self, constraint: Constraint, n: int) -> tuple[LLMatcher, ...]:
        """A fresh matcher for each of a request's ``n`` sequences; InvalidInput if
        the grammar cannot bind to this vocabulary or the model has no structured output."""
        if self._matchers is None:
            raise InvalidInput("structured_output", f"not available: {self.unavailable}")
        return tuple(self._matchers.new(constraint) for _ in range(n))


class Guide:
    """One sequence's grammar: which tokens may come next, and what it has consumed.

    ``early`` are the ids banned until ``min_tokens`` (end-of-sequence and stop
    ids), ``always`` those banned throughout (end-of-sequence under ``ignore_eos``);
    both give way to the grammar: a ban that would leave no token is dropped.
    """

    __slots__ = ("_always", "_early", "_matcher", "_table", "_vocab")

    def __init__(
        self,
        matcher: LLMatcher,
        vocab: int,
        device: torch.device,
        early: Collection[int],
        always: Collection[int],
    ) -> None:
        self._matcher = matcher
        self._vocab = vocab
        self._early = sorted(t for t in set(early) | set(always) if t < vocab)
        self._always = sorted(t for t in always if t < vocab)
        self._table = _byte_biases(device)

    @property
    def done(self) -> bool:
        """The grammar is complete: it allows nothing but end-of-sequence any more."""
        return self._matcher.is_stopped()

    def bias(self, early: bool) -> torch.Tensor:
        """What to add to the logits: 0 where the token may come next, -inf where
        not (a float32 vocabulary on the model's device). ``early``: while the
        ``min_tokens`` bans apply."""
        mask = bytearray(self._matcher.compute_bitmask())
        bans = self._early if early else self._always
        if bans:
            kept = bytearray(mask)
            for token in bans:
                kept[token >> 3] &= ~(1 << (token & 7)) & 0xFF
            if kept.count(0) != len(kept):
                mask = kept
        if mask.count(0) == len(mask):
            raise RequestFailed(
                f"the grammar allows no token: {self._matcher.get_error() or 'stuck'}"
            )
        # A bit per token crosses to the device, where each byte picks its 8 biases:
        # a gather and an add, several times cheaper on CPU than spreading the bits
        # into a bool mask for masked_fill (0.1-0.2 ms against 1.5 ms at 152k tokens).
        bits = torch.frombuffer(mask, dtype=torch.uint8).to(self._table.device, torch.int32)
        return self._table.index_select(0, bits).view(-1)[: self._vocab]

    def consume(self, token: int) -> None:
        if not self._matcher.consume_token(token):
            raise RequestFailed(f"the grammar refused token {token}: {self._matcher.get_error()}")


@functools.cache
def _byte_biases(device: torch.device) -> torch.Tensor:
    """Row b: the biases of the 8 tokens of a mask byte b (bit k is token 8j + k in
    byte j: llguidance's little-endian 32-bit words), 0 for a set bit, -inf else."""
    bits = [[(byte >> k) & 1 for k in range(8)] for byte in range(256)]
    allowed = torch.tensor(bits, dtype=torch.bool)
    return torch.where(allowed, 0.0, -torch.inf).to(device)
