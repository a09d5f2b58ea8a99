"""Test helpers: bounded polling, Prometheus scraping, servers in subprocesses."""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

BIN = Path(sys.executable).parent
_BOUND = re.compile(r"on (\S+):(\d+), metrics")
_HTTP = re.compile(r"HTTP on (\S+):(\d+)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def parse_metrics(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def sample(text: str, name: str, labels: Mapping[str, str] | None = None) -> float:
    """Sum of the samples named ``name`` whose labels include ``labels`` (0 if none)."""
    want = set((labels or {}).items())
    return sum(v for (n, ls), v in parse_metrics(text).items() if n == name and want <= ls)


def scrape(metrics_url: str) -> str:
    with urllib.request.urlopen(metrics_url, timeout=5) as response:
        return str(response.read().decode())


def metric_value(metrics_url: str, name: str, labels: Mapping[str, str] | None = None) -> float:
    return sample(scrape(metrics_url), name, labels)


def wait_for(predicate: Callable[[], bool], timeout: float = 5.0, interval: float = 0.01) -> None:
    """Poll ``predicate`` until true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(interval)


async def async_wait_for(
    predicate: Callable[[], bool | Awaitable[bool]], within: float = 5.0, interval: float = 0.005
) -> None:
    """Poll ``predicate`` (sync or async) until true; fail after ``within`` seconds."""
    deadline = time.monotonic() + within
    while True:
        result = predicate()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {within}s")
        await asyncio.sleep(interval)


@dataclass
class ServerProcess:
    """A real ``tokenwire-server`` in its own process."""

    process: subprocess.Popen[str]
    port: int
    metrics_port: int
    log: list[str]
    http_port: int = 0  # 0: the HTTP door is off

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def stop(self, timeout: float = 10.0) -> int:
        if self.process.poll() is None:
            self.process.terminate()
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait(timeout)
        finally:
            self._drain.join(timeout)
            if self.process.stdout is not None:
                self.process.stdout.close()

    def __post_init__(self) -> None:
        # Keep reading the log, or a chatty server blocks on a full pipe.
        self._drain = threading.Thread(target=self._read_log, daemon=True)
        self._drain.start()

    def _read_log(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.log.append(line)


def start_server_process(
    args: Sequence[str] = (), env: Mapping[str, str] | None = None
) -> ServerProcess:
    """Start ``tokenwire-server --port 0 --http-port 0`` and wait (bounded) for the ports
    it logs."""
    metrics_port = free_port()
    cmd = [
        str(BIN / "tokenwire-server"),
        *("--port", "0", "--metrics-port", str(metrics_port), "--http-port", "0"),
        *args,
    ]
    process = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, **(env or {})},
    )
    assert process.stdout is not None
    log: list[str] = []
    port = 0
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        log.append(line)
        match = _BOUND.search(line)
        if match and "--no-http" in args:
            return ServerProcess(process, int(match.group(2)), metrics_port, log)
        if match:
            port = int(match.group(2))
        http = _HTTP.search(line)
        if http:  # logged right after the gRPC line
            return ServerProcess(process, port, metrics_port, log, int(http.group(2)))
    process.kill()
    process.wait(10)
    process.stdout.close()
    raise AssertionError("server did not report its port:\n" + "".join(log))


async def http_request(
    port: int,
    path: str,
    body: dict[str, object] | None = None,
    headers: str = "",
    method: str = "POST",
) -> tuple[int, dict[str, str], bytes]:
    """One raw HTTP/1.1 request on its own connection: status, headers (lower case) and
    the whole body as sent (bounded)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    data = json.dumps(body).encode() if body is not None else b""
    writer.write(
        f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{headers}"
        f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n".encode()
        + data
    )
    raw = await asyncio.wait_for(reader.read(), 20)
    writer.close()
    head, _, rest = raw.partition(b"\r\n\r\n")
    status_line, *lines = head.decode().split("\r\n")
    fields = dict(line.lower().split(": ", 1) for line in lines)
    return int(status_line.split()[1]), fields, rest
