"""A latency simulator behind the engine seam: the default for development and tests.

It streams readable, deterministic text (a function of the prompt and the seed)
on a schedule: the first token ``ttft`` after submission, then one every
``itl``. A consumer that falls behind finds the overdue tokens waiting and gets
them in one step, as it would from a real engine's queue. With ``itl == 0`` it
produces one token per step as fast as the event loop allows.

It honours everything a real engine does that clients can observe: max_tokens,
min_tokens, end-of-sequence (or ``ignore_eos``), stop strings and stop token
ids, n sequences, logprobs with alternatives, chat and token-id input,
``skip_special_tokens`` (the end-of-sequence token's markup), multi-byte
characters split across byte tokens, and structured output: under a constraint
it samples among the tokens the grammar allows (``simgrammar.py``), and offered
tools it answers with a call of one now and then (half its seeds). Each
sequence's text is its tokenizer's decode of its token ids
(``SimTokenizer.decode``), cut before a stop as with the other engines
(docs/engines.md, "Text").
"""

from __future__ import annotations

import asyncio
import random
import sys
import zlib
from array import array
from collections.abc import Sequence
from dataclasses import dataclass

from .base import (
    EngineLoad,
    FinishReason,
    GenerationRequest,
    InvalidInput,
    ModelDescription,
    PromptInput,
    RequestFailed,
    SequenceDelta,
    TokenLogprob,
    TopLogprob,
)
from .grammar import Matchers
from .simgrammar import Constrained, TokenKinds, sim_matchers
from .simtok import EOS_ID, WORDS, SimTokenizer
from .text import StopStrings, Utf8Deltas

# Multi-byte words sprinkled into the output "now and then": none of them is in
# the vocabulary, so each is spelt with 2-, 3- and 4-byte character tokens.
_EXOTIC = (
    "café",
    "naïve",
    "über",
    "jalapeño",
    "日本語",
    "東京",
    "你好",
    "한국어",
    "🚀",
    "🎉",
    "Ωmega",
    "€",
)
_PUNCTUATION = (".", ",", ".", "!", "?", ".\n")
_MAX_CATCH_UP = 64  # most tokens handed over in one step
KV_BLOCK_SIZE = 16  # tokens per modelled KV-cache block, as vLLM's and TensorRT-LLM's defaults
# A step that is already due is handed over without a wait, as a real engine's
# result queue does when it holds one; after this many such steps in a row the
# handle yields to the event loop anyway, so that a consumer that never waits
# (a unary Complete on an engine at full speed) cannot hog the loop.
_READY_STEPS_PER_YIELD = 16


@dataclass(frozen=True, slots=True)
class SimulatorConfig:
    model: str = "tokenwire-sim"
    ttft_s: float = 0.0
    itl_s: float = 0.0
    max_context_length: int = 32768
    adapters: tuple[str, ...] = ()
    """LoRA adapter names it accepts: each one's output differs from the base model's."""
    kv_blocks: int = 4096
    """KV-cache blocks of ``KV_BLOCK_SIZE`` tokens it models (for load reports)."""
    max_catch_up: int = _MAX_CATCH_UP
    """Most overdue tokens one step hands over (1 to 64). 1 models an engine whose result
    queue holds one response per iteration, read one at a time (the benchmark's
    SSE peer, as trtllm-serve reads it); tokens still fall due on the clock."""


class _Words:
    """The simulated model's output pieces as token ids, in the order they are drawn."""

    __slots__ = ("exotic", "plain", "punctuation")

    def __init__(self, tokenizer: SimTokenizer) -> None:
        def encode(piece: str) -> tuple[int, ...]:
            return tuple(tokenizer.encode(piece, add_special_tokens=False))

        self.exotic = tuple(encode(" " + word) for word in _EXOTIC)
        self.punctuation = tuple(encode(p) for p in _PUNCTUATION)
        plain = [tokenizer.id_of(" " + word) for word in WORDS]
        assert None not in plain, "every word has a single token with a leading space"
        self.plain = tuple(t for t in plain if t is not None)


