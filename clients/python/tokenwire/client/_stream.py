"""What a Generate stream has delivered so far; shared by `Stream` and `AsyncStream`.

The sync and async streams differ only in how they read the next response; both
record every response here, so that the text so far, the token count and the rate
read the same on either.

A resumable stream (``generate(..., resumable=True)``, docs/resume.md) also
remembers the last ``sequence`` it received; when its call breaks (UNAVAILABLE, a
reset) it calls ``Resume`` after that sequence, with bounded retries and backoff
within the grace, so the loop that reads it sees each message once and no break.
"""

from __future__ import annotations

import time
import uuid

import grpc

from tokenwire.client import _convert
from tokenwire.client._errors import TokenwireError, from_rpc_error
from tokenwire.client._models import (
    Choice,
    Chunk,
    Completion,
    StopMatch,
    Timing,
    TokenLogprob,
    ToolCall,
    Usage,
)
from tokenwire.client._toolcalls import ToolCallAccumulator
from tokenwire.client._types import FinishReason
from tokenwire.v1 import generation_pb2 as pb

DEFAULT_RESUME_GRACE_S = 30.0
"""The grace a ``resumable=True`` stream asks for when no ``resume_grace_s`` is given."""

_MAX_RECONNECTS = 10  # tries per break; the grace bounds them too
_FIRST_DELAY_S = 0.05
_MAX_DELAY_S = 1.0


def make_resumable(
    request: pb.GenerateRequest, resumable: bool, resume_grace_s: float | None
) -> float:
    """Ask the server to keep the stream for a resume; returns the grace (0: not
    resumable). The request gets an id now, so that it can be resumed before its
    first message has come."""
    if resume_grace_s is None:
        if not resumable:
            return 0.0
        resume_grace_s = DEFAULT_RESUME_GRACE_S
    if resume_grace_s <= 0:
        raise ValueError("resume_grace_s must be positive")
    request.stream.resume_grace_ms = max(1, round(resume_grace_s * 1000))
    if not request.request_id:
        request.request_id = uuid.uuid4().hex
    return resume_grace_s


class Reconnects:
    """When a broken resumable stream tries again: for a connection that broke
    (UNAVAILABLE, a reset stream), and while reconnecting also for a server that
    has not yet seen the old stream go (FAILED_PRECONDITION); each try after a
    growing pause, at most ``_MAX_RECONNECTS`` of them, all within the grace."""

    __slots__ = ("_broke_at", "_tries", "grace_s")

    def __init__(self, grace_s: float) -> None:
        self.grace_s = grace_s
        self._broke_at: float | None = None
        self._tries = 0

    def delay(self, error: grpc.RpcError) -> float | None:
        """Seconds to wait before the next Resume, or None to give up."""
        code: grpc.StatusCode = error.code()
        details: str = error.details() or ""
        broken = code is grpc.StatusCode.UNAVAILABLE or (
            code is grpc.StatusCode.INTERNAL and "RST_STREAM" in details
        )
        if self._broke_at is not None and code is grpc.StatusCode.FAILED_PRECONDITION:
            broken = True
        if not broken or self._tries >= _MAX_RECONNECTS:
            return None
        now = time.monotonic()
        if self._broke_at is None:
            self._broke_at = now
        left = self._broke_at + self.grace_s - now
        if left <= 0:
            return None
        pause: float = min(_FIRST_DELAY_S * 2.0**self._tries, _MAX_DELAY_S, left)
        self._tries += 1
        return pause

    def ok(self) -> None:
        """A message came: the next break starts afresh."""
        self._broke_at = None
        self._tries = 0


class _Sequence:
    """Everything received for one sequence index."""

    __slots__ = ("cumulative", "finish_reason", "logprobs", "parts", "stop_match", "token_ids")

    def __init__(self) -> None:
        # Joined on demand: appending is O(1) however often `.text` is not read.
        self.parts: list[str] = []
        self.token_ids: list[int] = []
        self.logprobs: list[TokenLogprob] = []
        self.finish_reason: FinishReason | None = None
        self.stop_match: StopMatch | None = None
        self.cumulative: float | None = None

    def choice(self, index: int, tool_calls: tuple[ToolCall, ...]) -> Choice:
        return Choice(
            index=index,
            text="".join(self.parts),
            token_ids=tuple(self.token_ids),
            finish_reason=self.finish_reason,
            stop_match=self.stop_match,
            logprobs=tuple(self.logprobs),
            cumulative_logprob=self.cumulative,
            tool_calls=tool_calls,
        )


