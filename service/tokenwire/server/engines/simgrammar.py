"""The simulator under a grammar: readable answers that satisfy the constraint.

A real engine masks the tokens a grammar forbids and samples among the rest; the
simulator does the same over its own vocabulary (``grammar.py``), with weights in
place of a model's logits, chosen to read like an answer rather than noise:

- words over letters, letters over other bytes; a word with its leading space
  after a letter or digit, without one elsewhere (just after a quote);
- an answer that runs long leans to what closes it: a few words into a string
  or a few digits into a number it prefers a closing quote, bracket or brace,
  and once past its length it ends (end-of-sequence) as soon as the grammar allows.

Every choice comes from the sequence's own random generator, so an answer is a
function of the prompt and the seed, as the simulator's plain text is.
"""

from __future__ import annotations

import random

from llguidance import LLMatcher

from .base import RequestFailed
from .grammar import Matchers, allowed_tokens, byte_tokenizer
from .simtok import BOS_ID, BYTE_OFFSET, EOS_ID, SPECIAL_TOKENS, SimTokenizer

_QUOTE = ord('"')
_BRACKETS = b"}])"
_STRUCTURE = b'"{}[],:'
_SPACES = b" \t\r\n"

# Weights of each kind of token: (inside a string?, closing?) -> kind -> weight.
# Closing: a string or number has run a few tokens, or the whole answer long. Any
# other byte (beyond ASCII, control characters) only when nothing else is allowed.
_KINDS = ("quote", "open", "bracket", "punct", "digit", "letter", "space")
_ORDER = ("word", *_KINDS)
_WEIGHTS = {
    (False, False): dict(zip(_ORDER, (60, 3, 4, 3, 1, 3, 2, 0.1), strict=True)),
    (False, True): dict(zip(_ORDER, (0.5, 2, 0.5, 100, 5, 1, 0.5, 0.05), strict=True)),
    (True, False): dict(zip(_ORDER, (60, 2, 0.05, 0.05, 0.3, 1, 2, 0.1), strict=True)),
    (True, True): dict(zip(_ORDER, (1, 300, 0.01, 0.01, 0.1, 0.5, 0.5, 0.01), strict=True)),
}
_END = {False: 0.25, True: 0.75}  # how likely an answer ends where it may


def sim_matchers(tokenizer: SimTokenizer) -> Matchers:
    """The simulator's vocabulary as llguidance sees it."""
    tokens = [tokenizer.token_bytes(i) for i in range(tokenizer.vocab_size)]
    for i, name in enumerate(SPECIAL_TOKENS):
        tokens[i] = name.encode()
    ll = byte_tokenizer(
        tokens,
        EOS_ID,
        BOS_ID,
        range(BYTE_OFFSET),
        lambda text: tokenizer.encode(text, add_special_tokens=False),
    )
    return Matchers(ll)


class TokenKinds:
    """The simulator's tokens sorted into kinds, each kind a bit set (bit i: token i)."""

    __slots__ = ("bare_words", "kinds", "spaced_words")

    def __init__(self, tokenizer: SimTokenizer) -> None:
        kinds = dict.fromkeys(_KINDS, 0)
        bare = spaced = 0
        for token in range(BYTE_OFFSET, tokenizer.vocab_size):
            data = tokenizer.token_bytes(token)
            bit = 1 << token
            if len(data) > 1 and data.lstrip(b" ").isalpha():
                if data.startswith(b" "):
                    spaced |= bit
                else:
                    bare |= bit
            elif len(data) == 1:
                kind = _kind_of(data[0])
                if kind is not None:
                    kinds[kind] |= bit
            elif data.strip() == b"" or data in (b".\n",):
                kinds["space" if data.strip() == b"" else "punct"] |= bit
        self.kinds = kinds
        self.bare_words = bare
        self.spaced_words = spaced


def _kind_of(byte: int) -> str | None:
    if byte == _QUOTE:
        return "quote"
    if byte in _BRACKETS:
        return "bracket"
    if byte in b"{[":
        return "open"
    if byte in _SPACES:
        return "space"
    if 0x30 <= byte <= 0x39:
        return "digit"
    if 0x41 <= byte <= 0x5A or 0x61 <= byte <= 0x7A:
        return "letter"
    if 0x21 <= byte <= 0x7E:
        return "punct"
    return None


class Constrained:
    """One sequence's constrained answer: its matcher and where it stands."""

    __slots__ = (
        "_in_string",
        "_kinds",
        "_last_alnum",
        "_rng",
        "_run",
        "_run_limit",
        "_tokenizer",
        "count",
        "length",
        "matcher",
    )

    def __init__(
        self, matcher: LLMatcher, kinds: TokenKinds, tokenizer: SimTokenizer, rng: random.Random
    ) -> None:
        self.matcher = matcher
        self._kinds = kinds
        self._tokenizer = tokenizer
        self._rng = rng
        self.count = 0  # tokens chosen among several (not forced by the grammar)
        self.length = rng.randint(12, 80)  # past it, end as soon as allowed
        self._in_string = False  # an odd number of quotes so far
        self._run = 0  # content tokens since the last structural byte
        self._run_limit = rng.randint(1, 6)
        self._last_alnum = False  # the last token ended with a letter or digit

    def next_token(self) -> int:
        """Draw the next token among those the grammar allows, and consume it."""
        matcher = self.matcher
        allowed = allowed_tokens(matcher)
        if not allowed:
            raise RequestFailed(f"the grammar allows no token: {matcher.get_error() or 'stuck'}")
        rng = self._rng
        long = self.count >= self.length
        closing = long or self._run >= self._run_limit
        eos = 1 << EOS_ID
        if allowed & eos and (allowed == eos or long or rng.random() < _END[closing]):
            token = EOS_ID
        else:
            token = self._draw(allowed & ~eos, closing)
        if not matcher.consume_token(token):
            raise RequestFailed(f"the grammar refused its own token: {matcher.get_error()}")
        if allowed & (allowed - 1):  # a choice, not a token the grammar forced
            self.count += 1
        data = self._tokenizer.token_bytes(token) if token != EOS_ID else b""
        if data.count(b'"') % 2:
            self._in_string = not self._in_string
        if data and data[-1] in _STRUCTURE:
            self._run, self._run_limit = 0, rng.randint(1, 6)
        else:
            self._run += 1
        self._last_alnum = bool(data) and chr(data[-1]).isalnum()
        return token

    def _draw(self, allowed: int, closing: bool) -> int:
        kinds = self._kinds
        weights = _WEIGHTS[self._in_string, closing]
        words = kinds.spaced_words if self._last_alnum else kinds.bare_words
        options: list[tuple[float, int]] = []  # (weight, tokens of a kind allowed now)
        if allowed & words:
            options.append((weights["word"], allowed & words))
        elif allowed & (any_word := kinds.spaced_words | kinds.bare_words):
            options.append((weights["word"] / 10, allowed & any_word))
        for kind, bits in kinds.kinds.items():
            if allowed & bits:
                options.append((weights[kind], allowed & bits))
        if not options:
            return _nth_bit(allowed, self._rng)
        pick = self._rng.random() * sum(w for w, _ in options)
        for weight, bits in options:
            pick -= weight
            if pick < 0:
                return _nth_bit(bits, self._rng)
        return _nth_bit(options[-1][1], self._rng)


def _nth_bit(bits: int, rng: random.Random) -> int:
    """A uniformly chosen set bit of ``bits``."""
    positions = []
    while bits:
        low = bits & -bits
        positions.append(low.bit_length() - 1)
        bits ^= low
    return rng.choice(positions)