class SimulatedEngine:
    """Implements ``Engine`` with a schedule instead of a model."""

    def __init__(self, config: SimulatorConfig) -> None:
        self._config = config
        self._tokenizer = SimTokenizer()
        self._words = _Words(self._tokenizer)
        self._live: set[_SimHandle] = set()
        self._closed = False
        self._grammars: tuple[Matchers, TokenKinds] | None = None  # on first use
        self._description = ModelDescription(
            name=config.model,
            engine="simulated",
            max_context_length=config.max_context_length,
            vocab_size=self._tokenizer.vocab_size,
            eos_token_id=EOS_ID,
            adapters=config.adapters,
        )

    @property
    def description(self) -> ModelDescription:
        return self._description

    @property
    def tokenizer(self) -> SimTokenizer:
        return self._tokenizer

    @property
    def healthy(self) -> bool:
        return not self._closed

    async def start(self) -> None:
        return None

    async def tokenize(self, prompt: PromptInput, add_special_tokens: bool = True) -> list[int]:
        if prompt.messages is not None:
            text = self._tokenizer.render_chat(prompt.messages, prompt.tools)
        else:
            text = prompt.text or ""
        return self._tokenizer.encode(text, add_special_tokens=add_special_tokens)

    def token_strings(self, token_ids: Sequence[int]) -> list[str]:
        return [self._tokenizer.token_string(t) for t in token_ids]

    def submit(self, request: GenerationRequest) -> _SimHandle:
        vocab = self._tokenizer.vocab_size
        for i, token in enumerate(request.prompt_token_ids):
            if token >= vocab:
                raise InvalidInput(
                    f"token_ids.ids[{i}]", f"{token} is not below vocab size {vocab}"
                )
        handle = _SimHandle(self, request, asyncio.get_running_loop().time())
        self._live.add(handle)
        return handle

    def grammars(self) -> tuple[Matchers, TokenKinds]:
        """The vocabulary's compiled grammars and token kinds (made on first use)."""
        if self._grammars is None:
            self._grammars = (sim_matchers(self._tokenizer), TokenKinds(self._tokenizer))
        return self._grammars

    def in_flight(self) -> int:
        return len(self._live)

    def load(self) -> EngineLoad:
        """A modelled KV pool: each live sequence holds whole blocks for its prompt
        and its tokens so far, as a paged KV cache does. The simulator has no queue
        of its own: every submitted request runs at once."""
        total = self._config.kv_blocks
        used = sum(handle.kv_blocks() for handle in list(self._live))
        return EngineLoad(
            waiting=0,
            running=len(self._live),
            kv_cache_utilization=min(used / total, 1.0),
            kv_block_size=KV_BLOCK_SIZE,
            kv_total_blocks=total,
        )

    async def close(self) -> None:
        self._closed = True
        for handle in list(self._live):
            handle.abort()

    def _release(self, handle: _SimHandle) -> None:
        self._live.discard(handle)


class _Sequence:
    """One sequence's generator state: its words, text filters and counters."""

    __slots__ = (
        "constrained",
        "count",
        "done",
        "index",
        "logprob",
        "logprob_rng",
        "natural_length",
        "queue",
        "rng",
        "stops",
        "utf8",
    )

    def __init__(self, index: int, seed: int, request: GenerationRequest) -> None:
        self.index = index
        self.rng = random.Random(seed)
        # Logprobs draw from their own generator: asking for them changes no text.
        self.logprob_rng = random.Random(f"logprobs {seed}") if request.logprobs else self.rng
        self.queue: list[int] = []  # tokens of the current word, not yet emitted
        self.count = 0
        # Where the "model" would end its answer by itself (end-of-sequence).
        self.natural_length = max(self.rng.randint(12, 400), request.min_tokens)
        self.utf8 = Utf8Deltas()
        self.stops = StopStrings(request.stop, request.include_stop_in_output)
        self.logprob = 0.0
        self.done = False
        self.constrained: Constrained | None = None  # answering under a grammar


