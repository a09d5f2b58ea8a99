"""Structured output on TensorRT-LLM: the LLM's grammar engine, and each constraint as
the ``GuidedDecodingParams`` that engine reads.

    backend = guided_backend(settings)        # "llguidance", "xgrammar" or None, at start
    LLM(..., guided_decoding_backend=backend)
    SamplingParams(..., guided_decoding=guided_decoding(params_class, backend, constraint))

TensorRT-LLM compiles a guide itself, in its executor loop, with the engine the LLM
was built with; the same ``grammar`` field means an xgrammar EBNF grammar to one and
a Lark grammar to the other, so a constraint is written for the engine that reads it
(docs/tensorrt_llm.md, "Structured output"). The server has already validated every
constraint with llguidance: what reaches here compiles.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .base import Constraint, EngineUnavailable, InvalidInput
from .grammar import lark_of_gbnf

if TYPE_CHECKING:
    from ..settings import Settings

# Files whose presence means Hugging Face can load a tokenizer from a model directory.
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
# xgrammar's built-in JSON grammar (what json_object=True compiles to there) admits an
# array as well; tokenwire's json_object promises an object.
_ANY_OBJECT = '{"type": "object"}'
# xgrammar reads "\x" with any number of hex digits after it: "\u" takes exactly four.
_XGRAMMAR_ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}
# A GBNF "\xNN" (two digits, as llama.cpp and the server's check read it), not itself
# escaped by a backslash before it.
_GBNF_HEX = re.compile(r"(?<!\\)((?:\\\\)*)\\x([0-9a-fA-F]{2})")


def guided_backend(settings: Settings) -> str | None:
    """The LLM's ``guided_decoding_backend``, None for none; EngineUnavailable for a
    choice TensorRT-LLM would refuse.

    auto is llguidance on the PyTorch backend and xgrammar on prebuilt engines, the
    only one they take. TensorRT-LLM sets a backend up from the model's tokenizer and
    fails to load without one, so auto leaves it off for a model that will load with
    none (token ids only: no structured output then).
    """
    chosen = settings.guided_decoding_backend
    on_engines = settings.trtllm_backend == "tensorrt"
    if chosen == "llguidance" and on_engines:
        raise EngineUnavailable(
            "--guided-decoding-backend llguidance needs --trtllm-backend pytorch: "
            "prebuilt TensorRT engines (--trtllm-backend tensorrt) take xgrammar only"
        )
    has_tokenizer = _loads_a_tokenizer(settings)
    if chosen == "auto":
        if not has_tokenizer:
            return None
        return "xgrammar" if on_engines else "llguidance"
    if not has_tokenizer:
        raise EngineUnavailable(
            f"--guided-decoding-backend {chosen} needs the model's tokenizer, and "
            f"{settings.model!r} has none: set --tokenizer"
        )
    return chosen


def _loads_a_tokenizer(settings: Settings) -> bool:
    """Whether TensorRT-LLM will find a tokenizer: one named, a model by name (its
    repository has one), or a model directory with tokenizer files. A directory
    without them loads with none, as ``load_hf_tokenizer`` gives up quietly."""
    if settings.tokenizer:
        return True
    model = Path(settings.model)
    if not model.is_dir():
        return True
    return any((model / name).is_file() for name in _TOKENIZER_FILES)


def guided_decoding(params_class: Any, backend: str | None, constraint: Constraint) -> Any:
    """``GuidedDecodingParams`` for ``constraint``; InvalidInput when this LLM cannot
    enforce it (a request it would answer unconstrained is refused instead)."""
    where = "tool_choice" if constraint.kind == "lark" else "structured_output"
    if params_class is None:
        raise InvalidInput(
            where, "this TensorRT-LLM has no guided decoding (SamplingParams.guided_decoding)"
        )
    if backend is None:
        raise InvalidInput(
            where,
            "the model loaded without a tokenizer, so TensorRT-LLM has no guided decoding "
            "backend: set --tokenizer",
        )
    return params_class(**guide_fields(constraint, backend))


def guide_fields(constraint: Constraint, backend: str) -> dict[str, object]:
    """The one ``GuidedDecodingParams`` field that carries ``constraint`` for ``backend``."""
    kind, value = constraint.kind, constraint.value
    if kind == "json_schema":
        return {"json": value}
    if kind == "json_object":
        return {"json_object": True} if backend == "llguidance" else {"json": _ANY_OBJECT}
    if kind == "regex":
        return {"regex": value}
    if kind == "grammar":  # GBNF from the client: xgrammar's own dialect, Lark for llguidance
        return {"grammar": xgrammar_ebnf(value) if backend == "xgrammar" else _lark_of(value)}
    if kind == "choice":
        return {"grammar": choice_grammar(constraint.choices, backend)}
    # lark: the server's tool-call grammar, in llguidance's dialect (%json and all).
    if backend != "llguidance":
        raise InvalidInput(
            "tool_choice",
            "forcing a tool call needs --guided-decoding-backend llguidance "
            "(on --trtllm-backend pytorch): xgrammar cannot read its grammar",
        )
    return {"grammar": value}


def xgrammar_ebnf(gbnf: str) -> str:
    r"""GBNF as xgrammar reads it alike: each two-digit "\xNN" as "\u00NN", since
    xgrammar's "\x" would run on into hex digits written after it."""
    return _GBNF_HEX.sub(r"\1\\u00\2", gbnf)


def _lark_of(gbnf: str) -> str:
    try:
        return lark_of_gbnf(gbnf)
    except ValueError as error:  # the server converted it already: only a bug comes here
        raise InvalidInput("structured_output", str(error)) from error


def choice_grammar(choices: Sequence[str], backend: str) -> str:
    """One of ``choices`` exactly: a Lark rule for llguidance, an EBNF one for xgrammar."""
    if backend == "llguidance":
        return "start: " + " | ".join(json.dumps(c) for c in choices)  # JSON's escapes are Lark's
    return "root ::= " + " | ".join(xgrammar_literal(c) for c in choices)


def xgrammar_literal(text: str) -> str:
    """``text`` as an xgrammar EBNF string literal: UTF-8 as is, C escapes for the rest."""
    out = []
    for char in text:
        escaped = _XGRAMMAR_ESCAPES.get(char)
        if escaped is None and (char < " " or char == "\x7f"):
            escaped = f"\\u{ord(char):04x}"
        out.append(escaped or char)
    return '"' + "".join(out) + '"'
