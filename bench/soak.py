"""The soak: minutes of mixed traffic over both doors, the server sampled for growth.

    python -m bench.soak                    # SOAK_SECONDS (default 600), make soak
    python -m bench.soak --seconds 20 --out /tmp/soak.json

Two servers in processes of their own (bench.soak_server: tokenwire-server plus a
task count). Server A takes the steady mix; server B is stopped (SIGTERM, live
streams and all) and started again every ``RESTART_EVERY_S``, while clients keep
calling it. The mix, each kind with the outcomes it may have (anything else is an
unexpected error, and fails the run):

    grpc_stream    Generate to the end; its text matches Complete's (same seed)
    grpc_cancel    cancelled mid-stream                                 CANCELLED
    grpc_deadline  a 0.2 s deadline on a long stream                    DEADLINE_EXCEEDED
    grpc_bad       max_tokens 0                                         INVALID_ARGUMENT
    grpc_dup       two live requests with one request id                ALREADY_EXISTS
    grpc_stopped   reads one message, then nothing for 3 s, then leaves (CANCELLED,
                   or the server's stall abort: --stall-timeout-s 2)
    http_stream    a chat completion stream to [DONE]
    http_whole     a completion, not streamed
    http_bad       malformed JSON                                       400
    http_deadline  X-Request-Timeout 0.2 on a long stream              error event
    http_drop      closes its connection mid-stream
    restart_*      the same calls on server B; while it is down or going down:
                   UNAVAILABLE, or a refused / reset connection

Every ``SAMPLE_EVERY_S`` server A's RSS, open file descriptors, threads, event-loop
tasks and tokenwire_engine_requests_in_flight are sampled. After the traffic: both
servers idle (in flight 0), no traceback in either log, and after the warm-up
(the first WARMUP_SHARE of the run) no growth beyond BOUNDS between the first and
the last third of the samples (medians, so one busy moment does not count).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import psutil

from tokenwire.v1 import generation_pb2 as pb
from tokenwire.v1 import generation_pb2_grpc as pb_grpc

ROOT = Path(__file__).resolve().parent.parent
SAMPLE_EVERY_S = 5.0
RESTART_EVERY_S = 20.0
WARMUP_SHARE = 0.2
CONCURRENCY = 12  # clients on server A at once; 2 more on server B
# Growth allowed from the first to the last third of the samples after warm-up
# (medians of each). RSS: allocator arenas settle over minutes; a leak of one
# request's state (about 10 KB) per request would pass 100 MiB in a 10-minute run.
BOUNDS = {"rss_mib": 24.0, "fds": 16.0, "threads": 4.0, "tasks": 64.0}
_BOUND = re.compile(r" on (\S+):(\d+), metrics")
_HTTP = re.compile(r"HTTP on (\S+):(\d+)")
LONG = pb.StoppingOptions(max_tokens=5000, ignore_eos=True)
RECONNECT_GRACE_S = 2.0
RESTART_CODES = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
# Clients of server B reconnect soon after its restart (grpc's default backoff
# grows to 120 s).
B_CHANNEL = (
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 500),
)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """A bench.soak_server process on loopback, its whole log kept."""

    def __init__(self, name: str, flags: list[str], workdir: Path) -> None:
        self.name = name
        self.flags = flags
        self.tasks_file = workdir / f"{name}.tasks"
        self.log: list[str] = []
        self.port = self.http_port = self.metrics_port = 0
        self.process: subprocess.Popen[str] | None = None
        self.starts = 0
        self._drainer: threading.Thread | None = None

    def start(self, timeout: float = 60.0) -> None:
        self.metrics_port = self.metrics_port or _free_port()
        # Ports kept across restarts, so clients reconnect to the same address.
        port = ["--port", str(self.port)] if self.port else ["--port", "0"]
        http = ["--http-port", str(self.http_port)] if self.http_port else ["--http-port", "0"]
        env = {k: v for k, v in os.environ.items() if not k.startswith("TOKENWIRE_")}
        env["SOAK_TASKS_FILE"] = str(self.tasks_file)
        self.process = subprocess.Popen(
            [
                *(sys.executable, "-m", "bench.soak_server", *port, *http),
                *("--metrics-port", str(self.metrics_port), *self.flags),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=ROOT,
            env=env,
        )
        assert self.process.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if not line:
                break
            self.log.append(line)
            if match := _BOUND.search(line):
                self.port = int(match.group(2))
            if match := _HTTP.search(line):
                self.http_port = int(match.group(2))
                self._drainer = threading.Thread(
                    target=self._drain, args=(self.process,), daemon=True
                )
                self._drainer.start()
                self.starts += 1
                return
        raise RuntimeError(f"server {self.name} did not start:\n" + "".join(self.log[-50:]))

    def _drain(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            self.log.append(line)

    def stop(self, timeout: float = 15.0) -> int:
        process, self.process = self.process, None
        if process is None:
            return 0
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            return process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            return process.wait(timeout)
        finally:
            if self._drainer is not None:
                self._drainer.join(timeout)
            if process.stdout is not None:
                process.stdout.close()

    def metric(self, name: str) -> float:
        with urllib.request.urlopen(
            f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5
        ) as response:
            text = response.read().decode()
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith(name) and line[len(name)] in " {"
        )

    def sample(self) -> dict[str, float]:
        assert self.process is not None
        proc = psutil.Process(self.process.pid)
        return {
            "t": time.monotonic(),
            "rss_mib": proc.memory_info().rss / 2**20,
            "fds": float(proc.num_fds()),
            "threads": float(proc.num_threads()),
            "tasks": float(self.tasks_file.read_text() or "nan"),
            "in_flight": self.metric("tokenwire_engine_requests_in_flight"),
        }


@dataclass
class Tally:
    ok: Counter[str] = field(default_factory=Counter)
    expected: Counter[str] = field(default_factory=Counter)  # "kind: outcome"
    unexpected: list[str] = field(default_factory=list)

    def unexpected_one(self, kind: str, what: object) -> None:
        if len(self.unexpected) < 50:
            self.unexpected.append(f"{kind}: {what!r}"[:300])
        else:
            self.unexpected[-1] = f"... and more; last {kind}: {what!r}"[:300]


class Expected(Exception):
    """An outcome the operation allows, named for the tally."""


class HttpStatus(AssertionError):
    """An HTTP answer other than the one the operation expects."""

    def __init__(self, status: int, body: object) -> None:
        super().__init__(f"{status} {body!r}"[:300])
        self.status = status


class Traffic:
    def __init__(self, a: Server, b: Server, tally: Tally) -> None:
        self.a, self.b, self.tally = a, b, tally
        self.b_down = False  # set while server B restarts: its errors are expected
        self.b_up_at = 0.0
        self._ids = 0

    def restarting(self, began: float) -> bool:
        """Whether a call begun at ``began`` may have met server B down or going down
        (or a channel still backing off from it: up to RECONNECT_GRACE_S after)."""
        return self.b_down or began < self.b_up_at + RECONNECT_GRACE_S or self.b_up_at > began

    def _id(self) -> str:
        self._ids += 1
        return f"soak-{self._ids}"

    # --- gRPC ---------------------------------------------------------------------

    async def grpc_stream(self, stub: pb_grpc.GenerationServiceAsyncStub) -> None:
        req = pb.GenerateRequest(
            prompt=f"soak {random.randrange(1000)}",
            sampling=pb.SamplingParams(seed=random.randrange(1 << 30)),
            stopping=pb.StoppingOptions(max_tokens=random.randint(1, 64)),
        )
        text = "".join([m.text async for m in stub.Generate(req, timeout=30)])
        whole = await stub.Complete(req, timeout=30)
        if text != whole.choices[0].text:
            raise AssertionError(f"stream {text!r} != complete {whole.choices[0].text!r}")

    async def grpc_cancel(self, stub: pb_grpc.GenerationServiceAsyncStub) -> None:
        call = stub.Generate(pb.GenerateRequest(prompt="c", stopping=LONG), timeout=30)
        for _ in range(random.randint(1, 5)):
            await call.read()
        call.cancel()
        raise Expected("CANCELLED")

    async def grpc_deadline(self, stub: pb_grpc.GenerationServiceAsyncStub) -> None:
        async for _ in stub.Generate(pb.GenerateRequest(prompt="d", stopping=LONG), timeout=0.2):
            pass

    async def grpc_bad(self, stub: pb_grpc.GenerationServiceAsyncStub) -> None:
        await stub.Complete(
            pb.GenerateRequest(prompt="b", stopping=pb.StoppingOptions(max_tokens=0)), timeout=10
        )

    async def grpc_dup(self, stub: pb_grpc.GenerationServiceAsyncStub) -> None:
        rid = self._id()
        first = stub.Generate(pb.GenerateRequest(request_id=rid, prompt="a", stopping=LONG))
        try:
            await first.read()
            await stub.Complete(pb.GenerateRequest(request_id=rid, prompt="b"), timeout=10)
        finally:
            first.cancel()

    async def grpc_stopped(self, stub: pb_grpc.GenerationServiceAsyncStub) -> None:
        call = stub.Generate(pb.GenerateRequest(prompt="s", stopping=LONG), timeout=30)
        await call.read()
        await asyncio.sleep(3)  # a reader that stopped reading
        call.cancel()
        raise Expected("CANCELLED")

    # --- HTTP ---------------------------------------------------------------------

    async def http_stream(self, http: aiohttp.ClientSession, base: str) -> None:
        body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 32, "stream": True}
        async with http.post(base + "/v1/chat/completions", json=body) as response:
            raw = await response.read()
            if response.status != 200 or not raw.rstrip().endswith(b"data: [DONE]"):
                raise HttpStatus(response.status, raw[-200:])

    async def http_whole(self, http: aiohttp.ClientSession, base: str) -> None:
        body = {"prompt": "hi", "max_tokens": 16}
        async with http.post(base + "/v1/completions", json=body) as response:
            answer = await response.json()
            if response.status != 200 or not answer["choices"]:
                raise HttpStatus(response.status, answer)

    async def http_bad(self, http: aiohttp.ClientSession, base: str) -> None:
        async with http.post(
            base + "/v1/chat/completions",
            data=b'{"messages": [',
            headers={"content-type": "application/json"},
        ) as response:
            if response.status != 400:
                raise HttpStatus(response.status, await response.read())
            raise Expected("400")

    async def http_deadline(self, http: aiohttp.ClientSession, base: str) -> None:
        body = {"prompt": "d", "max_tokens": 5000, "ignore_eos": True, "stream": True}
        async with http.post(
            base + "/v1/completions", json=body, headers={"X-Request-Timeout": "0.2"}
        ) as response:
            raw = await response.read()
        if b"error" not in raw:
            raise AssertionError(raw[-200:])
        raise Expected("deadline error event")

    async def http_drop(self, http: aiohttp.ClientSession, base: str) -> None:
        body = {"prompt": "x", "max_tokens": 5000, "ignore_eos": True, "stream": True}
        async with http.post(base + "/v1/completions", json=body) as response:
            await response.content.readline()
            response.close()  # drops the connection mid-stream
        raise Expected("dropped")


GRPC_KINDS = ("grpc_stream",) * 4 + (
    "grpc_cancel",
    "grpc_deadline",
    "grpc_bad",
    "grpc_dup",
    "grpc_stopped",
)
HTTP_KINDS = ("http_stream",) * 3 + ("http_whole", "http_bad", "http_deadline", "http_drop")
GRPC_EXPECTED = {
    "grpc_cancel": grpc.StatusCode.CANCELLED,
    "grpc_deadline": grpc.StatusCode.DEADLINE_EXCEEDED,
    "grpc_bad": grpc.StatusCode.INVALID_ARGUMENT,
    "grpc_dup": grpc.StatusCode.ALREADY_EXISTS,
    "grpc_stopped": grpc.StatusCode.CANCELLED,
}


async def _client(traffic: Traffic, server: Server, until: float, restarting: bool) -> None:
    tally = traffic.tally
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        channel = grpc.aio.insecure_channel(
            f"127.0.0.1:{server.port}", options=B_CHANNEL if restarting else ()
        )
        stub = pb_grpc.GenerationServiceStub(channel)
        try:
            while time.monotonic() < until:
                use_grpc = random.random() < 0.6
                kind = random.choice(GRPC_KINDS if use_grpc else HTTP_KINDS)
                label = f"restart_{kind}" if restarting else kind
                method = getattr(traffic, kind)
                args = (stub,) if use_grpc else (http, f"http://127.0.0.1:{server.http_port}")
                began = time.monotonic()
                try:
                    await method(*args)
                    tally.ok[label] += 1
                except Expected as outcome:
                    tally.expected[f"{label}: {outcome}"] += 1
                except grpc.aio.AioRpcError as error:
                    code = error.code()
                    if GRPC_EXPECTED.get(kind) == code:
                        tally.expected[f"{label}: {code.name}"] += 1
                    elif restarting and traffic.restarting(began) and code in RESTART_CODES:
                        tally.expected[f"{label}: {code.name} (restart)"] += 1
                    else:
                        tally.unexpected_one(label, f"{code.name} {error.details()}")
                except (TimeoutError, aiohttp.ClientError, ConnectionError) as error:
                    if restarting and traffic.restarting(began):
                        tally.expected[f"{label}: {type(error).__name__} (restart)"] += 1
                    else:
                        tally.unexpected_one(label, error)
                except HttpStatus as error:
                    if restarting and error.status == 503 and traffic.restarting(began):
                        tally.expected[f"{label}: 503 shutting down (restart)"] += 1
                    else:
                        tally.unexpected_one(label, error)
                except Exception as error:  # every other failure is counted
                    tally.unexpected_one(label, error)
                if restarting and traffic.b_down:
                    await asyncio.sleep(0.05)  # no busy loop against a closed port
        finally:
            await channel.close()


async def _restarts(traffic: Traffic, until: float, every: float) -> int:
    restarts = 0
    while time.monotonic() + every < until:
        await asyncio.sleep(every)
        traffic.b_down = True
        await asyncio.to_thread(traffic.b.stop)
        await asyncio.to_thread(traffic.b.start)
        await asyncio.sleep(0.5)  # calls begun while it was down have ended by now
        traffic.b_down = False
        traffic.b_up_at = time.monotonic()
        restarts += 1
    return restarts


async def _sampler(
    server: Server, until: float, every: float, samples: list[dict[str, float]]
) -> None:
    while time.monotonic() < until:
        samples.append(await asyncio.to_thread(server.sample))
        await asyncio.sleep(every)


def growth(samples: list[dict[str, float]], started: float, seconds: float) -> dict[str, Any]:
    """Median of the last third minus median of the first third, after warm-up."""
    after = [s for s in samples if s["t"] >= started + WARMUP_SHARE * seconds]
    third = max(1, len(after) // 3)
    out: dict[str, Any] = {}
    for key in BOUNDS:
        first = statistics.median(s[key] for s in after[:third])
        last = statistics.median(s[key] for s in after[-third:])
        out[key] = {
            "first": round(first, 1),
            "last": round(last, 1),
            "growth": round(last - first, 1),
            "max": round(max(s[key] for s in after), 1),
            "bound": BOUNDS[key],
        }
    return out


async def soak(seconds: float) -> dict[str, Any]:
    """Run the soak for ``seconds``; the summary's ``failures`` is empty when it held."""
    # A short run (make test's) still restarts server B and samples a few times.
    restart_every = min(RESTART_EVERY_S, seconds / 3)
    sample_every = min(SAMPLE_EVERY_S, seconds / 10)
    workdir = Path(tempfile.mkdtemp(prefix="tokenwire-soak-"))
    common = ["--sim-ttft-ms", "5", "--sim-itl-ms", "2", "--shutdown-grace-s", "1"]
    a = Server("a", [*common, "--stall-timeout-s", "2"], workdir)
    b = Server("b", common, workdir)
    tally = Tally()
    samples: list[dict[str, float]] = []
    a.start()
    b.start()
    try:
        traffic = Traffic(a, b, tally)
        started = time.monotonic()
        until = started + seconds
        clients = [_client(traffic, a, until, False) for _ in range(CONCURRENCY)]
        clients += [_client(traffic, b, until, True) for _ in range(2)]
        results = await asyncio.gather(
            _sampler(a, until, sample_every, samples),
            _restarts(traffic, until, restart_every),
            *clients,
        )
        restarts = results[1]
        # Idle: everything the traffic started has ended (bounded).
        idle_deadline = time.monotonic() + 10
        while a.metric("tokenwire_engine_requests_in_flight") or b.metric(
            "tokenwire_engine_requests_in_flight"
        ):
            if time.monotonic() > idle_deadline:
                tally.unexpected_one("idle", "requests still in flight 10 s after the traffic")
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(1)  # the task counter's next write
        idle = a.sample()
        aborts = {
            r: a.metric(f'tokenwire_aborts_total{{reason="{r}"}}')
            for r in ("cancelled", "deadline", "stalled", "shutdown", "error")
        }
    finally:
        codes = {"a": a.stop(), "b": b.stop()}
    tracebacks = [
        f"{s.name}: {line.strip()}"
        for s in (a, b)
        for line in s.log
        if "Traceback" in line or " ERROR " in line or "Exception" in line
    ]
    grew = growth(samples, started, seconds)
    first = samples[0] if samples else idle
    summary: dict[str, Any] = {
        "seconds": seconds,
        "calls_ok": sum(tally.ok.values()),
        "calls_expected_error": sum(tally.expected.values()),
        "ok": dict(sorted(tally.ok.items())),
        "expected": dict(sorted(tally.expected.items())),
        "unexpected": tally.unexpected,
        "server_b_restarts": restarts,
        "exit_codes": codes,
        "aborts_a": aborts,
        "samples": len(samples),
        "growth_after_warmup": grew,
        "idle_after": {k: round(v, 1) for k, v in idle.items() if k != "t"},
        "first_sample": {k: round(v, 1) for k, v in first.items() if k != "t"},
        "tracebacks": tracebacks[:20],
    }
    failures = [
        f"{k} grew {v['growth']} > {v['bound']}"
        for k, v in grew.items()
        if v["growth"] > v["bound"]
    ]
    if idle["in_flight"]:
        failures.append(f"{idle['in_flight']} requests in flight when idle")
    if tally.unexpected:
        failures.append(f"{len(tally.unexpected)} unexpected errors")
    if tracebacks:
        failures.append("tracebacks or errors in a server log")
    if any(codes.values()):
        failures.append(f"exit codes {codes}")
    summary["failures"] = failures
    shutil.rmtree(workdir, ignore_errors=True)
    return summary


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.soak", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--seconds", type=float, default=float(os.environ.get("SOAK_SECONDS", "600"))
    )
    parser.add_argument("--out", type=Path, default=None, help="write the summary here (JSON)")
    args = parser.parse_args()
    summary = asyncio.run(soak(args.seconds))
    text = json.dumps(summary, indent=2)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")
    return 1 if summary["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