class BaseStream:
    """The progress of one Generate call: text so far, token count, rate, final usage."""

    def __init__(self, request_id: str) -> None:
        self._request_id = request_id
        self._sequences: dict[int, _Sequence] = {}
        self._tool_calls = ToolCallAccumulator()
        self._usage: Usage | None = None
        self._timing: Timing | None = None
        self._started = time.perf_counter()
        self._first_chunk_at: float | None = None
        self._last_chunk_at: float | None = None
        self._done = False
        self._cancelled = False
        self._last_sequence = 0  # of a resumable call: where a Resume picks up
        self._resuming = False  # the current call is a Resume
        self._broken: grpc.RpcError | None = None  # what broke the call being resumed

    @property
    def request_id(self) -> str:
        """The caller's request_id, or the server's once the first chunk arrived."""
        return self._request_id

    @property
    def text(self) -> str:
        """The text of sequence 0 so far."""
        sequence = self._sequences.get(0)
        return "".join(sequence.parts) if sequence else ""

    @property
    def texts(self) -> list[str]:
        """The text so far of each sequence, by index (for ``n > 1``)."""
        count = max(self._sequences, default=-1) + 1
        return [
            "".join(self._sequences[i].parts) if i in self._sequences else "" for i in range(count)
        ]

    @property
    def token_ids(self) -> tuple[int, ...]:
        """The token ids of sequence 0 so far."""
        sequence = self._sequences.get(0)
        return tuple(sequence.token_ids) if sequence else ()

    @property
    def tool_calls(self) -> tuple[ToolCall, ...]:
        """The tool calls of sequence 0 so far, whole; the last one's arguments may
        still be arriving until the sequence ends."""
        return self._tool_calls.calls(0)

    @property
    def token_count(self) -> int:
        """Tokens received so far, over all sequences."""
        return sum(len(sequence.token_ids) for sequence in self._sequences.values())

    @property
    def tokens_per_second(self) -> float:
        """Tokens received per second, from sending the request to the latest chunk.

        The span includes the time to the first token, so this is the rate a caller
        sees, not the engine's decode speed alone (see `timing` for the server's view).
        """
        if self._last_chunk_at is None or self._last_chunk_at <= self._started:
            return 0.0
        return self.token_count / (self._last_chunk_at - self._started)

    @property
    def time_to_first_token(self) -> float | None:
        """Seconds from sending the request to the first chunk, as this client saw it."""
        return None if self._first_chunk_at is None else self._first_chunk_at - self._started

    @property
    def finish_reason(self) -> FinishReason | None:
        """Why sequence 0 ended; None while it runs."""
        sequence = self._sequences.get(0)
        return sequence.finish_reason if sequence else None

    @property
    def usage(self) -> Usage | None:
        """Token counts of the whole request, once the last chunk arrived."""
        return self._usage

    @property
    def timing(self) -> Timing | None:
        """The server's timing of the whole request, once the last chunk arrived."""
        return self._timing

    @property
    def done(self) -> bool:
        """True once the call ended: finished, failed or cancelled."""
        return self._done

    @property
    def cancelled(self) -> bool:
        """True when this client cancelled the call before it finished."""
        return self._cancelled

    def _completion(self) -> Completion:
        return Completion(
            request_id=self._request_id,
            choices=tuple(
                self._sequences[i].choice(i, self._tool_calls.calls(i))
                for i in sorted(self._sequences)
            ),
            usage=self._usage,
            timing=self._timing,
        )

    @property
    def last_sequence(self) -> int:
        """The newest message's ``sequence`` on a resumable call (0 before any)."""
        return self._last_sequence

    def _error(self, error: grpc.RpcError) -> TokenwireError:
        """How a failed call ends the stream. A resume that finds nothing after a
        break before any message means the first call never reached the server's
        store (it was refused or unreachable): that first error is the answer."""
        broken = self._broken
        not_found = error.code() == grpc.StatusCode.NOT_FOUND
        if broken is not None and not self._last_sequence and not_found:
            return from_rpc_error(broken)
        return from_rpc_error(error, resume=self._resuming)

    def _seen(self, response: pb.GenerateResponse) -> bool:
        """A resumed call's message this stream already has (never on a plain call)."""
        sequence = response.sequence
        if not sequence:
            return False
        if sequence <= self._last_sequence:
            return True
        self._last_sequence = sequence
        return False

    def _record(self, response: pb.GenerateResponse) -> Chunk:
        now = time.perf_counter()
        if self._first_chunk_at is None:
            self._first_chunk_at = now
        self._last_chunk_at = now
        chunk = _convert.chunk(response)
        self._request_id = chunk.request_id or self._request_id
        sequence = self._sequences.setdefault(chunk.index, _Sequence())
        sequence.parts.append(chunk.text)
        sequence.token_ids.extend(chunk.token_ids)
        sequence.logprobs.extend(chunk.logprobs)
        self._tool_calls.add(chunk)
        sequence.finish_reason = chunk.finish_reason or sequence.finish_reason
        sequence.stop_match = chunk.stop_match or sequence.stop_match
        if chunk.cumulative_logprob is not None:
            sequence.cumulative = chunk.cumulative_logprob
        self._usage = chunk.usage or self._usage
        self._timing = chunk.timing or self._timing
        return chunk

    def _end(self, *, cancelled: bool = False) -> None:
        """Mark the call over; sequences cut short by a local cancel end as "cancelled"."""
        self._done = True
        if cancelled:
            self._cancelled = True
            for sequence in self._sequences.values():
                sequence.finish_reason = sequence.finish_reason or "cancelled"

    def __repr__(self) -> str:
        state = "cancelled" if self._cancelled else "done" if self._done else "streaming"
        return (
            f"<{type(self).__name__} request_id={self._request_id!r} "
            f"tokens={self.token_count} {state}>"
        )
