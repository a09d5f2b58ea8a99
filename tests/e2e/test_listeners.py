"""Ports are ours alone, and a start that cannot have them all leaves nothing behind."""

from __future__ import annotations

import socket

import grpc
import pytest

from tokenwire.server.app import Server
from tokenwire.server.listeners import ListenerError
from tokenwire.server.settings import Settings

from ..helpers import free_port


async def test_no_other_grpc_server_can_share_our_ports(make_server):
    server = await make_server(health_port=free_port())
    for port in (server.port, server.health_port):
        # A grpc server with grpc's defaults asks for SO_REUSEPORT: had we asked for
        # it too, the kernel would let it in and split new connections between us.
        other = grpc.aio.server()
        with pytest.raises(RuntimeError, match="Failed to bind"):
            other.add_insecure_port(f"127.0.0.1:{port}")
        await other.stop(None)


async def test_a_port_taken_after_the_check_fails_the_start_cleanly():
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        taken = int(other.getsockname()[1])
        server = Server(
            Settings(port=0, metrics_port=taken, http_port=0, sim_ttft_ms=1, sim_itl_ms=1)
        )
        with pytest.raises(ListenerError) as info:
            await server.start()
    assert str(info.value) == (
        f"--metrics-port {taken}: address already in use (127.0.0.1:{taken})"
    )
    assert not server.engine.healthy  # closed again
    assert server.port == 0  # no gRPC port was bound, let alone served
