"""Resumable streams: the kept messages of calls a client may pick up again, their
bounds and their grace timers (docs/resume.md).

A call made resumable (``StreamOptions.resume_grace_ms``) runs its generation in
a task of its own (``Core.resumable`` in lifecycle.py), which appends every
message of the call here, numbered from 1 (``GenerateResponse.sequence``). A
door does not read the engine: it follows the ``KeptStream``, from the start or,
on a resume, after the sequence its client last had. So both doors render the
same kept protobuf messages, and a connection that ends leaves the generation
running: the stream is *detached*, and its grace timer runs. Attaching again
stops the timer; when it fires, a running generation is aborted (``detached``)
and the stream is forgotten. A finished stream is kept for its grace after its
end too, so that a client that lost the last messages can still fetch them.

Messages are kept serialized (a protobuf object costs about 2 KB of Python heap
per message, its bytes a few dozen), and parsed again for a door that reads one
it did not get live. Bounds, in bytes of serialized messages plus
``MESSAGE_OVERHEAD`` each (the bytes object, its tuple and deque slot), so that
they bound what the process holds:

- per stream (``--resume-request-bytes``): messages already written to an
  attached stream are let go, oldest first, once the stream keeps more than
  this; the generation waits for a slow attached reader rather than outgrow it
  (the watchdog ends a reader that stops), and a detached generation that
  would outgrow it is aborted (``detached``);
- in all (``--resume-total-bytes``): beyond it the oldest detached stream is
  aborted and forgotten, then the next, until the store fits or none is left.

Nothing here knows a door or the engine: the lifecycle hands each stream a way
to abort its generation (``KeptStream.abort``), and the doors render messages.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections import deque
from collections.abc import AsyncGenerator, Callable, Iterable
from typing import Any

from tokenwire.v1 import generation_pb2 as pb

from . import errors
from .progress import Progress
from .telemetry import Metrics

log = logging.getLogger("tokenwire.server")

GRACE_FIELD = "stream.resume_grace_ms"
MESSAGE_OVERHEAD = 100
"""Bytes of Python heap per kept message beyond its serialized size, counted in the
bounds: a bytes object's header (33), a 2-tuple (56), a deque slot (8)."""


def identity(headers: Iterable[tuple[str, str | bytes]] | None) -> str:
    """Who started (or resumes) a request: a digest of the bearer token it sent, so
    that only the same API key finds it again; keys themselves are never kept."""
    for name, value in headers or ():
        if name.lower() == "authorization":
            text = value.decode("latin-1") if isinstance(value, bytes) else value
            return hashlib.sha256(text.strip().encode()).hexdigest()
    return ""


class KeptStream:
    """One resumable call: its messages kept so far, how it ended, who follows it."""

    __slots__ = (
        "_changed",
        "_room",
        "_timer",
        "abort",
        "attached",
        "bytes",
        "delivered",
        "ended",
        "error",
        "first",
        "grace_s",
        "identity",
        "last",
        "messages",
        "newest",
        "origin",
        "progress",
        "refused",
        "request_id",
        "submitted",
    )

    def __init__(self, request_id: str, who: str, grace_s: float) -> None:
        self.request_id = request_id
        self.identity = who
        self.grace_s = grace_s
        self.messages: deque[tuple[bytes, int]] = deque()  # serialized, with their sizes
        self.newest: pb.GenerateResponse | None = None  # the last one, for a live door
        self.first = 1  # sequence of messages[0]
        self.last = 0  # sequence of the newest message
        self.bytes = 0
        self.delivered = 0  # newest sequence an attached door has written
        self.ended = False
        self.refused = False  # ended before the engine had it: nothing to resume
        self.error: Exception | None = None  # how it ended, when not finished
        self.submitted = False
        self.attached = False
        self.progress: Progress | None = None
        self.abort: Callable[[errors.Ended], None] = lambda _: None  # set by the lifecycle
        self.origin: Any = None  # the door's own rendering context (HTTP: the request)
        self._changed = asyncio.Event()  # a message, the submit or the end
        self._room = asyncio.Event()  # the attached reader let messages go
        self._timer: asyncio.TimerHandle | None = None

    @property
    def running(self) -> bool:
        return not self.ended

    def _notify(self) -> None:
        self._changed.set()


