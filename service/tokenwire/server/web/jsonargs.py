"""A JSON body's values, type-checked: each refusal names the parameter as the client
sent it (``InvalidArgument``), so the HTTP door answers 400 with OpenAI's ``param``."""

from __future__ import annotations

import math
from typing import Any

from tokenwire.v1 import generation_pb2 as pb

from ..core.errors import InvalidArgument


def is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def get(obj: object, key: str, where: str) -> object:
    if not isinstance(obj, dict):
        raise InvalidArgument(where, "must be an object")
    return obj.get(key)


def text(obj: dict[str, Any], key: str, where: str | None = None, *, required: bool = True) -> str:
    value = obj.get(key)
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        raise InvalidArgument(where or key, "must be a string")
    return value


def integer(obj: dict[str, Any], key: str, where: str | None = None, bits: int = 32) -> int | None:
    value = obj.get(key)
    if value is None:
        return None
    # JSON has one number type: 2.0 is accepted as 2, as OpenAI does.
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not is_int(value):
        raise InvalidArgument(where or key, "must be an integer")
    # The contract's fields are 32-bit (seed: 64): a larger number would fail
    # the protobuf assignment itself, as a server error.
    if not -(1 << (bits - 1)) <= value < 1 << bits:
        raise InvalidArgument(where or key, f"is out of range for a {bits}-bit integer")
    return int(value)


def boolean(obj: dict[str, Any], key: str, where: str | None = None) -> bool | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, bool):
        raise InvalidArgument(where or key, "must be a boolean")
    return value


def set_float(
    body: dict[str, Any], key: str, target: pb.SamplingParams | pb.GenerateRequest
) -> None:
    value = body.get(key)
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidArgument(key, "must be a number")
    if not math.isfinite(value):
        raise InvalidArgument(key, "must be finite")
    setattr(target, key, float(value))


def set_bool(body: dict[str, Any], key: str, target: Any, name: str) -> None:
    value = boolean(body, key)
    if value is not None:
        setattr(target, name, value)


def text_list(value: object, where: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidArgument(where, "must be a string or an array of strings")
    return list(value)


def int_list(value: object, where: str) -> list[int]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(is_int(v) for v in value):
        raise InvalidArgument(where, "must be an array of integers")
    return list(value)
