"""Wire framing for the HTTP door: Server-Sent Events and newline-delimited JSON.

SSE, as the official OpenAI SDKs parse it: one ``data: {json}`` event per
flush, each ended by a blank line, then ``data: [DONE]``. An error after the
stream started is one more event, ``data: {"error": {...}}``, then
``[DONE]``: the form every SDK version raises as ``APIError``.

We never send an ``id:`` field, and the keepalive is a comment ended by a
single newline: the Python SDK's decoder never forgets the last event id, so
after any ``id:`` a comment followed by a blank line dispatches an empty event
that ``json.loads`` fails on. A lone ``: keepalive\\n`` line adds no blank line.

NDJSON: one JSON object per line; HTTP/1.1 chunked transfer frames it (uvicorn
writes each body part as one chunk and the zero-length chunk at the end).
"""

from __future__ import annotations

SSE_CONTENT_TYPE = b"text/event-stream; charset=utf-8"
NDJSON_CONTENT_TYPE = b"application/x-ndjson"

SSE_DONE = b"data: [DONE]\n\n"
SSE_KEEPALIVE = b": keepalive\n"


def sse_event(data: bytes) -> bytes:
    return b"data: " + data + b"\n\n"


def sse_events(events: list[bytes]) -> bytes:
    """Several events in one body write: one system call instead of several."""
    return b"".join(b"data: " + data + b"\n\n" for data in events)


def ndjson_line(data: bytes) -> bytes:
    return data + b"\n"
