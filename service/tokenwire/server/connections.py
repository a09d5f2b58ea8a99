"""How long a connection lives, and how a peer that vanished is found, on both doors.

    grpc.aio.server(options=(..., *connections.grpc_options(settings)))
    connections.tcp_keepalive(listening_socket, settings)   # the HTTP door

A client whose machine dies, or whose network drops its packets, sends no FIN and no
RST: without a probe of our own its stream would sit there until the engine finished
it (a silent prefill sends nothing at all to notice with). So:

- gRPC: HTTP/2 PINGs from the server after ``keepalive_time_s`` without reads, the
  peer gone if one is not answered within ``keepalive_timeout_s`` (grpc then closes
  the transport and every call on it is cancelled: abort reason ``cancelled``). Pings
  go on while nothing is written (``max_pings_without_data`` 0): a long prefill is
  exactly when one is needed.
- HTTP (HTTP/1.1 on uvicorn, no pings to send): TCP keepalive probes after
  ``keepalive_time_s`` idle, and TCP_USER_TIMEOUT, which drops the connection once
  sent data or probes stay unacknowledged ``keepalive_timeout_s`` (it bounds a peer
  that vanished mid-stream, while the server writes, which keepalive alone would
  not). The transport then reports the connection lost, and the door's disconnect
  watcher cancels the request. Accepted sockets inherit these options from the
  listening socket (Linux).
"""

from __future__ import annotations

import socket
from typing import Protocol

from .settings import Settings


class _Socket(Protocol):
    # uvloop's listening sockets are pseudo-sockets: setsockopt is what they share.
    def setsockopt(self, level: int, option: int, value: int, /) -> None: ...


def grpc_options(settings: Settings) -> tuple[tuple[str, int], ...]:
    """grpc server channel arguments: keepalive, and max connection age with its grace."""
    options: list[tuple[str, int]] = []
    if settings.keepalive_time_s:
        options += [
            ("grpc.keepalive_time_ms", _ms(settings.keepalive_time_s)),
            ("grpc.keepalive_timeout_ms", _ms(settings.keepalive_timeout_s)),
            ("grpc.http2.max_pings_without_data", 0),
        ]
    if settings.max_connection_age_s:
        # Behind an L4 balancer a long-lived HTTP/2 connection pins a client to one
        # pod; closing connections now and then (GOAWAY, live streams finish within
        # the grace) lets clients reconnect and spread out.
        grace = settings.max_connection_age_grace_s
        options += [
            ("grpc.max_connection_age_ms", _ms(settings.max_connection_age_s)),
            (
                "grpc.max_connection_age_grace_ms",
                _ms(settings.shutdown_grace_s if grace is None else grace),
            ),
        ]
    return tuple(options)


def tcp_keepalive(sock: _Socket, settings: Settings) -> None:
    """TCP keepalive and TCP_USER_TIMEOUT on a listening socket (see the module doc)."""
    if not settings.keepalive_time_s:
        return
    idle = max(1, round(settings.keepalive_time_s))  # the kernel counts whole seconds
    interval = max(1, round(settings.keepalive_timeout_s / 3))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, idle)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, interval)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, _ms(settings.keepalive_timeout_s))


def _ms(seconds: float) -> int:
    return int(seconds * 1000)
