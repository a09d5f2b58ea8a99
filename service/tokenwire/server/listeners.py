"""Every port the server opens, checked before the engine loads a model.

    listeners.check(planned(settings))    # ListenerError: one line naming the flag

A model can take minutes to load; a port clash found after that (or after the
gRPC port already reported SERVING) wastes the wait and leaves a half-started
server. So each listener is bound once, at start-up, with a throwaway socket
and released at once; the real binds come after the engine is ready, and a
failure there (another program took the port meanwhile) reads the same.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Iterable
from dataclasses import dataclass

from .settings import BadSettings, Settings


class ListenerError(BadSettings):
    """A port the settings name cannot be listened on."""


@dataclass(frozen=True, slots=True)
class Listener:
    flag: str  # the port's flag, which names it in errors
    port: int  # 0: any free port
    host_flag: str
    host: str

    @property
    def address(self) -> str:
        return join(self.host, self.port)


def planned(s: Settings) -> list[Listener]:
    """The listeners these settings ask for; a new one is one more line here."""
    metrics_host = ("--metrics-host", s.metrics_host) if s.metrics_host else ("--host", s.host)
    # Port 0 turns the health and metrics listeners off; for --port it picks one.
    return [
        Listener("--port", s.port, "--host", s.host),
        *([Listener("--health-port", s.health_port, "--host", s.host)] if s.health_port else []),
        *([Listener("--metrics-port", s.metrics_port, *metrics_host)] if s.metrics_port else []),
        *([Listener("--http-port", s.http_port, "--host", s.host)] if s.http else []),
    ]


def planned_one(s: Settings, flag: str) -> Listener:
    [listener] = [listener for listener in planned(s) if listener.flag == flag]
    return listener


def check(listeners: Iterable[Listener]) -> None:
    """Raise ListenerError unless every listener can bind its address now."""
    taken: dict[int, Listener] = {}
    for listener in listeners:
        other = taken.get(listener.port)
        if other is not None:
            raise ListenerError(
                f"{listener.flag} {listener.port}: {other.flag} uses this port already"
            )
        if listener.port:
            taken[listener.port] = listener
        probe(listener)


def probe(listener: Listener) -> None:
    """Bind ``listener``'s address with a throwaway socket, or raise ListenerError."""
    try:
        found = socket.getaddrinfo(
            listener.host, listener.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except (socket.gaierror, UnicodeError) as error:
        reason = getattr(error, "strerror", None) or str(error)
        raise ListenerError(
            f"{listener.flag} {listener.port}: cannot resolve {listener.host_flag} "
            f"{listener.host!r} ({reason})"
        ) from None
    failures: list[OSError] = []
    for family, kind, proto, _, sockaddr in found:
        with socket.socket(family, kind, proto) as sock:
            # As grpc and http.server bind: a closed connection's TIME_WAIT is no clash.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(sockaddr)
            except OSError as error:
                if error.errno in (errno.EADDRINUSE, errno.EACCES):
                    raise failure(listener, error) from None
                failures.append(error)  # e.g. ::1 on a host without IPv6: another may do
    if len(failures) == len(found):
        raise failure(listener, failures[0])


def failure(listener: Listener, error: OSError) -> ListenerError:
    """The one line that says why ``listener`` cannot listen."""
    where = f"{listener.flag} {listener.port}"
    if error.errno == errno.EADDRINUSE:
        return ListenerError(f"{where}: address already in use ({listener.address})")
    if error.errno == errno.EACCES:
        return ListenerError(
            f"{where}: permission denied ({listener.address}); ports below 1024 need privileges"
        )
    if error.errno == errno.EADDRNOTAVAIL:
        return ListenerError(
            f"{where}: cannot listen on {listener.address}: {listener.host_flag} "
            f"{listener.host} is not an address of this machine"
        )
    reason = error.strerror or str(error)
    return ListenerError(f"{where}: cannot listen on {listener.address}: {reason}")


def join(host: str, port: int) -> str:
    """``host:port``, with an IPv6 address in brackets as grpc and URLs want it."""
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"
