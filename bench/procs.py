"""The orchestrator's processes: servers (tokenwire and the two baselines) and load generators.

    with servers({"tokenwire": [...flags], "http": [...], "bare": [...], "sse": [...]}) as running:
        with Worker() as worker:
            worker.call("saturate", timeout=30, target=running["bare"].target, ...)

Every wait is bounded; servers and workers are stopped (then killed) on the way out.
"""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path
from typing import Any

import psutil

from .records import ServerKind, Target

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
START_TIMEOUT_S = 60.0
TOKENWIRE_KINDS: tuple[ServerKind, ...] = ("tokenwire", "http")
"""Both are a tokenwire-server process of their own; "http" is measured on its HTTP door."""
_BOUND = {
    "tokenwire": re.compile(r" on (\S+):(\d+), metrics"),
    # The gRPC line comes first; the HTTP door's follows it.
    "http": re.compile(r"tokenwire HTTP on (\S+):(\d+)"),
    "bare": re.compile(r"listening on (\S+):(\d+)"),
    "sse": re.compile(r"listening on (\S+):(\d+)"),
}


class BenchError(RuntimeError):
    """A server or load generator misbehaved: the run cannot go on."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _clean_env() -> dict[str, str]:
    # No TOKENWIRE_* setting from the caller's shell changes what is measured.
    return {k: v for k, v in os.environ.items() if not k.startswith("TOKENWIRE_")}


@dataclass
class ServerProcess:
    kind: ServerKind
    process: subprocess.Popen[str]
    address: str = ""
    metrics_url: str | None = None
    log: deque[str] = field(default_factory=lambda: deque(maxlen=200))

    @property
    def target(self) -> Target:
        return Target(self.kind, self.address, self.process.pid, self.metrics_url)

    def rss(self) -> int:
        return int(psutil.Process(self.process.pid).memory_info().rss)

    def wait_bound(self, deadline: float) -> None:
        """Read the log (bounded) until the server says where it listens."""
        assert self.process.stdout is not None
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if not line:
                break
            self.log.append(line)
            match = _BOUND[self.kind].search(line)
            if match:
                self.address = f"{match.group(1)}:{match.group(2)}"
                # Keep draining the log, or a chatty server blocks on a full pipe.
                threading.Thread(target=self._drain, daemon=True).start()
                return
        raise BenchError(f"{self.kind} server did not start:\n" + "".join(self.log))

    def _drain(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.log.append(line)

    def stop(self, timeout: float = 10.0) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout)


def _command(kind: ServerKind, flags: Sequence[str], metrics_port: int) -> list[str]:
    if kind in TOKENWIRE_KINDS:
        return [
            str(BIN / "tokenwire-server"),
            "--port=0",
            f"--metrics-port={metrics_port}",
            "--http-port=0",
            "--shutdown-grace-s=1",
            *flags,
        ]
    module = "bench.bare_grpc" if kind == "bare" else "bench.sse_peer"
    return [sys.executable, "-m", module, *flags]


@contextmanager
def servers(
    flags: Mapping[ServerKind, Sequence[str]],
) -> Iterator[dict[ServerKind, ServerProcess]]:
    """Start the servers side by side (their start-up overlaps), stop them all at the end."""
    running: dict[ServerKind, ServerProcess] = {}
    try:
        for kind, kind_flags in flags.items():
            metrics_port = free_port()
            process = subprocess.Popen(
                _command(kind, kind_flags, metrics_port),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                cwd=ROOT,
                env=_clean_env(),
            )
            running[kind] = ServerProcess(kind, process)
            if kind in TOKENWIRE_KINDS:
                running[kind].metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
        deadline = time.monotonic() + START_TIMEOUT_S
        for server in running.values():
            server.wait_bound(deadline)
        yield running
    except BaseException:
        # Whatever went wrong, the servers' own words are the first clue.
        for server in running.values():
            status = server.process.poll()
            print(
                f"--- {server.kind} server ({'running' if status is None else f'exit {status}'})"
                ", last lines of its log:\n" + "".join(list(server.log)[-20:]),
                file=sys.stderr,
            )
        raise
    finally:
        for server in running.values():
            server.stop()


def _jsonable(value: object) -> object:
    if is_dataclass(value) and not isinstance(value, type):
        return asdict(value)
    return value


class Worker:
    """A load generator process (bench.worker), driven one command at a time."""

    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env=_clean_env(),
        )
        self._replies: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    @property
    def pid(self) -> int:
        return self.process.pid

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._replies.put(line)
        self._replies.put("")

    def send(self, op: str, **args: object) -> None:
        assert self.process.stdin is not None
        command = {"op": op, **{k: _jsonable(v) for k, v in args.items()}}
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()

    def reply(self, op: str, timeout: float) -> Any:
        try:
            line = self._replies.get(timeout=timeout)
        except queue.Empty:
            raise BenchError(f"load generator: no answer to {op!r} within {timeout:.0f}s") from None
        if not line:
            raise BenchError(f"load generator exited during {op!r}")
        answer = json.loads(line)
        if not answer["ok"]:
            raise BenchError(f"load generator failed {op!r}: {answer['error']}")
        return answer["result"]

    def call(self, op: str, timeout: float, **args: object) -> Any:
        self.send(op, **args)
        return self.reply(op, timeout)

    def stop(self) -> None:
        if self.process.stdin is not None and not self.process.stdin.closed:
            self.process.stdin.close()  # the worker ends at end of input
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)

    def __enter__(self) -> Worker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
