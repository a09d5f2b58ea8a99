"""Hypothesis strategies for any protobuf message, built from its descriptor.

    st_message(pb.GenerateRequest)     # every field, nested messages, enums, maps

Every field of the message and of the messages inside it (to a depth) may be set,
to any value of its type: integers across the whole range, floats with NaN and
infinities, strings of any code point protobuf can carry, enums with numbers the
contract does not name. A new field in the proto is fuzzed without a change here.
"""

from __future__ import annotations

import os
from typing import Any

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from hypothesis import strategies as st

# Cases per property: few in make test, many in make soak (FUZZ_EXAMPLES).
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "0")) or None

_T = FieldDescriptor
# Descriptors are typed loosely here: the runtime's are upb's classes, whose stubs
# leave nested descriptors optional where a field of that type always has one.
Descriptor = Any
Field = Any
_INTS = {
    _T.TYPE_INT32: (-(2**31), 2**31 - 1),
    _T.TYPE_SINT32: (-(2**31), 2**31 - 1),
    _T.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    _T.TYPE_UINT32: (0, 2**32 - 1),
    _T.TYPE_FIXED32: (0, 2**32 - 1),
    _T.TYPE_INT64: (-(2**63), 2**63 - 1),
    _T.TYPE_SINT64: (-(2**63), 2**63 - 1),
    _T.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    _T.TYPE_UINT64: (0, 2**64 - 1),
    _T.TYPE_FIXED64: (0, 2**64 - 1),
}
# protobuf strings are UTF-8: no lone surrogates (the client could not send one).
_TEXT = st.text(st.characters(exclude_categories=["Cs"]), max_size=64)


def _ints(lo: int, hi: int) -> st.SearchStrategy[int]:
    # The edges and small numbers (where limits sit) as often as the rest.
    return st.one_of(
        st.sampled_from([lo, hi, 0, 1, -1 if lo < 0 else 2]),
        st.integers(-5, 300).filter(lambda v: lo <= v <= hi),
        st.integers(lo, hi),
    )


def _scalar(field: Field) -> st.SearchStrategy[Any]:
    kind = field.type
    if kind in _INTS:
        return _ints(*_INTS[kind])
    if kind == _T.TYPE_BOOL:
        return st.booleans()
    if kind == _T.TYPE_DOUBLE:
        return st.floats(allow_nan=True, allow_infinity=True)
    if kind == _T.TYPE_FLOAT:
        return st.floats(width=32, allow_nan=True, allow_infinity=True)
    if kind == _T.TYPE_STRING:
        return _TEXT
    if kind == _T.TYPE_BYTES:
        return st.binary(max_size=64)
    if kind == _T.TYPE_ENUM:
        named = [v.number for v in field.enum_type.values]
        return st.one_of(st.sampled_from(named), _ints(-(2**31), 2**31 - 1))
    raise AssertionError(f"no strategy for field {field.full_name}")


def _fields(descriptor: Descriptor, depth: int) -> st.SearchStrategy[dict[str, Any]]:
    values: dict[str, st.SearchStrategy[Any]] = {}
    for field in descriptor.fields:
        if field.type == _T.TYPE_MESSAGE:
            if depth <= 0:
                continue
            inner = _fields(field.message_type, depth - 1)
            if field.message_type.GetOptions().map_entry:
                key, value = field.message_type.fields
                values[field.name] = st.dictionaries(_scalar(key), _value(value, depth), max_size=3)
                continue
            one: st.SearchStrategy[Any] = inner
        else:
            one = _scalar(field)
        values[field.name] = st.lists(one, max_size=4) if _repeated(field) else one
    return st.fixed_dictionaries({}, optional=values)


def _value(field: Field, depth: int) -> st.SearchStrategy[Any]:
    if field.type == _T.TYPE_MESSAGE:
        return _fields(field.message_type, depth - 1)
    return _scalar(field)


def _repeated(field: Field) -> bool:
    return bool(field.is_repeated)


def _fill(message: Message, values: dict[str, Any]) -> Message:
    for name, value in values.items():
        field: Field = message.DESCRIPTOR.fields_by_name[name]
        target = getattr(message, name)
        if field.type == _T.TYPE_MESSAGE and field.message_type.GetOptions().map_entry:
            value_field = field.message_type.fields_by_name["value"]
            for k, v in value.items():
                if value_field.type == _T.TYPE_MESSAGE:
                    _fill(target[k], v)
                else:
                    target[k] = v
        elif field.type == _T.TYPE_MESSAGE and _repeated(field):
            for item in value:
                _fill(target.add(), item)
        elif field.type == _T.TYPE_MESSAGE:
            _fill(target, value)
            if not value:
                target.SetInParent()  # present, though empty
        elif _repeated(field):
            target.extend(value)
        else:
            setattr(message, name, value)
    return message


def st_message(cls: type[Message], depth: int = 4) -> st.SearchStrategy[Message]:
    """Messages of ``cls`` with any subset of their fields set, recursively."""
    return _fields(cls.DESCRIPTOR, depth).map(lambda values: _fill(cls(), values))
