"""Fixtures for the HTTP door: in-process servers with HTTP on a free port, and clients."""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import openai
import pytest

from tokenwire.server.app import Server

from ..conftest import ServerFactory

HttpServerFactory = Callable[..., Awaitable[Server]]


@pytest.fixture
async def make_http_server(make_server: ServerFactory) -> HttpServerFactory:
    """``await make_http_server(sim_itl_ms=5)``: a server with its HTTP door on a free port."""

    async def start(**settings: Any) -> Server:
        server = await make_server(http_port=0, **settings)
        assert server.http_port > 0
        return server

    return start


@pytest.fixture
async def http_server(make_http_server: HttpServerFactory) -> Server:
    return await make_http_server()


def base_url(server: Server) -> str:
    return f"http://127.0.0.1:{server.http_port}"


@pytest.fixture
async def oai(http_server: Server) -> AsyncIterator[openai.AsyncOpenAI]:
    """The official SDK, unmodified, pointed at the server (no retries: errors show)."""
    async with openai.AsyncOpenAI(
        base_url=base_url(http_server) + "/v1", api_key="unused", max_retries=0
    ) as client:
        yield client


async def curl(*args: str) -> subprocess.CompletedProcess[str]:
    """The real curl, streaming (-N), bounded."""
    proc = await asyncio.create_subprocess_exec(
        "curl",
        *("-sS", "-N", "--max-time", "20"),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return subprocess.CompletedProcess(args, proc.returncode, out.decode(), err.decode())


async def open_stream(
    port: int, body: dict[str, object], headers: str = "", path: str = "/v1/chat/completions"
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Start a streamed request on its own connection; return once its first event came."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    data = json.dumps(body).encode()
    writer.write(
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{headers}"
        f"Content-Length: {len(data)}\r\n\r\n".encode()
        + data
    )
    await writer.drain()
    await asyncio.wait_for(reader.readuntil(b"data: "), 10)
    return reader, writer
