"""The guided decoder: a request's guide compiled as the LLM's backend would, and each
token drawn among those it allows.

docs/tensorrt_llm.md, "Structured output", says what this mirrors: the runtime makes a
request's matcher when it first schedules it (``GuidedDecoder._build``), with the LLM's
``guided_decoding_backend``; a guide that does not compile, or a matcher that reaches
a state no token can leave, fails that request with "Guided decoding error: ..." (the
behaviour since PR #9078), and the executor serves on.

llguidance stands in for both backends, over the fake's own vocabulary, so the text a
guided request gets really satisfies its guide. For xgrammar, what xgrammar reads is
put into llguidance's terms first: its EBNF through ``gbnf_to_lark``, its built-in JSON
grammar (``json_object``) as a schema of an object or an array. Tokens are drawn as the
simulator draws them under a grammar (``tokenwire.server.engines.simgrammar``).
"""

from __future__ import annotations

import functools
import json
import random
import re
from typing import TYPE_CHECKING

from llguidance import LLMatcher
from llguidance.gbnf_to_lark import gbnf_to_lark
from pydantic import BaseModel

from tokenwire.server.engines.base import RequestFailed
from tokenwire.server.engines.grammar import parser_limits
from tokenwire.server.engines.simgrammar import Constrained, TokenKinds, sim_matchers
from tokenwire.server.engines.simtok import SimTokenizer

if TYPE_CHECKING:
    from llguidance import LLTokenizer

    from ..sampling_params import GuidedDecodingParams

# What xgrammar's compile_builtin_json_grammar() accepts: an object or an array.
_XGRAMMAR_BUILTIN_JSON = '{"type": ["object", "array"]}'
# gbnf_to_lark writes "\u00e9" as "\ue9", which no Lark reads; "\xe9" it keeps.
_SHORT_U = re.compile(r"(?<!\\)((?:\\\\)*)\\u00([0-9a-fA-F]{2})")


NO_GUIDED_DECODER = (
    "Assertion failed: Request is specified with GuidedDecodingParams, but GuidedDecoder is "
    "not setup. Please provide a valid GuidedDecodingConfig to setup GuidedDecoder."
)
"""The C++ executor's answer to a guide when the LLM has no backend (issue #2624)."""


class GuideError(Exception):
    """The guide failed its request: the text after "Guided decoding error: "."""


def has_guide(guide: GuidedDecodingParams | None) -> bool:
    """Whether ``_get_guided_decoding_params`` makes a guide of it (else: unconstrained)."""
    if guide is None:
        return False
    fields = (guide.json, guide.regex, guide.grammar, guide.structural_tag)
    return guide.json_object or any(f is not None for f in fields)


def llguidance_grammar(guide: GuidedDecodingParams, backend: str) -> str:
    """The guide in llguidance's grammar format, as ``backend`` would read it.

    The order is ``_get_guided_decoding_params``'s: json_object, json, regex, grammar,
    structural_tag. GuideError for what the backend refuses.
    """
    if guide.json_object:
        schema = '{"type": "object"}' if backend == "llguidance" else _XGRAMMAR_BUILTIN_JSON
        return LLMatcher.grammar_from_json_schema(schema)
    if guide.json is not None:
        given = guide.json
        if isinstance(given, BaseModel):  # an instance: a model class is not converted
            given = given.model_json_schema()
        text = given if isinstance(given, str) else json.dumps(given)
        return LLMatcher.grammar_from_json_schema(text)
    if guide.regex is not None:
        return LLMatcher.grammar_from_regex(guide.regex)
    if guide.grammar is not None:
        if backend == "llguidance":  # "LLGuidance expects Lark grammar format"
            return LLMatcher.grammar_from_lark(guide.grammar)
        try:
            lark = gbnf_to_lark(_SHORT_U.sub(r"\1\\x\2", guide.grammar))
        except Exception as error:
            raise GuideError(f"xgrammar cannot parse the EBNF grammar: {error}") from None
        return LLMatcher.grammar_from_lark(lark)
    if guide.structural_tag is not None and backend == "llguidance":
        raise GuideError("Unsupported guide type: GuideType.STRUCTURAL_TAG")
    raise GuideError("the fake does not model this guide (structural_tag)")


@functools.cache
def _vocabulary() -> tuple[LLTokenizer, TokenKinds, SimTokenizer]:
    tokenizer = SimTokenizer()
    return sim_matchers(tokenizer).tokenizer, TokenKinds(tokenizer), tokenizer


class GuidedDecoder:
    """One LLM's guided decoder: guides compiled once per text, a matcher per sequence."""

    def __init__(self, backend: str) -> None:
        self.backend = backend
        self._compiled: dict[str, LLMatcher] = {}

    def sequence(self, guide: GuidedDecodingParams, rng: random.Random) -> Guided:
        try:
            grammar = llguidance_grammar(guide, self.backend)
        except (TypeError, ValueError) as error:  # e.g. a schema that is no JSON
            raise GuideError(str(error)) from None
        compiled = self._compiled.get(grammar)
        if compiled is None:
            tokenizer, _, _ = _vocabulary()
            compiled = LLMatcher(tokenizer, grammar, log_level=0, limits=parser_limits())
            if compiled.is_error():
                matcher_error = f"matcher error: {compiled.get_error()}"
                name = "LLGuidance" if self.backend == "llguidance" else "xgrammar"
                raise GuideError(f"{name} {matcher_error}")
            self._compiled[grammar] = compiled
        _, kinds, sim = _vocabulary()
        return Guided(Constrained(compiled.deep_copy(), kinds, sim, rng))


class Guided:
    """One sequence under its guide."""

    def __init__(self, constrained: Constrained) -> None:
        self._constrained = constrained

    def next_token(self) -> int:
        """The next token the guide allows, consumed; GuideError at a dead end."""
        try:
            return self._constrained.next_token()
        except RequestFailed as error:
            raise GuideError(str(error)) from None
