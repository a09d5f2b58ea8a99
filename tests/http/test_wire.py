"""The bytes on the wire: SSE and chunked NDJSON framing, read by curl and a raw socket."""

from __future__ import annotations

import asyncio
import json

import pytest

from tokenwire.server.app import Server
from tokenwire.server.settings import Settings

from ..faulty import FaultyEngine
from ..helpers import sample
from .conftest import HttpServerFactory, base_url, curl

CHAT = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 5, "stream": True}


async def test_curl_reads_sse_events_then_done(http_server: Server) -> None:
    done = await curl(
        "-H",
        "content-type: application/json",
        "-H",
        "x-request-id: wire-1",
        "-D",
        "-",
        "-d",
        json.dumps(CHAT),
        base_url(http_server) + "/v1/chat/completions",
    )
    assert done.returncode == 0, done.stderr
    head, _, body = done.stdout.partition("\r\n\r\n")
    assert head.startswith("HTTP/1.1 200")
    assert "content-type: text/event-stream" in head.lower()
    assert "x-request-id: wire-1" in head.lower()
    assert "transfer-encoding: chunked" in head.lower()
    events = body.split("\n\n")
    assert events[-1] == "" and events[-2] == "data: [DONE]"
    chunks = [json.loads(e.removeprefix("data: ")) for e in events[:-2]]
    assert all(e.startswith("data: ") for e in events[:-2])
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert {c["id"] for c in chunks} == {"chatcmpl-wire-1"}


async def _raw(server: Server, path: str, body: bytes, headers: str = "") -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.http_port)
    writer.write(
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{headers}"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
        + body
    )
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 20)
    writer.close()
    return data


def _dechunk(raw: bytes) -> tuple[bytes, list[bytes]]:
    """Split a chunked HTTP/1.1 answer into its head and chunks, checking the framing."""
    head, _, rest = raw.partition(b"\r\n\r\n")
    assert b"transfer-encoding: chunked" in head.lower(), head
    chunks: list[bytes] = []
    while True:
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line, 16)
        chunk, rest = rest[:size], rest[size:]
        assert rest[:2] == b"\r\n"
        rest = rest[2:]
        if size == 0:
            assert rest == b""  # the zero-length chunk ends the answer, nothing after
            return head, chunks
        chunks.append(chunk)


async def test_ndjson_generate_is_one_response_per_line_ending_with_the_zero_chunk(
    http_server: Server,
) -> None:
    request = {"prompt": "hi", "stopping": {"maxTokens": 6}, "sampling": {"seed": 4}}
    head, chunks = _dechunk(await _raw(http_server, "/v1/generate", json.dumps(request).encode()))
    assert b"content-type: application/x-ndjson" in head.lower()
    lines = b"".join(chunks).split(b"\n")
    assert lines[-1] == b""
    messages = [json.loads(line) for line in lines[:-1]]
    assert sum(len(m.get("tokenIds", [])) for m in messages) == 6
    assert messages[-1]["finishReason"] == "FINISH_REASON_LENGTH"
    assert messages[-1]["usage"]["completionTokens"] == 6


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/generate"])
async def test_an_engine_error_mid_stream_is_one_more_event_then_the_end(path: str) -> None:
    # The engine fails the request after a few steps: the answer has started, so
    # the error goes in the stream (an SSE event then [DONE], or an NDJSON line),
    # and the chunked answer still ends with its zero-length chunk.
    server = Server(
        Settings(port=0, metrics_port=0, http_port=0), engine=FaultyEngine("raise", after=3)
    )
    await server.start()
    try:
        native = {"prompt": "hi", "stopping": {"maxTokens": 50}}
        body = json.dumps(native if path == "/v1/generate" else {**CHAT, "max_tokens": 50})
        head, chunks = _dechunk(await _raw(server, path, body.encode()))
        assert head.startswith(b"HTTP/1.1 200")
        data = b"".join(chunks)
        if path == "/v1/generate":
            *messages, last, end = data.split(b"\n")
            assert end == b"" and messages
            error = json.loads(last)
        else:
            events = data.split(b"\n\n")
            assert events[-2:] == [b"data: [DONE]", b""]
            assert len(events) > 3  # content went out before the error
            error = json.loads(events[-3].removeprefix(b"data: "))
        assert error["error"]["type"] == "server_error"
        assert "injected failure" in error["error"]["message"]
        assert server.engine.in_flight() == 0
        text = server.metrics.text().decode()
        assert sample(text, "tokenwire_http_requests_total", {"route": path, "status": "500"}) == 1
    finally:
        await server.stop(grace=0)


@pytest.mark.parametrize(
    ("path", "status", "kind"),
    [
        ("/v1/chat/completions", 400, "invalid_request_error"),
        ("/v1/nowhere", 404, "not_found_error"),
    ],
)
async def test_errors_before_the_stream_are_openai_error_objects(
    http_server: Server, path: str, status: int, kind: str
) -> None:
    raw = await _raw(http_server, path, b'{"messages": "nope"}')
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(f"HTTP/1.1 {status}".encode())
    error = json.loads(body)["error"]
    assert error["type"] == kind
    assert set(error) == {"message", "type", "param", "code"}


async def test_malformed_json_and_oversized_bodies(make_http_server: HttpServerFactory) -> None:
    server = await make_http_server(max_message_bytes=1 << 16)
    raw = await _raw(server, "/v1/completions", b"{not json")
    assert raw.startswith(b"HTTP/1.1 400")
    assert json.loads(raw.partition(b"\r\n\r\n")[2])["error"]["param"] == "body"
    raw = await _raw(server, "/v1/completions", b'{"prompt": "' + b"x" * (1 << 17) + b'"}')
    assert raw.startswith(b"HTTP/1.1 413")
