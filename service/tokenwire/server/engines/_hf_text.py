"""Incremental detokenization for any Hugging Face tokenizer, without split characters.

A token's text is not a function of the token alone: byte-level BPE spreads one
character over several tokens, and SentencePiece tokenizers drop or add a space
depending on what comes before. So each step decodes a short window of the
running ids twice, with and without the new tokens, and emits the difference
(the "prefix offset / read offset" method of TGI and vLLM)::

    ids:    ... prompt tail | emitted ... | new
                ^prefix      ^read

While the window's text ends in U+FFFD the last character is incomplete: nothing
is emitted and the offsets stay, so the next token completes it. A U+FFFD before
the end comes from bytes that are invalid whatever follows, and goes out as is.
``held`` is what the window holds back, as the tokenizer's decode renders it
(U+FFFD for an incomplete character); at the end of the sequence ``flush``
releases it, so the deltas add up to the decode of the ids. It costs nothing:
``push`` has just decoded it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

_REPLACEMENT = "\ufffd"
_PROMPT_CONTEXT = 5  # prompt tokens kept in the window, for leading-space rules


class Decoder(Protocol):
    """The part of a Hugging Face tokenizer the detokenizer uses."""

    def decode(
        self,
        token_ids: list[int],
        skip_special_tokens: bool = ...,
        clean_up_tokenization_spaces: bool | None = ...,
    ) -> str: ...


class IncrementalDetokenizer:
    """Text deltas for one sequence; ``push`` each new token id in order.

    >>> detok = IncrementalDetokenizer(tokenizer, prompt_ids, skip_special_tokens=True)
    >>> detok.push(token_id)      # "" while a character is incomplete
    """

    __slots__ = ("_ids", "_prefix", "_read", "_skip", "_tokenizer", "held")

    def __init__(
        self, tokenizer: Decoder, prompt_ids: Sequence[int], skip_special_tokens: bool
    ) -> None:
        self._tokenizer = tokenizer
        self._skip = skip_special_tokens
        tail = list(prompt_ids[-_PROMPT_CONTEXT:])
        if self._decode(tail).endswith(_REPLACEMENT):
            tail = []  # a prompt given as ids ends inside a character: read the output alone
        self._ids = tail
        self._prefix = 0
        self._read = len(tail)
        self.held = ""  # the text ``flush`` would release now

    def push(self, token_id: int) -> str:
        """The text completed by ``token_id``; "" while a character waits for its bytes."""
        self._ids.append(token_id)
        prefix_text = self._decode(self._ids[self._prefix : self._read])
        text = self._decode(self._ids[self._prefix :])
        if len(text) <= len(prefix_text) or text.endswith(_REPLACEMENT):
            self.held = text[len(prefix_text) :]
            return ""
        self.held = ""
        self._prefix, self._read = self._read, len(self._ids)
        # Keep the window short: only ids from the prefix offset on are read again.
        if self._prefix > 0:
            del self._ids[: self._prefix]
            self._read -= self._prefix
            self._prefix = 0
        return text[len(prefix_text) :]

    def flush(self) -> str:
        """End of sequence: the text still held back, as decode renders it."""
        held, self.held = self.held, ""
        return held

    def _decode(self, ids: list[int]) -> str:
        return self._tokenizer.decode(
            ids, skip_special_tokens=self._skip, clean_up_tokenization_spaces=False
        )
