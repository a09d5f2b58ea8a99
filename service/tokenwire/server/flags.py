"""Command-line flags and environment variables to ``Settings``, and errors a person can read.

    settings = flags.parse(sys.argv[1:])   # BadSettings: one line per problem

Every ``Settings`` field is a flag, ``--max-queue`` for ``max_queue``, and reads
``TOKENWIRE_MAX_QUEUE`` from the environment (pydantic-settings does that part);
a flag given on the command line wins. Booleans are ``--log-json`` /
``--no-log-json``. The parser is plain argparse built from the fields, so that
``--help`` shows metavars (PORT, PATH, MS) and defaults rather than pydantic's
type names, and errors name the flag and its variable. No error echoes a
secret's value, nor any value the parser could not place (it may be one).
"""

from __future__ import annotations

import argparse
import difflib
import re
import types
from collections.abc import Iterator, Sequence
from importlib.metadata import version
from pathlib import Path
from typing import Annotated, Any, Literal, NoReturn, Union, get_args, get_origin

from annotated_types import Ge, Gt, Le, Lt
from pydantic import SecretStr, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails

from .settings import ENV_PREFIX, EXTRA_ENV, BadSettings, Settings, option

PROG = "tokenwire-server"

# Help sections: each opens at the field named here and runs to the next one, so
# a new field joins the section of the field above it.
_SECTIONS = {
    "engine": "engine and model",
    "host": "listeners",
    "tls_cert": "security",
    "max_concurrent_requests": "limits on each request",
    "stall_timeout_s": "stalls",
    "shutdown_grace_s": "shutdown, logs and traces",
}

_METAVARS = {
    "model": "NAME|PATH",
    "tokenizer": "NAME|PATH",
    "dtype": "DTYPE",
    "device": "DEVICE",
    "host": "HOST",
    "metrics_host": "HOST",
    "api_key": "KEY",
    "kv_cache_memory_fraction": "FRACTION",
    "lora": "NAME=PATH",
    "max_message_bytes": "BYTES",
    "otlp_endpoint": "URL",
}


