"""The few ASGI pieces the HTTP door needs, without a framework.

A bare ASGI app on uvicorn's httptools protocol costs about half the CPU per
streamed event of FastAPI's (docs/performance.md, "The transport's own cost"),
and the door needs no more than a route table, a bounded body read, JSON
answers and a watch for the client going away.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]

JSON = b"application/json"


class BodyTooLarge(Exception):
    """The request body is over the limit (HTTP 413)."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"request body larger than {limit} bytes")
        self.limit = limit


class ClientGone(Exception):
    """The client disconnected before its request body arrived."""


def header(scope: Scope, name: bytes) -> str | None:
    """A request header's value (the first, if repeated); ``name`` in lower case."""
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value).decode("latin-1")
    return None


_DISCARD_LIMIT = 64 << 20
"""How much of a refused body is read and dropped, so that the client, still
sending, gets the 413 rather than a reset connection."""


async def read_body(receive: Receive, limit: int) -> bytes:
    """The whole request body, refusing more than ``limit`` bytes (nothing past the
    limit is kept)."""
    parts: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk = message.get("body", b"")
        size += len(chunk)
        more = message.get("more_body", False)
        if size > limit:
            while more and size <= _DISCARD_LIMIT:
                message = await receive()
                if message["type"] == "http.disconnect":
                    raise ClientGone
                size += len(message.get("body", b""))
                more = message.get("more_body", False)
            raise BodyTooLarge(limit)
        parts.append(chunk)
        if not more:
            return b"".join(parts)


async def send_bytes(
    send: Send,
    status: int,
    body: bytes,
    content_type: bytes = JSON,
    headers: Iterable[tuple[bytes, bytes]] = (),
) -> None:
    """A whole answer in one write."""
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", content_type),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def start_stream(
    send: Send, content_type: bytes, headers: Iterable[tuple[bytes, bytes]] = ()
) -> None:
    """Start a streamed answer: no length, so uvicorn frames it chunked on HTTP/1.1."""
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", content_type),
                # Proxies (nginx) buffer an answer unless told not to: tokens must flow.
                (b"cache-control", b"no-cache"),
                (b"x-accel-buffering", b"no"),
                *headers,
            ],
        }
    )


async def send_part(send: Send, body: bytes) -> None:
    await send({"type": "http.response.body", "body": body, "more_body": True})


async def end_stream(send: Send) -> None:
    await send({"type": "http.response.body", "body": b"", "more_body": False})


async def cancel_on_disconnect(receive: Receive, task: asyncio.Task[Any]) -> None:
    """Cancel ``task`` the moment the client disconnects.

    uvicorn answers ``receive()`` with ``http.disconnect`` as soon as the
    connection is lost, so the handler's cancel (and the engine abort behind
    it) runs within one event-loop turn of the server learning of it.
    """
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            task.cancel()
            return
