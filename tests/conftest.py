"""Shared fixtures: real servers on loopback ports, in-process or in a subprocess."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import grpc
import pytest
import uvloop

from tokenwire.server.app import Server
from tokenwire.server.settings import Settings
from tokenwire.v1 import generation_pb2_grpc as pb_grpc

from .helpers import ServerProcess, start_server_process


@pytest.fixture(autouse=True)
def clean_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    """No TOKENWIRE_* setting from the developer's shell leaks into a test."""
    import os

    for name in list(os.environ):
        if name.startswith("TOKENWIRE_"):
            monkeypatch.delenv(name)


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> dict[str, Any]:
    # The server runs on uvloop in production; test on it too.
    return {"uvloop": uvloop.new_event_loop}


@pytest.fixture(scope="session")
def sim_server() -> Iterator[ServerProcess]:
    """A fast simulated server in a subprocess, shared by a whole session."""
    server = start_server_process(["--sim-ttft-ms", "5", "--sim-itl-ms", "2"])
    yield server
    server.stop()


@pytest.fixture
def slow_sim_server() -> Iterator[ServerProcess]:
    """A slow simulated server (a token every 50 ms), one per test."""
    server = start_server_process(["--sim-ttft-ms", "5", "--sim-itl-ms", "50"])
    yield server
    server.stop()


ServerFactory = Callable[..., Awaitable[Server]]


@pytest.fixture
async def make_server() -> AsyncIterator[ServerFactory]:
    """Start in-process servers on free loopback ports: ``await make_server(sim_itl_ms=5)``."""
    servers: list[Server] = []

    async def start(**settings: Any) -> Server:
        values: dict[str, Any] = {
            "port": 0,
            "metrics_port": 0,
            "http_port": 0,
            "sim_ttft_ms": 1,
            "sim_itl_ms": 1,
        }
        values.update(settings)
        server = Server(Settings(**values))
        await server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.stop(grace=0)


@pytest.fixture
async def server(make_server: ServerFactory) -> Server:
    return await make_server()


@pytest.fixture
async def channel(server: Server) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        yield ch


@pytest.fixture
def stub(channel: grpc.aio.Channel) -> pb_grpc.GenerationServiceStub:
    return pb_grpc.GenerationServiceStub(channel)


# The async stub exists in the generated stubs (.pyi) only: a string annotation.
StubFactory = Callable[[Server], Awaitable["pb_grpc.GenerationServiceAsyncStub"]]


@pytest.fixture
async def stub_for() -> AsyncIterator[StubFactory]:
    """A stub on its own channel to a given server: ``stub = await stub_for(server)``."""
    channels: list[grpc.aio.Channel] = []

    async def make(server: Server) -> pb_grpc.GenerationServiceAsyncStub:
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
        channels.append(channel)
        return pb_grpc.GenerationServiceStub(channel)

    yield make
    for channel in channels:
        await channel.close()