def parse(argv: Sequence[str]) -> Settings:
    """Settings from ``argv`` and the environment; ``--help`` and ``--version`` exit."""
    parser = build_parser()
    given, extra = parser.parse_known_args(list(argv))
    if extra:
        raise BadSettings(*_unexpected(list(argv), extra))
    values = vars(given)
    for name, value in values.items():
        if isinstance(value, list):  # a repeatable flag: one comma-separated value
            values[name] = ",".join(value)
    try:
        return Settings(**values)
    except ValidationError as error:
        raise BadSettings(*describe(error)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        usage=f"{PROG} [FLAG VALUE]...",
        description="Serve an LLM engine over gRPC: token streams, cancellation, "
        "health, reflection and Prometheus metrics.",
        epilog=f"Every flag also reads {ENV_PREFIX}<FLAG> from the environment "
        f"(--max-queue: {ENV_PREFIX}MAX_QUEUE); a flag wins over the environment. "
        "docs/operations.md describes every setting.",
        allow_abbrev=False,  # --port must never be taken for --port-something
        argument_default=argparse.SUPPRESS,  # only what was given, so the environment counts
        formatter_class=lambda prog: argparse.HelpFormatter(prog, max_help_position=36),
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {version('tokenwire')}")
    group = parser.add_argument_group()
    for name, field in Settings.model_fields.items():
        if name in _SECTIONS:
            group = parser.add_argument_group(_SECTIONS[name])
        flag = "--" + name.replace("_", "-")
        help_text = (field.description or "").replace("%", "%%") + _default(field)
        if _base(field.annotation) is bool:
            group.add_argument(
                flag, dest=name, action=argparse.BooleanOptionalAction, help=help_text
            )
        elif _repeatable(field):
            group.add_argument(
                flag, dest=name, action="append", metavar=_metavar(name, field), help=help_text
            )
        else:
            group.add_argument(flag, dest=name, metavar=_metavar(name, field), help=help_text)
    return parser


def _repeatable(field: FieldInfo) -> bool:
    extra = field.json_schema_extra
    return isinstance(extra, dict) and extra.get("repeatable") is True


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # argparse quotes what it could not use (`ignored explicit argument 'x'`):
        # that may be a secret, so it is left out.
        message = re.sub(r"ignored explicit argument '[^']*'", "takes no value", message)
        message = re.sub(r"'[^']*'", "(a value, not shown)", message)
        raise BadSettings(f"{message} (see {PROG} --help)")


def describe(error: ValidationError) -> Iterator[str]:
    """One line per problem, naming the flag and variable: never pydantic's dump."""
    for detail in error.errors(include_url=False):
        loc = detail["loc"]
        name = _field_name(str(loc[0])) if loc else None
        field = Settings.model_fields[name] if name else None
        text = _explain(detail, field)
        if name is None or field is None:
            yield text
            continue
        shown = detail.get("input")
        if not _is_secret(field) and isinstance(shown, str | int | float) and shown != "":
            text += f", got {_shown(shown)}"
        yield f"{option(name)}: {text}"


def _explain(detail: ErrorDetails, field: FieldInfo | None) -> str:
    kind = detail["type"]
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        return _range(field) if field is not None else detail["msg"]
    if kind in ("int_parsing", "int_from_float", "int_type"):
        return "must be a whole number"
    if kind in ("float_parsing", "float_type", "finite_number"):
        return "must be a number"
    if kind in ("bool_parsing", "bool_type"):
        return "must be true or false"
    if kind == "literal_error" and field is not None:
        return "must be one of " + ", ".join(map(str, get_args(_base(field.annotation))))
    if kind == "path_not_file":
        return "no such file"
    if kind in ("string_too_short", "too_short"):
        return "must not be empty"
    if kind == "value_error":
        return detail["msg"].removeprefix("Value error, ")
    return detail["msg"]


def _range(field: FieldInfo) -> str:
    bounds: dict[str, Any] = {}
    for bound in field.metadata:
        if isinstance(bound, Ge | Gt | Le | Lt):
            key = type(bound).__name__.lower()  # ge, gt, le, lt: also the attribute's name
            bounds[key] = getattr(bound, key)
    if "ge" in bounds and "le" in bounds:
        return f"must be between {bounds['ge']} and {bounds['le']}"
    words = {"ge": "at least", "gt": "above", "le": "at most", "lt": "below"}
    return "must be " + " and ".join(f"{words[k]} {v}" for k, v in bounds.items())


def _shown(value: str | int | float) -> str:
    text = str(value)
    if isinstance(value, str) and not re.fullmatch(r"-?[0-9.e+]+", value):
        text = repr(value if len(value) <= 60 else value[:57] + "...")
    return text


def _unexpected(argv: list[str], extra: list[str]) -> Iterator[str]:
    """What the parser could not place: unknown flags by name, stray values by place."""
    flags = [f"--{name.replace('_', '-')}" for name in Settings.model_fields]
    position = 0
    for token in extra:
        position = argv.index(token, position)
        before = argv[position - 1] if position else None
        if token.startswith("-"):
            name = token.split("=", 1)[0]
            close = difflib.get_close_matches(name, flags, n=1)
            hint = f": did you mean {close[0]}?" if close else f" (see {PROG} --help)"
            yield f"unknown flag {name}{hint}"
        elif before is not None and before.startswith("-") and before.split("=")[0] in extra:
            continue  # the value of an unknown flag, reported above
        elif before is not None and before.startswith("--"):
            yield f"unexpected value after {before.split('=')[0]} (values are not shown)"
        else:
            yield f"unexpected argument {position + 1}: flags take the form --name VALUE"
        position += 1


def _field_name(loc: str) -> str | None:
    """The field an error is about (pydantic may report an alias, or a variable name)."""
    loc = loc.lower().removeprefix(ENV_PREFIX.lower())
    for name in Settings.model_fields:
        if loc == name or loc in (env.lower() for env in EXTRA_ENV.get(name, ())):
            return name
    return None


def _default(field: FieldInfo) -> str:
    value = field.default
    if value is None:
        return ""
    if isinstance(value, bool):
        return f" (default: {'on' if value else 'off'})"
    if isinstance(value, float):
        return f" (default: {value:g})"
    return f" (default: {value})"


def _metavar(name: str, field: FieldInfo) -> str:
    base = _base(field.annotation)
    if name in _METAVARS:
        return _METAVARS[name]
    if get_origin(base) is Literal:
        return "{" + ",".join(map(str, get_args(base))) + "}"
    if name == "port" or name.endswith("_port"):
        return "PORT"
    if name.endswith("_ms"):
        return "MS"
    if name.endswith("_s"):
        return "SECONDS"
    if base is Path:
        return "PATH"
    return {int: "N", float: "NUMBER"}.get(base, "TEXT")


def _base(annotation: Any) -> Any:
    """The type a field holds, without ``| None`` and ``Annotated`` metadata."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return _base(get_args(annotation)[0])
    if origin in (Union, types.UnionType):
        options = [a for a in get_args(annotation) if a is not type(None)]
        return _base(options[0]) if len(options) == 1 else annotation
    return annotation


def _is_secret(field: FieldInfo) -> bool:
    return _base(field.annotation) is SecretStr
