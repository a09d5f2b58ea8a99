"""The simulated model's tokenizer: a small word vocabulary over 256 byte tokens.

Common words are single tokens; anything else (accented letters, CJK, emoji,
unknown words) falls back to one token per UTF-8 byte, the way GPT-2's
byte-level BPE does. So a multi-byte character regularly spans several tokens
and the UTF-8-safe delta path downstream is exercised for real.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence

from .base import ChatMessage, ToolSpec

SPECIAL_TOKENS = (
    "<|pad|>",
    "<|bos|>",
    "<|eos|>",
    "<|system|>",
    "<|user|>",
    "<|assistant|>",
    "<|end|>",
)
BOS_ID = 1
EOS_ID = 2
BYTE_OFFSET = len(SPECIAL_TOKENS)

# Readable output needs a vocabulary of real words; each also exists with a
# leading space, as in byte-level BPE vocabularies.
WORDS = tuple(
    """
    the of and to in is that for it as with was on be by at this are from or an which
    but not have has had were all can one their there been more when will would who so
    if out about up into than them some could other time these two may then first any
    like now over such our new most also only after very way many well even back where
    much good through years people because each long model token stream server client
    engine request cancel deadline latency batch cache memory signal packet network
    frame buffer thread socket kernel tensor river mountain forest ocean garden window
    morning evening winter summer light stone bridge city music story answer question
    reason moment little great small quick quiet bright clear simple careful gentle
    steady early late open close walk run write read build measure learn remember follow
    carry hold turn begin hello world data value result system number place point part
    world market
    """.split()  # noqa: SIM905 - a paragraph of words reads better than 180 literals
)
PUNCTUATION = (".", ",", "!", "?", ";", ":", "\n", " ")

_PIECE = re.compile(r" ?[A-Za-z]+| ?[0-9]+| ?[^\sA-Za-z0-9]|\s")
_SPECIAL = re.compile("|".join(re.escape(t) for t in SPECIAL_TOKENS))


class SimTokenizer:
    """Encodes text to ids and ids to bytes; ``decode`` of ``encode`` is the identity."""

    def __init__(self) -> None:
        pieces: list[str] = list(SPECIAL_TOKENS)
        pieces += [f"<0x{b:02X}>" for b in range(256)]
        seen: set[str] = set()
        for word in WORDS:
            for piece in (word, " " + word):
                if piece not in seen:
                    seen.add(piece)
                    pieces.append(piece)
        pieces += [p for p in PUNCTUATION if p not in seen]
        self._strings = tuple(pieces)
        self._ids = {piece: i for i, piece in enumerate(pieces) if i >= BYTE_OFFSET + 256}
        self._special_ids = {t: i for i, t in enumerate(SPECIAL_TOKENS)}
        self._bytes = tuple(self._piece_bytes(i, p) for i, p in enumerate(pieces))

    @property
    def vocab_size(self) -> int:
        return len(self._strings)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of ``text``; special-token markup is recognised as such."""
        ids = [BOS_ID] if add_special_tokens else []
        at = 0
        for special in _SPECIAL.finditer(text):
            self._encode_plain(text[at : special.start()], ids)
            ids.append(self._special_ids[special.group()])
            at = special.end()
        self._encode_plain(text[at:], ids)
        return ids

    def render_chat(self, messages: Sequence[ChatMessage], tools: Sequence[ToolSpec] = ()) -> str:
        """The chat template: each turn in role markup, then the assistant's cue.

        Tools go first, in a system turn, as Hermes-style templates list them; an
        assistant turn's calls follow its text, one ``<tool_call>`` block each."""
        turns = []
        if tools:
            listed = "\n".join(
                f'{{"name": "{t.name}", "description": {json.dumps(t.description)}, '
                f'"parameters": {t.parameters_json or "{}"}}}'
                for t in tools
            )
            turns.append(f"<|system|>\n<tools>\n{listed}\n</tools><|end|>\n")
        for m in messages:
            calls = "".join(
                f'\n<tool_call>\n{{"name": "{c.name}", "arguments": {c.arguments}}}\n</tool_call>'
                for c in m.tool_calls
            )
            turns.append(f"<|{m.role}|>\n{m.content}{calls}<|end|>\n")
        return "".join(turns) + "<|assistant|>\n"

    def decode(self, token_ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        """The text of ``token_ids``, as a byte-level BPE tokenizer's decode renders it.

        The tokens' bytes are joined (special tokens as their markup, unless skipped)
        and read as UTF-8 with one U+FFFD per maximal invalid or incomplete part.
        """
        tokens = self._bytes
        data = b"".join(
            tokens[t] for t in token_ids if not (skip_special_tokens and t < BYTE_OFFSET)
        )
        return data.decode("utf-8", errors="replace")

    def token_bytes(self, token_id: int) -> bytes:
        return self._bytes[token_id]

    def token_string(self, token_id: int) -> str:
        return self._strings[token_id]

    def is_special(self, token_id: int) -> bool:
        return token_id < BYTE_OFFSET

    def id_of(self, piece: str) -> int | None:
        """The single token for ``piece``, if the vocabulary has one."""
        return self._ids.get(piece)

    def _encode_plain(self, text: str, ids: list[int]) -> None:
        for match in _PIECE.finditer(text):
            piece = match.group()
            token = self._ids.get(piece)
            if token is not None:
                ids.append(token)
            else:
                ids.extend(BYTE_OFFSET + b for b in piece.encode("utf-8"))

    @staticmethod
    def _piece_bytes(token_id: int, piece: str) -> bytes:
        if BYTE_OFFSET <= token_id < BYTE_OFFSET + 256:
            return bytes([token_id - BYTE_OFFSET])
        return piece.encode("utf-8")
