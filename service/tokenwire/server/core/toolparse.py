"""Tool calls, the answer side: calls read out of the text as it streams.

    handle = ParsedCalls(engine_handle, plan.format, plan.names, n)
    async for step in handle:          # the same steps, the text split in two:
        delta.text                     #   what is not a call (the answer's content)
        delta.tool_calls               #   ToolCallDelta: id and name, then arguments

Both doors and ``Complete`` read a request with tools through this one wrapper, so
they agree on every call. A call's arguments go out as the model writes them (each
character checked as JSON on the way, ``jsonscan.py``); text before a call goes out
as content at once, and only what might be the start of a call waits.

A call that is not one is not lost:

- text that is not a JSON object of the call's shape, or names no offered tool,
  goes out as content, whole, as long as nothing of the call went out yet (its
  name comes before its arguments, so that is until the name is read);
- a call that breaks after it began keeps what it streamed, and the text from the
  break on goes out as content;
- a sequence that ends inside a call ends with what it has (finish ``length``,
  say: the client can tell the arguments are incomplete).

A sequence that made a call and ended at its end-of-sequence token finishes
``tool_calls``. Whitespace between and around calls is not content.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Sequence

from ..engines.base import GenerationHandle, SequenceDelta, ToolCallDelta
from .jsonscan import CallScanner, ScanError
from .toolcalls import ToolFormat

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
        "_mode",
        "_names",
        "_new_id",
        "_raw",
        "_raw_out",
        "_scan",
        "_sent",
        "_ws",
        "calls",
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
        self._raw = ""  # a call's text so far, after its start marker
        self._raw_out = 0  # how much of it the call's deltas stand for
        self._after = ""  # text after a call's object, until its end marker
        self._scan: CallScanner | None = None
        self._emitted = False  # something of the current call went out
        self._sent = 0  # characters of its arguments that went out
        self._id = ""
        self._content: list[str] = []
        self._deltas: list[ToolCallDelta] = []
        self.calls = 0  # calls that began going out

    def push(self, text: str) -> tuple[str, tuple[ToolCallDelta, ...]]:
        """Content and call deltas in ``text``, the next piece of the sequence's text."""
        data = text
        while data:
            data = self._step(data)
        return self._take()

    def finish(self) -> tuple[str, tuple[ToolCallDelta, ...]]:
        """The sequence ended: what was held goes out as what it is."""
        mode = self._mode
        if mode == "call" and not self._emitted:
            self._text(self._fmt.start + self._raw if self._fmt.start else self._raw)
        elif (
            mode == "after"
            and self._after.strip()
            and not self._fmt.end.startswith(self._after.strip())
        ):
            self._text(self._after)
        elif mode in ("begin", "content", "text"):
            self._text(self._held)
        self._held = self._after = self._raw = ""
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
            self._open_call()
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
            self._open_call()
            return text[at + len(start) :]
        keep = _partial_suffix(text, start)
        self._text(text[: len(text) - keep])
        self._held = text[len(text) - keep :]
        return ""

    def _open_call(self) -> None:
        self._mode = "call"
        self._scan = CallScanner(self._fmt.arguments_keys)
        self._raw = ""
        self._emitted = False
        self._sent = 0

    def _in_call(self, data: str) -> str:
        scan = self._scan
        assert scan is not None
        for i, ch in enumerate(data):
            self._raw += ch
            try:
                scan.feed(ch)
            except ScanError:
                return self._broken(data[i + 1 :])
            name = scan.name
            if name is not None and not self._emitted:
                if name not in self._names:
                    return self._broken(data[i + 1 :])
                self._id = self._new_id()
                self._deltas.append(ToolCallDelta(self.calls, self._id, name, ""))
                self._emitted = True
                self._raw_out = len(self._raw)
                self.calls += 1
            if self._emitted:
                self._send_arguments(scan)
            if scan.done:
                if not self._emitted:  # an object with no name
                    return self._broken(data[i + 1 :])
                if scan.arguments_text() is None:
                    self._deltas.append(ToolCallDelta(self.calls - 1, arguments="{}"))
                self._mode, self._after = "after", ""
                return data[i + 1 :]
        return ""

    def _send_arguments(self, scan: CallScanner) -> None:
        text = scan.arguments_text()
        if text is not None and len(text) > self._sent:
            self._deltas.append(ToolCallDelta(self.calls - 1, arguments=text[self._sent :]))
            self._sent = len(text)
            self._raw_out = len(self._raw) - scan.pending

    def _broken(self, rest: str) -> str:
        """Not a call after all: its text is content, what of it did not go out as
        the call (all of it, if nothing did)."""
        if not self._emitted:
            self._text(self._fmt.start + self._raw)
        else:
            self._text(self._raw[self._raw_out :])
        self._scan = None
        self._mode = "content" if self._fmt.start else "text"
        return rest

    def _after_call(self, data: str) -> str:
        """After a call's object: its end marker (hermes) or the next call (llama3_json)."""
        fmt = self._fmt
        text = self._after + data
        stripped = text.lstrip()
        if fmt.end:
            if stripped.startswith(fmt.end):
                self._mode = "content"
                rest = stripped[len(fmt.end) :]
                self._ws = ""
                return rest
            if fmt.end.startswith(stripped):
                self._after = text
                return ""
            self._mode = "content"  # no end marker: the call stands, the rest is text
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
                self._open_call()
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


class ParsedCalls:
    """A generation handle whose deltas carry tool calls instead of their text."""

    __slots__ = ("_inner", "_it", "_parsers")

    def __init__(
        self, inner: GenerationHandle, fmt: ToolFormat, names: frozenset[str], n: int
    ) -> None:
        self._inner = inner
        self._it: AsyncIterator[Sequence[SequenceDelta]] | None = None
        self._parsers = [CallParser(fmt, names) for _ in range(n)]

    @property
    def finished(self) -> bool:
        return self._inner.finished

    @property
    def cached_prompt_tokens(self) -> int:
        return self._inner.cached_prompt_tokens

    def abort(self) -> None:
        self._inner.abort()

    def __aiter__(self) -> ParsedCalls:
        return self

    async def __anext__(self) -> list[SequenceDelta]:
        if self._it is None:
            self._it = self._inner.__aiter__()
        step = await anext(self._it)
        return [self._parse(d) for d in step]

    def _parse(self, d: SequenceDelta) -> SequenceDelta:
        parser = self._parsers[d.index]
        text, calls = parser.push(d.text)
        finish = d.finish_reason
        if finish is not None:
            more, last = parser.finish()
            text, calls = text + more, calls + last
            if finish == "stop" and parser.calls:
                finish = "tool_calls"
        return SequenceDelta(
            d.index,
            d.token_ids,
            text,
            d.logprobs,
            d.cumulative_logprob,
            finish,
            d.stop_match,
            calls,
        )
