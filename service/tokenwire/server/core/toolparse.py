"""Tool calls read out of one sequence's text as it streams.

    parser = CallParser(fmt, names)
    content, calls = parser.push(text)   # each piece of the sequence's text
    content, calls = parser.finish()     # at its end
    parser.complete                      # calls that went out whole and valid

A call's arguments go out as the model writes them (each character checked as
JSON on the way, ``jsonscan.py``); text before a call goes out as content at once,
and only what might be the start of a call waits. Arguments written as a JSON
string holding the object (some models do) go out once the string is whole.

A call that is not one is not lost:

- text that is not a JSON object of the call's shape, or names no offered tool,
  goes out as content, whole, as long as nothing of the call went out yet (its
  name comes before its arguments, so that is until the name is read); the
  character where it went wrong is read again, as content (it may open a call);
- a call that breaks after it began keeps what it streamed, and the text from the
  break on goes out as content;
- a sequence that ends inside a call ends with what it has (finish ``length``,
  say: the client can tell the arguments are incomplete).

Whitespace between and around calls is not content, nor is what a call's end
marker closes.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterable, Sequence

from ..engines.base import ToolCallDelta
from .jsonscan import CallScanner, ScanError
from .toolcalls import ToolFormat

_MARKER_WITHIN = 64  # characters after a call's object in which its end marker is looked for
_PYTHON_TAG = "<|python_tag|>"  # Llama 3's marker before a call, when special tokens show


def new_call_id() -> str:
    """OpenAI's shape of a call id."""
    return "call_" + uuid.uuid4().hex[:24]


