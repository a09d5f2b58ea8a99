"""Token masks from llguidance grammars, for engines that constrain their own sampling.

    matchers = Matchers(tokenizer)                 # an LLTokenizer over the model's vocabulary
    matcher = matchers.new(request.constraint)     # compiled once per grammar, copied per sequence
    allowed = matcher.compute_bitmask()            # bit i set: token i may come next
    matcher.consume_token(token)

The server compiles and validates every constraint before it reaches an engine
(``core/constraints.py``, with the same ``parser_limits``); building a matcher
binds that grammar to a vocabulary, which costs a millisecond or more for a JSON
schema: done once per grammar and tokenizer, kept in a small LRU cache, and each
sequence gets a ``deep_copy`` (microseconds) of the compiled matcher.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from llguidance import LLMatcher, LLParserLimits, LLTokenizer, TokenizerWrapper
from llguidance.gbnf_to_lark import gbnf_to_lark

from .base import Constraint, InvalidInput

_CACHED = 64
LIMITS: dict[str, Any] = dict(
    # Client grammars (llguidance's defaults are for trusted ones): lexer fuel runs at
    # about 50k a millisecond, so building a grammar's lexer costs at most ~10 ms and a
    # step's mask ~4 ms; errors do not echo the grammar's state.
    initial_lexer_fuel=500_000,
    step_lexer_fuel=200_000,
    max_grammar_size=200_000,
    verbose_errors=False,
)


JSON_WHITESPACE = r"[ ]?|\n[ \t]{0,24}"
"""Whitespace a JSON answer may have between its tokens: none, a space, or a new line
and its indent. JSON allows any run of whitespace, and a model that is unsure (a small
one, a random one) can fill its answer with it until max_tokens; this still admits
compact and pretty-printed JSON."""


def parser_limits() -> LLParserLimits:
    """llguidance's limits for grammars from clients (fresh: the object is mutable)."""
    return LLParserLimits(**LIMITS)


class Matchers:
    """Compiled grammars for one vocabulary: each compiled once, copied per sequence."""

    __slots__ = ("_cache", "tokenizer")

    def __init__(self, tokenizer: LLTokenizer) -> None:
        self.tokenizer = tokenizer
        self._cache: OrderedDict[str, LLMatcher] = OrderedDict()

    def new(self, constraint: Constraint) -> LLMatcher:
        """A fresh matcher for ``constraint``; InvalidInput if it cannot bind to this
        vocabulary (a grammar that needs a token the model does not have)."""
        grammar = constraint.grammar
        compiled = self._cache.get(grammar)
        if compiled is None:
            compiled = LLMatcher(self.tokenizer, grammar, log_level=0, limits=parser_limits())
            if compiled.is_error():
                raise InvalidInput("structured_output", f"does not compile: {compiled.get_error()}")
            self._cache[grammar] = compiled
            if len(self._cache) > _CACHED:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(grammar)
        return compiled.deep_copy()


# A backslash pair, or a \u escape with a leading zero, or any \U escape.
_ZERO_LED = re.compile(r"(\\\\)|\\u(0[0-9a-fA-F]{3})|\\U([0-9a-fA-F]{8})")


def lark_of_gbnf(gbnf: str) -> str:
    r"""A GBNF grammar in llguidance's Lark; ValueError if it is no GBNF.

    llguidance 1.9's converter writes "\u00e9" as "\ue9" (it strips leading
    zeros), which no Lark reads: such escapes go in as "\xNN", or as the
    character itself beyond one byte, which means the same in GBNF."""
    try:
        return gbnf_to_lark(_ZERO_LED.sub(_unescape, gbnf))
    except Exception as error:  # its parser raises several kinds, all "not GBNF"
        raise ValueError(f"is not a GBNF grammar: {error}") from None


def _unescape(match: re.Match[str]) -> str:
    if match.group(1):
        return match.group(1)
    point = int(match.group(2) or match.group(3), 16)
    if point < 0x100:
        return f"\\x{point:02x}"
    if 0xD800 <= point < 0xE000 or point > 0x10FFFF:
        return match.group(0)  # no character: the converter says so
    return chr(point)


def allowed_tokens(matcher: LLMatcher) -> int:
    """The tokens the grammar allows next, as an int whose bit i is token i."""
    return int.from_bytes(matcher.compute_bitmask(), "little")


class _Vocabulary:
    """What ``LLTokenizer`` reads off a tokenizer: each token's bytes, and how to encode."""

    def __init__(
        self,
        tokens: Sequence[bytes],
        eos: int,
        bos: int | None,
        special: Sequence[int],
        encode: Any,
    ) -> None:
        self.tokens = list(tokens)
        self.eos_token_id = eos
        self.bos_token_id = bos
        self.special_token_ids = list(special)
        self._encode = encode

    def __call__(self, text: str | bytes) -> list[int]:
        if isinstance(text, bytes):
            text = text.decode("utf-8", errors="replace")
        ids: list[int] = self._encode(text)
        return ids


def byte_tokenizer(
    tokens: Sequence[bytes], eos: int, bos: int | None, special: Sequence[int], encode: Any
) -> LLTokenizer:
    """An ``LLTokenizer`` over a vocabulary given as each token's bytes.

    Special tokens are marked as llguidance expects (a 0xFF byte before their
    name), so that no grammar's text can be spelt with them: only the
    end-of-sequence token ends an answer, and only where the grammar allows it."""
    specials = set(special)
    marked = [b"\xff" + t if i in specials else t for i, t in enumerate(tokens)]
    wrapper = TokenizerWrapper(_Vocabulary(marked, eos, bos, special, encode))
    return LLTokenizer(wrapper, slices=[])