class Resumes:
    """The store of kept streams, by request id, within their bounds and grace."""

    def __init__(
        self, metrics: Metrics, max_grace_ms: int, request_bytes: int, total_bytes: int
    ) -> None:
        self._metrics = metrics
        self.max_grace_ms = max_grace_ms
        self.request_bytes = request_bytes
        self.total_bytes = total_bytes
        self.bytes = 0  # over every kept stream
        self._kept: dict[str, KeptStream] = {}
        self._detached: dict[str, KeptStream] = {}  # oldest detach first
        self._closing = False

    def __len__(self) -> int:
        return len(self._kept)

    def streams(self) -> list[KeptStream]:
        """Every kept stream (for tests and debugging)."""
        return list(self._kept.values())

    # --- the start of a resumable call -----------------------------------------------

    def grace_of(self, request: pb.GenerateRequest) -> float:
        """The request's grace in seconds; 0.0 when it is not resumable."""
        if not request.stream.HasField("resume_grace_ms"):
            return 0.0
        grace_ms = request.stream.resume_grace_ms
        if grace_ms > self.max_grace_ms:
            raise errors.InvalidArgument(
                GRACE_FIELD,
                f"must be at most {self.max_grace_ms} (this server's --max-resume-grace-ms)"
                if self.max_grace_ms
                else "this server keeps no resumable streams (--max-resume-grace-ms 0)",
            )
        return grace_ms / 1000.0

    def open(self, request_id: str, who: str, grace_s: float) -> KeptStream:
        """A new kept stream; one that ended under the same id gives way to it."""
        old = self._kept.get(request_id)
        if old is not None:
            if old.running or old.attached:
                raise errors.DuplicateRequestId(f"request_id {request_id!r} is already in progress")
            self._drop(old)
        kept = self._kept[request_id] = KeptStream(request_id, who, grace_s)
        return kept

    # --- the generation's side -------------------------------------------------------

    def submitted(self, kept: KeptStream, progress: Progress) -> None:
        kept.submitted = True
        kept.progress = progress
        kept._notify()

    async def append(self, kept: KeptStream, msg: pb.GenerateResponse) -> None:
        """Keep the call's next message; wait while an attached reader is a whole
        bound behind; raise ``Detached`` when a detached stream outgrows its bound."""
        if self._kept.get(kept.request_id) is not kept:
            return  # forgotten (evicted): its generation is being aborted
        kept.last += 1
        msg.sequence = kept.last
        data = msg.SerializeToString()
        size = len(data) + MESSAGE_OVERHEAD
        kept.messages.append((data, size))
        kept.newest = msg
        kept.bytes += size
        self.bytes += size
        self._trim(kept)
        kept._notify()
        while kept.bytes > self.request_bytes and kept.running:
            if not kept.attached:
                raise errors.Detached(
                    f"the detached stream kept more than {self.request_bytes} bytes"
                )
            kept._room.clear()
            await kept._room.wait()
            self._trim(kept)
        if self.bytes > self.total_bytes:
            self._evict()

    def finish(self, kept: KeptStream, error: Exception | None, refused: bool = False) -> None:
        """The generation ended (``error`` None: finished); the stream is kept for
        its grace from now if nobody follows it, or forgotten if it never started."""
        kept.ended = True
        kept.error = error
        kept.refused = refused
        kept._notify()
        kept._room.set()
        if refused:
            self._drop(kept)
        elif not kept.attached and self._kept.get(kept.request_id) is kept:
            self._start_timer(kept)

    # --- the doors' side -------------------------------------------------------------

    def find(self, request_id: str, who: str, after: int) -> KeptStream:
        """The kept stream a Resume names, checked: NOT_FOUND for an unknown id or
        another identity, FAILED_PRECONDITION while a stream is attached."""
        kept = self._kept.get(request_id)
        if kept is None or kept.identity != who or kept.refused:
            self._metrics.resumes["not_found"] += 1
            raise errors.NotFound(
                f"request {request_id!r} is not resumable here: unknown, or its grace is over"
            )
        if kept.attached:
            self._metrics.resumes["conflict"] += 1
            raise errors.ResumeConflict(f"request {request_id!r} already has a stream attached")
        if after > kept.last or (after < kept.first - 1 and kept.messages):
            self._metrics.resumes["invalid"] += 1
            raise errors.InvalidArgument(
                "after_sequence",
                f"must be between {kept.first - 1} and {kept.last} for request {request_id!r}"
                " (older messages are no longer kept)"
                if after < kept.first - 1
                else f"is beyond the last message sent, {kept.last}",
            )
        self._metrics.resumes["resumed"] += 1
        return kept

    def attach(self, kept: KeptStream) -> None:
        if kept.attached:
            raise errors.ResumeConflict(
                f"request {kept.request_id!r} already has a stream attached"
            )
        if self._kept.get(kept.request_id) is not kept:
            raise errors.NotFound(
                f"request {kept.request_id!r} is not resumable: its grace is over"
            )
        kept.attached = True
        self._stop_timer(kept)
        if self._detached.pop(kept.request_id, None) is not None:
            self._metrics.detached_streams -= 1

    def detach(self, kept: KeptStream) -> None:
        """The attached door left without an Abort: the grace timer starts."""
        kept.attached = False
        kept._room.set()  # a generation waiting for this reader decides again
        if self._kept.get(kept.request_id) is not kept:
            return
        if self._closing and kept.running:
            kept.abort(errors.ShuttingDown("the server is shutting down: the stream was cut"))
        self._start_timer(kept)
        if self.bytes > self.total_bytes:
            self._evict()  # what attached streams kept may now be let go

    async def follow(self, kept: KeptStream, after: int) -> AsyncGenerator[pb.GenerateResponse]:
        """The kept messages after sequence ``after``, then the live ones, each once;
        raises the generation's error at its end. Each message is marked delivered
        once the door comes back for the next one (its write has returned)."""
        replayed_until = kept.last if after else 0  # already kept when a resume began
        seq = after
        metrics = self._metrics
        while True:
            if seq < kept.last:
                newest = kept.newest
                if seq + 1 == kept.last and newest is not None:
                    msg = newest  # a door that keeps up parses nothing
                else:
                    msg = pb.GenerateResponse.FromString(kept.messages[seq + 1 - kept.first][0])
                if msg.sequence <= replayed_until:
                    metrics.replayed_messages += 1
                yield msg
                seq = msg.sequence
                if seq > kept.delivered:
                    kept.delivered = seq
                    if kept.bytes > self.request_bytes:
                        kept._room.set()
                continue
            if kept.ended:
                if kept.error is not None:
                    raise kept.error
                return
            kept._changed.clear()
            await kept._changed.wait()

    async def wait_submitted(self, kept: KeptStream) -> None:
        """Until the engine has the request; raises how it was refused, if it was."""
        while not kept.submitted and not kept.ended:
            kept._changed.clear()
            await kept._changed.wait()
        if kept.refused and kept.error is not None:
            raise kept.error

    # --- shutdown ----------------------------------------------------------------------

    def shutdown(self) -> None:
        """A drain began: detached generations end now (``shutdown``), as will any
        that detaches from here on; attached ones run on with their doors."""
        self._closing = True
        for kept in list(self._detached.values()):
            if kept.running:
                kept.abort(errors.ShuttingDown("the server is shutting down"))

    def abort_all(self) -> None:
        """The drain is over: every generation still running ends (``shutdown``)."""
        self._closing = True
        for kept in list(self._kept.values()):
            if kept.running:
                kept.abort(errors.ShuttingDown("the server is shutting down"))
            self._stop_timer(kept)

    # --- bounds and timers -------------------------------------------------------------

    def _trim(self, kept: KeptStream) -> None:
        """Let go of messages an attached door has written, oldest first, while the
        stream keeps more than its bound."""
        messages = kept.messages
        while kept.bytes > self.request_bytes and messages and kept.first <= kept.delivered:
            _, size = messages.popleft()
            kept.first += 1
            kept.bytes -= size
            self.bytes -= size

    def _evict(self) -> None:
        while self.bytes > self.total_bytes and self._detached:
            oldest = next(iter(self._detached.values()))
            log.warning(
                "resumable streams keep more than %d bytes: forgetting the oldest detached one",
                self.total_bytes,
                extra={"request_id": oldest.request_id},
            )
            self._expire(oldest, "the server keeps too many detached streams")

    def _start_timer(self, kept: KeptStream) -> None:
        if kept.request_id not in self._detached:
            self._detached[kept.request_id] = kept
            self._metrics.detached_streams += 1
        self._stop_timer(kept)
        loop = asyncio.get_running_loop()
        kept._timer = loop.call_later(kept.grace_s, self._expire, kept, "nobody resumed it")

    def _stop_timer(self, kept: KeptStream) -> None:
        if kept._timer is not None:
            kept._timer.cancel()
            kept._timer = None

    def _expire(self, kept: KeptStream, why: str) -> None:
        """The grace is over (or room is needed): abort a running generation, forget it."""
        if kept.running:
            kept.abort(errors.Detached(f"stream detached: {why}"))
        self._drop(kept)

    def _drop(self, kept: KeptStream) -> None:
        self._stop_timer(kept)
        if self._kept.get(kept.request_id) is kept:
            del self._kept[kept.request_id]
        if self._detached.get(kept.request_id) is kept:
            del self._detached[kept.request_id]
            self._metrics.detached_streams -= 1
        self.bytes -= kept.bytes
        kept.bytes = 0
        kept.messages.clear()
        kept.newest = None
        kept.first = kept.last + 1
