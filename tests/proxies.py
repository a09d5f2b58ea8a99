"""A real L7 proxy in front of a server: Debian's HAProxy on loopback.

    proxy = start_haproxy(grpc_port=server.port, http_port=server.http_port)
    ...                                   # talk to proxy.grpc_target / proxy.http_url
    proxy.restart()                       # same ports, a new process: connections cut
    proxy.stop()

or, in a test, the ``haproxy`` fixture (a factory; every proxy it started is stopped
at teardown). gRPC goes through HTTP/2 cleartext on both sides (``bind ... proto h2``
and ``server ... proto h2``); the HTTP door's frontend speaks HTTP/1.1 (and h2c with
prior knowledge, which HAProxy detects by the preface) to uvicorn's HTTP/1.1.

The timeouts are those docs/deploy.md recommends unless a test names others
(``ProxyTimeouts``): a stream's silent prefill must fit inside ``server`` and
``client``, the proxy's inactivity timeouts on each side of a stream.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from .helpers import free_port

HAPROXY = shutil.which("haproxy") or next(
    (p for p in ("/usr/sbin/haproxy", "/sbin/haproxy") if Path(p).exists()), None
)


@dataclass(frozen=True)
class ProxyTimeouts:
    """HAProxy's timeouts, in milliseconds (HAProxy's own names)."""

    connect: int = 5_000
    # Inactivity on a stream, client side and server side: a long silent prefill
    # must fit in both, or HAProxy answers 504 (HTTP) / resets the stream (gRPC).
    client: int = 600_000
    server: int = 600_000
    # An idle HTTP/1.1 keep-alive or HTTP/2 connection with no stream.
    http_keep_alive: int = 60_000
    http_request: int = 10_000
    # A half-closed connection.
    client_fin: int = 10_000
    server_fin: int = 10_000


@dataclass(frozen=True)
class ProxyTuning:
    """The HTTP/2 and buffer settings that matter for streams (HAProxy defaults: a
    64 KiB - 1 initial window, 16 KiB buffers, so request headers above about 15 KiB
    get 400 / a reset stream)."""

    h2_initial_window: int = 1_048_576
    h2_max_concurrent_streams: int = 1_000
    bufsize: int = 65_536


def config(
    grpc_backend: int,
    http_backend: int,
    grpc_port: int,
    http_port: int,
    timeouts: ProxyTimeouts,
    tuning: ProxyTuning,
    backend_host: str = "127.0.0.1",
) -> str:
    t = timeouts
    return f"""\
global
    log stdout format raw local0 info
    tune.h2.initial-window-size {tuning.h2_initial_window}
    tune.h2.max-concurrent-streams {tuning.h2_max_concurrent_streams}
    tune.bufsize {tuning.bufsize}
    maxconn 4000

defaults
    mode http
    log global
    option httplog
    option dontlognull
    option abortonclose
    timeout connect {t.connect}ms
    timeout client {t.client}ms
    timeout server {t.server}ms
    timeout http-keep-alive {t.http_keep_alive}ms
    timeout http-request {t.http_request}ms
    timeout client-fin {t.client_fin}ms
    timeout server-fin {t.server_fin}ms

frontend grpc_in
    bind 127.0.0.1:{grpc_port} proto h2
    default_backend grpc_out

backend grpc_out
    server tokenwire {backend_host}:{grpc_backend} proto h2

frontend http_in
    bind 127.0.0.1:{http_port}
    default_backend http_out

backend http_out
    server tokenwire {backend_host}:{http_backend}
"""


@dataclass
class Haproxy:
    """One HAProxy process in the foreground (``-db``), its log read into ``log``."""

    grpc_backend: int
    http_backend: int
    timeouts: ProxyTimeouts = field(default_factory=ProxyTimeouts)
    tuning: ProxyTuning = field(default_factory=ProxyTuning)
    backend_host: str = "127.0.0.1"
    grpc_port: int = 0  # 0: a free port, kept across restarts
    http_port: int = 0
    log: list[str] = field(default_factory=list)
    _process: subprocess.Popen[str] | None = None
    _drain: threading.Thread | None = None
    _dir: Path | None = None

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def pid(self) -> int:
        assert self._process is not None
        return self._process.pid

    def start(self, timeout: float = 10.0) -> None:
        assert HAPROXY is not None, "haproxy is not installed"
        self.grpc_port = self.grpc_port or free_port()
        self.http_port = self.http_port or free_port()
        self._dir = self._dir or Path(tempfile.mkdtemp(prefix="tokenwire-haproxy-"))
        path = self._dir / "haproxy.cfg"
        path.write_text(
            config(
                self.grpc_backend,
                self.http_backend,
                self.grpc_port,
                self.http_port,
                self.timeouts,
                self.tuning,
                self.backend_host,
            )
        )
        check = subprocess.run(
            [HAPROXY, "-c", "-q", "-f", str(path)], capture_output=True, text=True, timeout=10
        )
        assert check.returncode == 0, f"haproxy config refused:\n{check.stdout}{check.stderr}"
        self._process = subprocess.Popen(
            [HAPROXY, "-db", "-f", str(path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self._drain = threading.Thread(target=self._read_log, args=(self._process,), daemon=True)
        self._drain.start()
        # Listening once both frontends accept a connection (bounded).
        deadline = time.monotonic() + timeout
        for port in (self.grpc_port, self.http_port):
            while not _accepts(port):
                if self._process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise AssertionError("haproxy did not start:\n" + "".join(self.log))
                time.sleep(0.01)

    def stop(self, timeout: float = 10.0) -> None:
        """Hard stop (SIGTERM): every connection through the proxy is closed at once."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout)
        if self._drain is not None:
            self._drain.join(timeout)
        if process.stdout is not None:
            process.stdout.close()

    def restart(self) -> None:
        """Stop, then start again on the same ports (clients reconnect to them)."""
        self.stop()
        self.start()

    def close(self) -> None:
        self.stop()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def _read_log(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            self.log.append(line)


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def start_haproxy(
    grpc_port: int,
    http_port: int,
    timeouts: ProxyTimeouts | None = None,
    tuning: ProxyTuning | None = None,
) -> Haproxy:
    """HAProxy on free loopback ports in front of a server's gRPC and HTTP ports."""
    proxy = Haproxy(grpc_port, http_port, timeouts or ProxyTimeouts(), tuning or ProxyTuning())
    proxy.start()
    return proxy


class HaproxyFactory:
    def __init__(self) -> None:
        self.started: list[Haproxy] = []

    def __call__(
        self,
        grpc_port: int,
        http_port: int,
        timeouts: ProxyTimeouts | None = None,
        tuning: ProxyTuning | None = None,
    ) -> Haproxy:
        proxy = start_haproxy(grpc_port, http_port, timeouts, tuning)
        self.started.append(proxy)
        return proxy


@pytest.fixture
def haproxy() -> Iterator[HaproxyFactory]:
    """``proxy = haproxy(server.port, server.http_port)``; skips where there is no
    haproxy (``make system-tools`` installs Debian's as root)."""
    if HAPROXY is None:
        pytest.skip("haproxy is not installed (Debian package haproxy; make system-tools)")
    factory = HaproxyFactory()
    yield factory
    for proxy in factory.started:
        proxy.close()
