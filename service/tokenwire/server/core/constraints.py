"""Structured output: a ``StructuredOutput`` -> a validated, compiled ``Constraint``.

Every constraint is compiled here, once, into llguidance's grammar format, and
refused up front when it does not compile: a client learns of a bad schema, regex
or grammar from an INVALID_ARGUMENT (400) naming the field, never mid-stream.

    constraint = structured_output(request.structured_output, max_bytes)  # or None
    constraint.grammar    # llguidance's form: the simulator and transformers mask with it
    constraint.value      # the client's own text: TensorRT-LLM compiles it itself

llguidance (a Rust grammar engine with no Python dependencies) rather than
xgrammar, which needs torch and so cannot be a dependency of the default install:
docs/structured-output.md. Compiling is bounded twice: by the text's size
(``--max-grammar-bytes``) and by llguidance's own fuel limits, which stop a grammar
whose lexer or parser would explode (``engines/grammar.py``, the same limits the
engines bind grammars with); a compiled grammar is cached by its text, so
a schema sent with every request is compiled once.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Sequence

from llguidance import LLMatcher

from tokenwire.v1 import generation_pb2 as pb

from ..engines.base import Constraint, ConstraintKind
from ..engines.grammar import JSON_WHITESPACE, lark_of_gbnf, parser_limits
from .errors import InvalidArgument

MAX_CHOICES = 1024
_FIELD = "structured_output"
_CACHED_GRAMMARS = 256


def structured_output(so: pb.StructuredOutput, max_bytes: int) -> Constraint | None:
    """The request's constraint, validated and compiled; None when it has none."""
    which = so.WhichOneof("kind")
    if which is None:
        return None
    where = f"{_FIELD}.{which}"
    if which == "json_object":
        if not so.json_object:
            raise InvalidArgument(where, "must be true when set")
        return compile_constraint("json_object", "", (), where)
    if which == "choice":
        choices = tuple(so.choice.choices)
        if not choices:
            raise InvalidArgument(f"{where}.choices", "must not be empty")
        if len(choices) > MAX_CHOICES:
            raise InvalidArgument(f"{where}.choices", f"at most {MAX_CHOICES} choices")
        for i, choice in enumerate(choices):
            if not choice:
                raise InvalidArgument(f"{where}.choices[{i}]", "must not be empty")
        size = sum(len(c.encode()) for c in choices)
        _check_size(where + ".choices", size, max_bytes)
        return compile_constraint("choice", "", choices, f"{where}.choices")
    value: str = getattr(so, which)
    kind: ConstraintKind = "grammar" if which == "ebnf_grammar" else which
    if not (value if which == "regex" else value.strip()):  # " " is a regex all the same
        raise InvalidArgument(where, "must not be empty")
    _check_size(where, len(value.encode()), max_bytes)
    return compile_constraint(kind, value, (), where)


def json_schema(text: str, where: str, max_bytes: int) -> Constraint:
    """A JSON Schema from a client (a tool's parameters), validated like structured output's."""
    _check_size(where, len(text.encode()), max_bytes)
    return compile_constraint("json_schema", text, (), where)


def lark(text: str, where: str) -> Constraint:
    """A Lark grammar of the server's own (tool calls), compiled like a client's."""
    return compile_constraint("lark", text, (), where)


def compile_constraint(
    kind: ConstraintKind, value: str, choices: Sequence[str], where: str
) -> Constraint:
    """``Constraint`` with its llguidance grammar, or InvalidArgument naming ``where``."""
    grammar, error = _compiled(kind, value, tuple(choices))
    if error:
        raise InvalidArgument(where, error)
    return Constraint(kind=kind, value=value, choices=tuple(choices), grammar=grammar)


@functools.lru_cache(maxsize=_CACHED_GRAMMARS)
def _compiled(kind: ConstraintKind, value: str, choices: tuple[str, ...]) -> tuple[str, str]:
    """(grammar, "") or ("", why not): a refusal is cached as well as a grammar."""
    try:
        grammar = _grammar(kind, value, choices)
    except ValueError as error:
        return "", str(error)
    problem = LLMatcher.validate_grammar(grammar, None, limits=parser_limits())
    if problem:
        return "", _readable(problem)
    return grammar, ""


def _grammar(kind: ConstraintKind, value: str, choices: tuple[str, ...]) -> str:
    if kind == "json_object":
        return LLMatcher.grammar_from_json_schema(
            '{"type": "object"}', defaults={"whitespace_pattern": JSON_WHITESPACE}
        )
    if kind == "json_schema":
        try:
            schema = json.loads(value, parse_constant=_no_constant)
        except (ValueError, RecursionError) as error:
            raise ValueError(f"is not valid JSON: {error}") from None
        if schema is True:
            schema = {}  # the same schema: any JSON value
        if schema is False:
            raise ValueError("admits no answer (the schema false)")
        if not isinstance(schema, dict):
            raise ValueError("must be a JSON Schema: an object (or true)")
        return LLMatcher.grammar_from_json_schema(
            json.dumps(schema), defaults={"whitespace_pattern": JSON_WHITESPACE}
        )
    if kind == "regex":
        return LLMatcher.grammar_from_regex(value)
    if kind == "grammar":
        return LLMatcher.grammar_from_lark(lark_of_gbnf(value))
    if kind == "lark":
        return LLMatcher.grammar_from_lark(value)
    # choice: each one a string literal (JSON's escapes are Lark's).
    return LLMatcher.grammar_from_lark("start: " + " | ".join(json.dumps(c) for c in choices))


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not JSON")


def _readable(problem: str) -> str:
    """llguidance's message, on one line without its source excerpt."""
    lines = [line.strip() for line in problem.strip().splitlines() if line.strip()]
    head = " ".join(line for line in lines if not line[:1].isdigit() and not line.startswith("^"))
    # "at 1(8): ..." points into the grammar llguidance wraps the client's text in.
    head = re.sub(r"^at \d+\(\d+\): ", "", head)
    return f"does not compile: {head or problem.strip()}"[:500]


def _check_size(where: str, size: int, max_bytes: int) -> None:
    if size > max_bytes:
        raise InvalidArgument(where, f"is {size} bytes, more than the limit of {max_bytes}")
