"""The HTTP side of resumable streams (docs/resume.md): how the kept messages of
``core/resume.py`` go out again as SSE events with ``id: <sequence>``, and where a
client says what it already has.

A resumable OpenAI stream renders each kept ``GenerateResponse`` as the chunk the
plain stream would have sent; ``GET /v1/requests/{id}/events`` renders the same
messages again after ``Last-Event-ID`` (or ``?starting_after=N``), as OpenAI
chunks for a request that came in as one, else as the native message's JSON.
The ``id:`` goes on the last event of a message's events (a usage chunk follows
the last content chunk), so that a client that has an id has all of its events;
it follows the ``data:`` line (SSE allows either order).
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qs

from google.protobuf import json_format

from tokenwire.v1 import generation_pb2 as pb

from ..core import errors
from ..core.messages import FINISH_REASONS
from ..core.resume import identity
from ..engines.base import FinishReason, SequenceDelta, TokenLogprob, ToolCallDelta, TopLogprob
from .asgi import Scope, header
from .openai_request import OpenAIRequest
from .openai_response import Answer, usage_body

EVENTS_PREFIX = "/v1/requests/"
EVENTS_SUFFIX = "/events"
EVENTS_ROUTE = "/v1/requests/{id}/events"  # the route's label in metrics, logs and spans

# The contract's finish reasons back to the engine's: the one table, read backwards.
_FINISHES: dict[int, FinishReason] = {
    number: reason for reason, number in FINISH_REASONS.items() if reason is not None
}


@dataclass(frozen=True, slots=True)
class Origin:
    """How a resumable request asked to be answered: kept with its stream."""

    parsed: OpenAIRequest | None  # None: the native contract (gRPC, /v1/generate)
    model: str
    created: int = 0  # the chunks' "created", the same on every resume


def events_id(path: str) -> str | None:
    """The request id of a ``/v1/requests/{id}/events`` path, or None."""
    if path.startswith(EVENTS_PREFIX) and path.endswith(EVENTS_SUFFIX):
        request_id = path[len(EVENTS_PREFIX) : -len(EVENTS_SUFFIX)]
        if request_id and "/" not in request_id:
            return request_id
    return None


def identity_of(scope: Scope) -> str:
    """Who asks, as the core compares it: the same key over gRPC or HTTP is one identity."""
    value = header(scope, b"authorization")
    return identity(() if value is None else (("authorization", value),))


def after_of(scope: Scope) -> tuple[int, str]:
    """The last sequence the client has, and the parameter it came in: the
    ``Last-Event-ID`` header, else ``?starting_after=N``, else 0."""
    value = header(scope, b"last-event-id")
    param = "Last-Event-ID"
    if value is None:
        query = parse_qs(bytes(scope.get("query_string", b"")).decode("latin-1"))
        values = query.get("starting_after")
        if not values:
            return 0, param
        value, param = values[-1], "starting_after"
    value = value.strip()
    if not value.isdigit() or len(value) > 20:
        raise errors.InvalidArgument(param, "must be a message sequence number (0 or more)")
    return int(value), param


def delta_of(msg: pb.GenerateResponse) -> SequenceDelta:
    """A kept message as the engine delta it was made of, for ``Answer`` to render."""
    match: str | int | None = None
    if msg.HasField("stop_match"):
        which = msg.stop_match.WhichOneof("match")
        match = getattr(msg.stop_match, which) if which else None
    return SequenceDelta(
        index=msg.index,
        token_ids=tuple(msg.token_ids),
        text=msg.text,
        logprobs=tuple(
            TokenLogprob(
                lp.token_id,
                lp.token,
                lp.logprob,
                tuple(TopLogprob(t.token_id, t.token, t.logprob) for t in lp.top),
            )
            for lp in msg.logprobs
        ),
        cumulative_logprob=msg.cumulative_logprob if msg.HasField("cumulative_logprob") else None,
        finish_reason=_FINISHES.get(msg.finish_reason),
        stop_match=match,
        tool_calls=tuple(ToolCallDelta(c.index, c.id, c.name, c.arguments) for c in msg.tool_calls),
    )


class Renderer:
    """One resumable stream's SSE events, for its original request or a resume."""

    def __init__(self, origin: Origin, request_id: str, n: int) -> None:
        parsed = origin.parsed
        self._parsed = parsed
        self._answer = (
            None if parsed is None else Answer(parsed, request_id, origin.model, n, origin.created)
        )

    def opening(self, after: int) -> bytes:
        """What goes before the first message: chat's role chunks, from the start only."""
        if self._answer is None or after:
            return b""
        return b"".join(b"data: " + e + b"\n\n" for e in self._answer.opening())

    def message(self, msg: pb.GenerateResponse) -> bytes:
        answer, parsed = self._answer, self._parsed
        if answer is None or parsed is None:
            data = json_format.MessageToJson(msg, indent=None).encode()
            return b"data: %s\nid: %d\n\n" % (data, msg.sequence)
        delta = delta_of(msg)
        # Nothing to say (a call's markup): no event. Its id is skipped too; one who
        # resumes before it gets it again, as nothing again.
        events = [answer.chunk(msg.index, (delta,))] if answer.says_something((delta,)) else []
        if msg.HasField("usage") and parsed.include_usage:
            u = msg.usage
            usage = usage_body(u.prompt_tokens, u.completion_tokens, u.cached_prompt_tokens)
            events.append(answer.usage_chunk(usage))
        if not events:
            return b""
        *first, last = events
        head = b"".join(b"data: " + e + b"\n\n" for e in first)
        return head + b"data: %s\nid: %d\n\n" % (last, msg.sequence)
