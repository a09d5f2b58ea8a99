"""An HTTP client that leaves, or stops reading, frees its engine request: metrics prove it."""

from __future__ import annotations

import asyncio
import json
import socket

from tokenwire.server.app import Server

from ..helpers import async_wait_for, sample
from .conftest import HttpServerFactory, open_stream

LONG = {
    "messages": [{"role": "user", "content": "go on"}],
    "max_tokens": 5000,
    "ignore_eos": True,
    "stream": True,
}


def metric(server: Server, name: str, **labels: str) -> float:
    return sample(server.metrics.text().decode(), name, labels)


async def test_disconnect_mid_stream_aborts_the_engine_request(
    make_http_server: HttpServerFactory,
) -> None:
    server = await make_http_server(sim_itl_ms=10)
    _, writer = await open_stream(server.http_port, LONG)
    assert server.engine.in_flight() == 1
    writer.close()
    await async_wait_for(lambda: server.engine.in_flight() == 0, within=5)
    assert metric(server, "tokenwire_aborts_total", reason="cancelled") == 1
    assert metric(server, "tokenwire_engine_requests_in_flight") == 0
    await async_wait_for(lambda: metric(server, "tokenwire_streams_active") == 0)
    assert metric(server, "tokenwire_abort_latency_seconds_count", reason="cancelled") == 1


async def test_disconnect_storm_leaves_nothing_in_flight(
    make_http_server: HttpServerFactory,
) -> None:
    server = await make_http_server(sim_itl_ms=20, max_concurrent_requests=512)
    streams = await asyncio.gather(*(open_stream(server.http_port, LONG) for _ in range(200)))
    assert server.engine.in_flight() == 200
    for _, writer in streams:
        writer.close()
    await async_wait_for(lambda: server.engine.in_flight() == 0, within=10)
    await async_wait_for(
        lambda: metric(server, "tokenwire_aborts_total", reason="cancelled") == 200, within=5
    )
    assert metric(server, "tokenwire_engine_requests_in_flight") == 0
    await async_wait_for(lambda: metric(server, "tokenwire_streams_active") == 0)
    assert not server.core.live


async def test_disconnect_during_the_prefill_and_on_ndjson(
    make_http_server: HttpServerFactory,
) -> None:
    server = await make_http_server(sim_ttft_ms=1, sim_itl_ms=10)
    native = {"prompt": "go", "stopping": {"maxTokens": 5000, "ignoreEos": True}}
    reader, writer = await asyncio.open_connection("127.0.0.1", server.http_port)
    data = json.dumps(native).encode()
    writer.write(
        b"POST /v1/generate HTTP/1.1\r\nHost: x\r\nContent-Length: "
        + str(len(data)).encode()
        + b"\r\n\r\n"
        + data
    )
    await writer.drain()
    await asyncio.wait_for(reader.readuntil(b"\n{"), 10)  # a first NDJSON line went out
    writer.close()
    await async_wait_for(lambda: server.engine.in_flight() == 0, within=5)
    assert metric(server, "tokenwire_aborts_total", reason="cancelled") == 1


async def test_a_reader_that_stops_reading_is_bounded_and_aborted_as_stalled(
    make_http_server: HttpServerFactory,
) -> None:
    # Far more answer than the socket buffers on both sides hold (about 30 MB).
    server = await make_http_server(
        sim_ttft_ms=1,
        sim_itl_ms=0,
        stall_timeout_s=0.5,
        max_tokens_limit=150_000,
        sim_max_context=200_000,
        max_prompt_tokens=1000,
    )
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(sock, ("127.0.0.1", server.http_port))
    body = json.dumps({**LONG, "max_tokens": 150_000}).encode()
    await loop.sock_sendall(
        sock,
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: "
        + str(len(body)).encode()
        + b"\r\n\r\n"
        + body,
    )
    try:  # never read: the server's writes back up until the watchdog gives up
        await async_wait_for(
            lambda: metric(server, "tokenwire_aborts_total", reason="stalled") == 1, within=15
        )
        assert server.engine.in_flight() == 0
        await async_wait_for(lambda: metric(server, "tokenwire_streams_active") == 0)
        # It stalled long before the end: the writes were held back, not buffered.
        assert metric(server, "tokenwire_tokens_total", kind="completion") < 150_000
    finally:
        sock.close()
