"""Turning a growing stream of token bytes into safe text deltas.

Two problems every engine that detokenizes by itself has (peers got both wrong:
garbled CJK and emoji, stop strings half sent before they match):

- A character can span several byte-level tokens. ``Utf8Deltas`` holds back the
  bytes of an incomplete character until it is whole, so no delta ever carries
  U+FFFD made by splitting. When the sequence ends with bytes still held,
  ``finish`` renders them as a byte-level tokenizer's decode does (one U+FFFD per
  maximal invalid subpart, as Rust's ``from_utf8_lossy`` and Python's
  ``errors="replace"`` both do), so the deltas add up to the decode of the ids.
- A stop string can span several tokens. ``StopStrings`` holds back the text
  that could still be the start of a stop string, so the stop itself never goes
  out unless the request asked for it.
"""

from __future__ import annotations

import codecs
from collections.abc import Sequence


class Utf8Deltas:
    """Incremental UTF-8 decoding that never splits a character."""

    __slots__ = ("_decoder", "_held")

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._held = False  # whether the decoder holds the start of a character

    def push(self, data: bytes) -> str:
        """Whole characters completed by ``data``; an incomplete tail waits."""
        if not self._held:
            # Most tokens are whole characters: decoding them alone is the same
            # text, at a third of the incremental decoder's cost (it is Python).
            try:
                return data.decode()
            except UnicodeDecodeError:
                pass
        decoder = self._decoder
        text = decoder.decode(data)
        self._held = bool(decoder.getstate()[0])
        return text

    def finish(self) -> str:
        """End of sequence: the bytes still held, rendered as decode renders them.

        "" when nothing is held; else U+FFFD for a character that never completed.
        The decoder is ready for a new sequence afterwards.
        """
        self._held = False
        return self._decoder.decode(b"", final=True)


class StopStrings:
    """Finds stop strings in streamed text, holding back what might start one."""

    __slots__ = ("_include", "_longest", "_pending", "_stops")

    def __init__(self, stops: Sequence[str], include_stop: bool) -> None:
        self._stops = tuple(s for s in stops if s)
        self._longest = max((len(s) for s in self._stops), default=0)
        self._include = include_stop
        self._pending = ""

    def __bool__(self) -> bool:
        return bool(self._stops)

    @property
    def held(self) -> str:
        """The text held back because it might start a stop string."""
        return self._pending

    def push(self, text: str) -> tuple[str, str | None]:
        """Feed new text; return (text safe to emit, the stop that matched or None).

        After a match the sequence must end: the returned text runs up to the
        stop (and includes it when asked to).
        """
        if not self._stops:
            return text, None
        buffer = self._pending + text
        # Earliest match wins, as the text would be read.
        best: tuple[int, str] | None = None
        for stop in self._stops:
            at = buffer.find(stop)
            if at >= 0 and (best is None or at < best[0]):
                best = (at, stop)
        if best is not None:
            at, stop = best
            self._pending = ""
            end = at + len(stop) if self._include else at
            return buffer[:end], stop
        keep = self._held_back(buffer)
        self._pending = buffer[len(buffer) - keep :] if keep else ""
        return buffer[: len(buffer) - keep], None

    def flush(self) -> str:
        """The sequence ended without a match: release what was held back."""
        out, self._pending = self._pending, ""
        return out

    def _held_back(self, buffer: str) -> int:
        """Length of the longest suffix of ``buffer`` that starts some stop string."""
        for size in range(min(len(buffer), self._longest - 1), 0, -1):
            tail = buffer[-size:]
            if any(stop.startswith(tail) for stop in self._stops):
                return size
        return 0