class CallParser:
    """One sequence's text, split into content and tool calls as it arrives."""

    __slots__ = (
        "_after",
        "_content",
        "_deltas",
        "_emitted",
        "_fmt",
        "_held",
        "_id",
        "_lead",
        "_mode",
        "_names",
        "_new_id",
        "_raw",
        "_raw_out",
        "_scan",
        "_sent",
        "_ws",
        "calls",
        "complete",
    )

    def __init__(
        self,
        fmt: ToolFormat,
        names: frozenset[str],
        new_id: Callable[[], str] = new_call_id,
    ) -> None:
        self._fmt = fmt
        self._names = names
        self._new_id = new_id
        # begin: nothing read yet (llama3_json decides here); content; call; after (a
        # call's object is whole, its end may follow); text: no more calls (llama3_json)
        self._mode = "begin" if not fmt.start else "content"
        self._held = ""  # text that may be the start of a call
        self._ws = ""  # whitespace after content or a call, out only if content follows
        self._lead = ""  # what opened the current call (its start marker)
        self._raw: list[str] = []  # the current call's characters after its opening
        self._raw_out = 0  # how many of them its deltas stand for
        self._after = ""  # text after a call's object, until its end marker
        self._scan: CallScanner | None = None
        self._emitted = False  # something of the current call went out
        self._sent = 0  # where the arguments that went out end, in the scanner's chars
        self._id = ""
        self._content: list[str] = []
        self._deltas: list[ToolCallDelta] = []
        self.calls = 0  # calls that began going out
        self.complete = 0  # calls that went out whole, their arguments a JSON object

    def push(self, text: str) -> tuple[str, tuple[ToolCallDelta, ...]]:
        """Content and call deltas in ``text``, the next piece of the sequence's text."""
        data = text
        while data:
            data = self._step(data)
        return self._take()

    def finish(self) -> tuple[str, tuple[ToolCallDelta, ...]]:
        """The sequence ended: what was held goes out as what it is."""
        mode, fmt = self._mode, self._fmt
        if mode == "call" and not self._emitted:
            self._text(self._lead + "".join(self._raw))
        elif mode == "after":
            tail = self._after.strip()
            if tail and not (fmt.end.startswith(tail) if fmt.end else tail == ";"):
                self._text(self._after)
        elif mode in ("begin", "content", "text"):
            self._text(self._held)
        self._held = self._after = ""
        self._raw = []
        if not self.calls:
            self._content.append(self._ws)  # no calls: the text is the answer, all of it
        self._ws = ""
        self._mode = "text"
        return self._take()

    # --- the state machine ---------------------------------------------------------

    def _step(self, data: str) -> str:
        """Consume some of ``data``; return the rest."""
        mode = self._mode
        if mode == "begin":
            return self._begin(data)
        if mode == "content":
            return self._in_content(data)
        if mode == "call":
            return self._in_call(data)
        if mode == "after":
            return self._after_call(data)
        self._text(data)
        return ""

    def _begin(self, data: str) -> str:
        """llama3_json: an answer is calls if it opens with one, else plain text."""
        text = self._held + data
        stripped = text.lstrip()
        if stripped.startswith(_PYTHON_TAG):
            body = stripped[len(_PYTHON_TAG) :].lstrip()
        else:
            body = "" if _PYTHON_TAG.startswith(stripped) else stripped
        if not body:  # nothing to decide by yet
            self._held = text
            return ""
        self._held = ""
        if body.startswith("{"):
            self._open_call(text[: len(text) - len(body)])
            return body
        self._mode = "text"
        return text

    def _in_content(self, data: str) -> str:
        start = self._fmt.start
        text = self._held + data
        self._held = ""
        at = text.find(start)
        if at >= 0:
            self._text(text[:at])
            self._ws = ""  # whitespace before a call is not content
            self._open_call(start)
            return text[at + len(start) :]
        keep = _partial_suffix(text, start)
        self._text(text[: len(text) - keep])
        self._held = text[len(text) - keep :]
        return ""

    def _open_call(self, lead: str) -> None:
        self._mode = "call"
        self._scan = CallScanner(self._fmt.arguments_keys)
        self._lead = lead
        self._raw = []
        self._raw_out = 0
        self._emitted = False
        self._sent = 0

    def _in_call(self, data: str) -> str:
        scan = self._scan
        assert scan is not None
        raw, feed = self._raw, scan.feed
        # The arguments go out once per piece, not per character: what a call
        # costs stays a few method calls a character.
        for i, ch in enumerate(data):
            try:
                feed(ch)
            except ScanError:
                self._send_arguments(scan)
                return self._broken(data[i:])  # read the character again, as content
            raw.append(ch)
            if not self._emitted and scan.name is not None:
                if scan.name not in self._names:
                    return self._broken(data[i + 1 :])
                self._id = self._new_id()
                self._deltas.append(ToolCallDelta(self.calls, self._id, scan.name, ""))
                self._emitted = True
                self._raw_out = len(raw)
                self.calls += 1
            if scan.done:
                if not self._emitted:  # an object with no name
                    return self._broken(data[i + 1 :])
                self._send_arguments(scan)
                if not self._close_call(scan):
                    return self._broken(data[i + 1 :])
                return data[i + 1 :]
        self._send_arguments(scan)
        return ""

    def _send_arguments(self, scan: CallScanner) -> None:
        if not self._emitted or scan.arguments_kind != "object":
            return
        end = scan.arguments_end
        start = max(self._sent, scan.arguments_start)
        if end > start:
            self._deltas.append(ToolCallDelta(self.calls - 1, arguments=scan.text(start, end)))
            self._sent = end
            # The raw characters those stand for: the scanner's, after leading spaces.
            self._raw_out = len(self._raw) - (len(scan.chars) - end)

    def _close_call(self, scan: CallScanner) -> bool:
        """The call's object is whole: its arguments go out if they had to wait (a
        string holding them, or none at all); False if they are no JSON object."""
        if scan.arguments_kind == "string":
            try:
                arguments = json.loads(scan.text(scan.arguments_start, scan.arguments_end))
                valid = isinstance(json.loads(arguments), dict)
            except (ValueError, RecursionError):  # a model's text: no call, not a 500
                valid = False
            if not valid:
                return False
            self._deltas.append(ToolCallDelta(self.calls - 1, arguments=arguments))
        elif not scan.arguments_kind:
            self._deltas.append(ToolCallDelta(self.calls - 1, arguments="{}"))
        self.complete += 1
        self._mode, self._after = "after", ""
        return True

    def _broken(self, rest: str) -> str:
        """Not a call after all: its text is content, what of it did not go out as
        the call (all of it, if nothing did)."""
        raw = "".join(self._raw)
        self._text(self._lead + raw if not self._emitted else raw[self._raw_out :])
        self._scan = None
        self._raw = []
        self._mode = "content" if self._fmt.start else "text"
        return rest

    def _after_call(self, data: str) -> str:
        """After a call's object: its end marker (hermes) or the next call (llama3_json)."""
        fmt = self._fmt
        text = self._after + data
        stripped = text.lstrip()
        if fmt.end:
            # The marker within a few characters closes the call, and what stands
            # between is content; looked for in the same span however the text came.
            span = _MARKER_WITHIN + len(fmt.end)
            at = stripped.find(fmt.end, 0, span)
            opens = stripped.find(fmt.start, 0, span)
            if at >= 0 and not 0 <= opens < at:
                self._text(stripped[:at])
                self._ws = ""
                self._mode = "content"
                return stripped[at + len(fmt.end) :]
            if len(stripped) < span and opens < 0:
                self._after = text  # the marker may be coming
                return ""
            self._mode = "content"  # no marker: the call stands, the rest is text
            return text
        if not stripped:
            self._after = text
            return ""
        if stripped.startswith(";"):
            rest = stripped[1:].lstrip()
            if not rest:
                self._after = text
                return ""
            if rest.startswith("{"):
                self._open_call("")
                return rest
        self._mode = "text"
        return text

    # --- output --------------------------------------------------------------------

    def _text(self, text: str) -> None:
        """Content out, but trailing whitespace waits: it is not content if a call
        follows (or, after a call, if nothing else does)."""
        if not text:
            return
        body = text.rstrip()
        if body:
            self._content.append(self._ws + body)
            self._ws = ""
        self._ws += text[len(body) :]

    def _take(self) -> tuple[str, tuple[ToolCallDelta, ...]]:
        content = "".join(self._content)
        deltas = merge_calls((self._deltas,))
        self._content.clear()
        self._deltas.clear()
        return content, deltas


def merge_calls(parts: Iterable[Sequence[ToolCallDelta]]) -> tuple[ToolCallDelta, ...]:
    """Consecutive tool-call deltas as few as say the same: one per call, its name
    (on its first) and its arguments' fragments joined."""
    merged: list[ToolCallDelta] = []
    for calls in parts:
        for c in calls:
            last = merged[-1] if merged else None
            if last is not None and last.index == c.index and not c.id:
                merged[-1] = ToolCallDelta(
                    last.index, last.id, last.name, last.arguments + c.arguments
                )
            else:
                merged.append(c)
    return tuple(merged)


def _partial_suffix(text: str, marker: str) -> int:
    """Length of the longest end of ``text`` that is a proper start of ``marker``."""
    for k in range(min(len(marker) - 1, len(text)), 0, -1):
        if marker.startswith(text[-k:]):
            return k
    return 0
