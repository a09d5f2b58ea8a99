"""An incremental reader of one JSON object: a tool call, as a model writes it.

    scan = CallScanner(("arguments", "parameters"))
    for ch in text:                          # any amount at a time
        scan.feed(ch) ...
    scan.name                                # the "name" member, once its string is whole
    scan.arguments_text()                    # the arguments' raw JSON text, so far
    scan.done / scan.error

It checks JSON syntax as the text arrives, so a call that goes wrong is found at
the character where it does (a parser that waited for the whole object could not
stream the arguments). It keeps only what a call needs: the top-level object's
``name`` (a string) and where its arguments are (an object, or a string holding
one, as some models write them), whose characters stream out as they are read.
What it read is kept as a list of characters, so that a long call costs linear
time (a string grown a character at a time is copied each time).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence

_NUMBER = re.compile(r"-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?")
_LITERALS = ("true", "false", "null")
_WS = " \t\r\n"
_ESCAPES = '"\\/bfnrtu'


class ScanError(Exception):
    """The text is not a JSON object of the expected shape."""


class CallScanner:
    """Reads one JSON object character by character (``feed``)."""

    __slots__ = (
        "_args_end",
        "_args_keys",
        "_args_start",
        "_atom",
        "_escape",
        "_expect",
        "_key",
        "_key_start",
        "_name_start",
        "_stack",
        "_string",
        "_unicode",
        "_value_key",
        "arguments_kind",
        "chars",
        "done",
        "error",
        "name",
    )

    def __init__(self, arguments_keys: Sequence[str]) -> None:
        self._args_keys = tuple(arguments_keys)
        self.chars: list[str] = []  # everything fed, from the object's "{"
        self.name: str | None = None
        self.arguments_kind = ""  # "object" or "string", once the arguments begin
        self.done = False  # the object is whole
        self.error: str | None = None
        self._stack: list[str] = []  # "o" object, "a" array
        # What may come next: value | value_or_end | key | key_or_end | colon | comma_or_end
        self._expect = "value"
        self._string: str | None = None  # "key" or "value" while inside a string
        self._escape = False
        self._unicode = 0  # hex digits still due in a \\u escape
        self._atom: list[str] = []  # a number or literal being read
        self._key = ""  # the top-level member being read
        self._key_start = 0  # where the member name being read begins in ``text``
        self._value_key: str | None = None  # whose top-level value is being read
        self._name_start = -1
        self._args_start = -1
        self._args_end = -1

    @property
    def arguments_start(self) -> int:
        """Where the arguments' value begins in ``chars``; -1 before it does."""
        return self._args_start

    @property
    def arguments_end(self) -> int:
        """Where what is known of the arguments ends: their end once whole, else what
        was read less a number or literal still being read; -1 before they begin."""
        if self._args_start < 0:
            return -1
        return self._args_end if self._args_end >= 0 else len(self.chars) - len(self._atom)

    @property
    def arguments_whole(self) -> bool:
        return self._args_end >= 0

    def text(self, start: int = 0, end: int | None = None) -> str:
        return "".join(self.chars[start:end])

    def arguments_text(self) -> str | None:
        """The arguments' JSON text known so far (None before they begin)."""
        return None if self._args_start < 0 else self.text(self._args_start, self.arguments_end)

    @property
    def pending(self) -> int:
        """Characters of a number or literal being read: not yet known to be valid."""
        return len(self._atom)

    def feed(self, ch: str) -> None:
        """Read one character; raises ScanError (and keeps it in ``error``), and then
        ``chars`` and the arguments' end are what was valid before it."""
        if self.done or self.error is not None:
            raise ScanError("the object is already over")
        read = len(self.chars)
        try:
            self._feed(ch)
        except ScanError as error:
            self.error = str(error)
            del self.chars[read:]
            raise

    def _feed(self, ch: str) -> None:
        if self._string is not None:
            self.chars.append(ch)
            self._in_string(ch)
            return
        if self._atom:
            if ch.isalnum() or ch in "+-.":
                self.chars.append(ch)
                self._atom.append(ch)
                return
            self._end_atom()
        if ch in _WS:
            if not self._stack and self._expect == "value":
                return  # before the object: not part of it
            self.chars.append(ch)
            return
        depth = len(self._stack)
        expect = self._expect
        if not self._stack and expect == "value" and ch != "{":
            raise ScanError("a call must be a JSON object")
        self.chars.append(ch)
        if expect == "value_or_end" and ch == "]":
            self._close("a")
        elif expect in ("value", "value_or_end"):
            self._value(ch, depth)
        elif expect in ("key", "key_or_end"):
            if ch == '"':
                self._string = "key"
                self._key_start = len(self.chars)
            elif ch == "}" and expect == "key_or_end":
                self._close("o")
            else:
                raise ScanError("expected a member name")
        elif expect == "colon":
            if ch != ":":
                raise ScanError("expected ':'")
            self._expect = "value"
        else:  # comma_or_end
            if ch == ",":
                self._expect = "key" if self._stack[-1] == "o" else "value"
            elif ch in "}]":
                self._close("o" if ch == "}" else "a")
            else:
                raise ScanError("expected ',' or the end of an object or array")

    def _value(self, ch: str, depth: int) -> None:
        if depth == 1:
            self._value_key = self._key
            start = len(self.chars) - 1
            if self._key == "name":
                if ch != '"':
                    raise ScanError("the name must be a string")
                self._name_start = start
            elif self._key in self._args_keys and self._args_start < 0:
                if ch not in '{"':
                    raise ScanError("the arguments must be a JSON object")
                self._args_start = start
                self.arguments_kind = "object" if ch == "{" else "string"
        if ch == "{":
            self._stack.append("o")
            self._expect = "key_or_end"
        elif ch == "[":
            self._stack.append("a")
            self._expect = "value_or_end"
        elif ch == '"':
            self._string = "value"
        elif ch.isalnum() or ch == "-":
            self._atom.append(ch)
        else:
            raise ScanError(f"unexpected {ch!r}")

    def _in_string(self, ch: str) -> None:
        if self._unicode:
            if ch not in "0123456789abcdefABCDEF":
                raise ScanError("a \\u escape needs four hex digits")
            self._unicode -= 1
        elif self._escape:
            if ch not in _ESCAPES:
                raise ScanError(f"bad escape \\{ch}")
            self._escape = False
            self._unicode = 4 if ch == "u" else 0
        elif ch == "\\":
            self._escape = True
        elif ch == '"':
            kind, self._string = self._string, None
            if kind == "key":
                if len(self._stack) == 1:
                    self._key = json.loads(self.text(self._key_start - 1))
                self._expect = "colon"
            else:
                self._after_value()
        elif ch < " ":
            raise ScanError("a control character in a string")

    def _end_atom(self) -> None:
        atom = "".join(self._atom)
        if atom not in _LITERALS and not _NUMBER.fullmatch(atom):
            raise ScanError(f"{atom!r} is not a JSON value")  # still pending: not valid
        self._atom = []
        self._after_value()

    def _close(self, kind: str) -> None:
        if not self._stack or self._stack[-1] != kind:
            raise ScanError("mismatched brackets")
        self._stack.pop()
        if not self._stack:
            self.done = True
            return
        self._after_value()

    def _after_value(self) -> None:
        """A value ended; if it was one of the top-level members', note where."""
        if len(self._stack) == 1 and self._value_key is not None:
            key, self._value_key = self._value_key, None
            if key == "name" and self._name_start >= 0 and self.name is None:
                self.name = json.loads(self.text(self._name_start))
            elif key in self._args_keys and self._args_end < 0 and self._args_start >= 0:
                self._args_end = len(self.chars)
        self._expect = "comma_or_end"