class _SimHandle:
    """A simulated request: computes each step when the consumer asks for it.

    A class with ``__anext__`` rather than an async generator, so that a
    consumer may cancel a pending ``__anext__`` (a timeout) and call it again
    without losing anything, as with TensorRT-LLM's result queue.
    """

    def __init__(self, engine: SimulatedEngine, request: GenerationRequest, now: float) -> None:
        self._engine = engine
        self._loop = asyncio.get_running_loop()
        self._tok = engine.tokenizer
        self._request = request
        self._next_due = now + engine._config.ttft_s
        self._itl = engine._config.itl_s
        self._catch_up = min(max(engine._config.max_catch_up, 1), _MAX_CATCH_UP)
        # As fast as possible, every token is ready at once: hand over as many as the
        # consumer groups per message (bounded), in one step.
        self._step = min(max(request.stream_step, 1), _MAX_CATCH_UP)
        # The "model" reads its prompt: the text is a function of the prompt and the
        # seed. Without a seed it is a pretend greedy model (same prompt, same answer).
        prompt = _prompt_key(request.prompt_token_ids)
        seed = request.sampling.seed
        base = prompt if seed is None else (seed + 1) << 32 | prompt
        if request.adapter is not None:  # an adapter "fine-tunes" the model: other text
            base ^= zlib.crc32(request.adapter.encode()) << 16
        self._sequences = [
            _Sequence(i, base * 1_000_003 + i, request) for i in range(request.sampling.n)
        ]
        # The end-of-sequence token's markup, as decode renders it (b"" when skipped).
        self._eos_bytes = b"" if request.skip_special_tokens else self._tok.token_bytes(EOS_ID)
        self._remaining = request.sampling.n
        self._aborted = False
        self._ready_run = 0  # due steps handed over since the handle last waited
        self._stop_ids = frozenset(request.stop_token_ids)
        # Most requests ask for plain text: one token at a time needs no lists.
        self._plain = not (request.logprobs or request.stop or request.stop_token_ids)
        if request.constraint is not None or request.tool_call is not None:
            self._constrain(request)

    def _constrain(self, request: GenerationRequest) -> None:
        """Put each sequence under the request's grammar; offered tools, answer
        half the seeds with a call (the decision is the sequence's first draw)."""
        matchers, kinds = self._engine.grammars()
        for seq in self._sequences:
            constraint = request.constraint
            if constraint is None and seq.rng.random() < 0.5:
                constraint = request.tool_call
            if constraint is not None:
                matcher = matchers.new(constraint)
                seq.constrained = Constrained(matcher, kinds, self._tok, seq.rng)
                self._plain = False

    @property
    def finished(self) -> bool:
        return self._remaining == 0 or self._aborted

    @property
    def cached_prompt_tokens(self) -> int:
        return 0

    def kv_blocks(self) -> int:
        """The KV blocks this request holds: its prompt's and each live sequence's own."""
        prompt = len(self._request.prompt_token_ids)
        return sum(-(-(prompt + s.count) // KV_BLOCK_SIZE) for s in self._sequences if not s.done)

    def __aiter__(self) -> _SimHandle:
        return self

    async def __anext__(self) -> list[SequenceDelta]:
        if self._remaining == 0:
            raise StopAsyncIteration
        if not self._aborted:
            delay = self._next_due - self._loop.time()
            if delay > 0:
                self._ready_run = 0
                await asyncio.sleep(delay)
            elif self._ready_run >= _READY_STEPS_PER_YIELD:
                self._ready_run = 0
                await asyncio.sleep(0)
            else:
                self._ready_run += 1
        if self._aborted:
            return self._cancel_all()
        if self._itl > 0:
            overdue = self._loop.time() - self._next_due
            steps = min(self._catch_up, 1 + max(0, int(overdue / self._itl)))
            self._next_due += steps * self._itl
        else:
            steps = self._step
        sequences = self._sequences
        if steps == 1 and self._plain:
            if len(sequences) == 1:  # most requests: n == 1, and it is not done yet
                deltas = [self._advance_one(sequences[0])]
            else:
                deltas = [self._advance_one(seq) for seq in sequences if not seq.done]
        elif self._plain:
            deltas = [self._advance_plain(seq, steps) for seq in sequences if not seq.done]
        else:
            try:
                deltas = [self._advance(seq, steps) for seq in sequences if not seq.done]
            except RequestFailed:  # a grammar that allows nothing: this request fails
                self._remaining = 0
                self._engine._release(self)
                raise
        if self._remaining == 0:
            self._engine._release(self)
        return deltas

    def abort(self) -> None:
        if not self._aborted and self._remaining:
            self._aborted = True
            self._engine._release(self)

    def _cancel_all(self) -> list[SequenceDelta]:
        deltas = []
        for seq in self._sequences:
            if not seq.done:
                seq.done = True
                text = self._end_text(seq, None)
                deltas.append(SequenceDelta(seq.index, (), text, finish_reason="cancelled"))
        self._remaining = 0
        return deltas

    @staticmethod
    def _end_text(seq: _Sequence, match: str | int | None) -> str:
        """What a sequence still holds back when it ends, as decode renders it.

        A stop string cuts the text where it matched, so nothing held goes out
        then. Held bytes are not searched for stop strings: they are U+FFFD.
        """
        if isinstance(match, str):
            return ""
        return seq.stops.flush() + seq.utf8.finish()

    def _advance_one(self, seq: _Sequence) -> SequenceDelta:
        """``_advance`` for one token of a request with no logprobs and no stops."""
        token = self._next_token(seq)
        seq.count += 1
        finish: FinishReason | None = None
        if token == EOS_ID:
            finish, text = "stop", seq.utf8.push(self._eos_bytes)
        else:
            text = seq.utf8.push(self._tok.token_bytes(token))
            if seq.count >= self._request.max_tokens:
                finish = "length"
        if finish is not None:
            seq.done = True
            self._remaining -= 1
            text += seq.utf8.finish()
        return SequenceDelta(seq.index, (token,), text, (), None, finish)

    def _advance_plain(self, seq: _Sequence, steps: int) -> SequenceDelta:
        """``_advance`` for several tokens of a request with no logprobs and no stops.

        The step's bytes are decoded in one go: an incremental decoder gives the
        same text for the whole as for the pieces, at a fraction of the cost."""
        ids: list[int] = []
        finish: FinishReason | None = None
        max_tokens = self._request.max_tokens
        next_token = self._next_token
        for _ in range(steps):
            token = next_token(seq)
            seq.count += 1
            ids.append(token)
            if token == EOS_ID:
                finish = "stop"
                break
            if seq.count >= max_tokens:
                finish = "length"
                break
        token_bytes = self._tok.token_bytes
        if finish == "stop":
            data = b"".join([token_bytes(t) for t in ids[:-1]]) + self._eos_bytes
        else:
            data = b"".join([token_bytes(t) for t in ids])
        text = seq.utf8.push(data)
        if finish is not None:
            seq.done = True
            self._remaining -= 1
            text += seq.utf8.finish()
        return SequenceDelta(seq.index, tuple(ids), text, (), None, finish)

    def _advance(self, seq: _Sequence, steps: int) -> SequenceDelta:
        request = self._request
        ids: list[int] = []
        chunks: list[str] = []
        logprobs: list[TokenLogprob] = []
        finish: FinishReason | None = None
        match: str | int | None = None
        for _ in range(steps):
            token = self._next_token(seq)
            seq.count += 1
            ids.append(token)
            if request.logprobs:
                logprobs.append(self._logprob(seq, token))
            if token != EOS_ID and token in self._stop_ids and seq.count >= request.min_tokens:
                # No stop string matched: what they held back goes out before the
                # stop token, whose own text goes out only when asked for.
                finish, match = "stop_sequence", token
                chunks.append(seq.stops.flush())
                if request.include_stop_in_output:
                    chunks.append(seq.utf8.push(self._tok.token_bytes(token)))
                break
            if token == EOS_ID:
                finish = "stop"
                text = seq.utf8.push(self._eos_bytes)
            else:
                text = seq.utf8.push(self._tok.token_bytes(token))
            if seq.stops and seq.count >= request.min_tokens:
                text, stop = seq.stops.push(text)
                if stop is not None:
                    finish, match = "stop_sequence", stop
            chunks.append(text)
            if finish is None and seq.count >= request.max_tokens:
                finish = "length"
            if finish is not None:
                break
        if finish is not None:
            seq.done = True
            self._remaining -= 1
            chunks.append(self._end_text(seq, match))
        return SequenceDelta(
            index=seq.index,
            token_ids=tuple(ids),
            text="".join(chunks),
            logprobs=tuple(logprobs),
            cumulative_logprob=seq.logprob if request.logprobs else None,
            finish_reason=finish,
            stop_match=match,
        )

    def _next_token(self, seq: _Sequence) -> int:
        if seq.constrained is not None:
            return seq.constrained.next_token()
        queue = seq.queue
        if queue:
            return queue.pop(0)
        if seq.count >= seq.natural_length and not self._request.ignore_eos:
            return EOS_ID
        # The same draws from ``rng`` as choosing among the strings themselves, so
        # a seed still gives the same text; the token ids are looked up once per engine.
        rng = seq.rng
        roll = rng.random()
        words = self._engine._words
        if roll < 0.06:
            piece = rng.choice(words.exotic)
        elif roll < 0.16 and seq.count:
            piece = rng.choice(words.punctuation)
        else:
            return rng.choice(words.plain)  # most words: one token, no queue
        seq.queue = list(piece[1:])
        return piece[0]

    def _logprob(self, seq: _Sequence, token: int) -> TokenLogprob:
        # The sampled token is the most likely; alternatives trail behind it.
        rng = seq.logprob_rng
        value = -abs(rng.gauss(0.0, 0.6))
        seq.logprob += value
        top: list[TopLogprob] = []
        if self._request.top_logprobs:
            top.append(TopLogprob(token, self._tok.token_string(token), value))
            alt = value
            vocab = self._tok.vocab_size
            for _ in range(self._request.top_logprobs - 1):
                alt -= 0.2 + rng.random()
                other = rng.randrange(vocab)
                top.append(TopLogprob(other, self._tok.token_string(other), alt))
        return TokenLogprob(token, self._tok.token_string(token), value, tuple(top))


def _prompt_key(token_ids: Sequence[int]) -> int:
    """A 32-bit digest of a prompt: the CRC of its ids as little-endian uint32s."""
    data = array("I", token_ids)  # ids are below the vocabulary size: they fit
    if sys.byteorder == "big":
        data.byteswap()  # the same digest, and so the same text, on every machine
    return zlib.crc32(data.tobytes())
