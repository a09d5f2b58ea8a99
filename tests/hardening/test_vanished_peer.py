"""A peer that vanishes: a client in a network namespace of its own, cut off
mid-stream with no FIN and no RST (iptables drops all its packets), is found by the
server's keepalive (gRPC: HTTP/2 PINGs; HTTP: TCP keepalive and TCP_USER_TIMEOUT)
within a bound, and its request aborted (reason cancelled), even while nothing is
being written. And on a lossy, slow link (5% of packets dropped and 50 ms added,
each way: tc netem, or iptables and a delaying relay where the kernel has no netem)
streams still complete and match Complete.

The test creates two namespaces joined by a veth pair (10.251.0.1 the server's,
10.251.0.2 the client's); no traffic leaves them. It needs root (CAP_NET_ADMIN) and
ip and iptables; elsewhere it skips, saying why.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from ..helpers import BIN, ServerProcess, sample

SERVER_IP, CLIENT_IP = "10.251.0.1", "10.251.0.2"
KEEPALIVE_S, KEEPALIVE_TIMEOUT_S = 1.0, 1.0
# From the cut to the abort: a ping or probe after KEEPALIVE_S without reads, then
# KEEPALIVE_TIMEOUT_S unanswered; grpc's timers and the kernel's whole-second
# keepalive clock add up to about a second more. 6 s is generous on a loaded machine
# and still far below what no keepalive gives (the stream would live on until the
# engine ended it: 5,000 tokens, or the 60 s prefill).
DETECT_BOUND_S = 6.0
METRICS_PORT = 9464  # inside the server's namespace, on its own loopback
_BOUND = re.compile(r" on (\S+):(\d+), metrics")
_HTTP = re.compile(r"HTTP on (\S+):(\d+)")


def _run(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=20)


@dataclass
class Namespaces:
    server: str
    client: str

    def exec(self, ns: str, *cmd: str) -> list[str]:
        return ["ip", "netns", "exec", ns, *cmd]

    def client_iptables(self, *rule: str) -> None:
        for chain in ("INPUT", "OUTPUT"):
            done = _run(*self.exec(self.client, "iptables", "-A", chain, *rule))
            assert done.returncode == 0, done.stderr


def _skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces, iptables)"
    for tool in ("ip", "iptables"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (Debian iproute2 / iptables; make system-tools)"
    return None


@pytest.fixture
def namespaces() -> Iterator[Namespaces]:
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    tag = f"{os.getpid() % 100000}"
    ns = Namespaces(f"tws{tag}", f"twc{tag}")
    setup = [
        ("ip", "netns", "add", ns.server),
        ("ip", "netns", "add", ns.client),
        ("ip", "link", "add", f"tva{tag}", "type", "veth", "peer", "name", f"tvb{tag}"),
        ("ip", "link", "set", f"tva{tag}", "netns", ns.server),
        ("ip", "link", "set", f"tvb{tag}", "netns", ns.client),
        (*ns.exec(ns.server, "ip", "addr", "add", f"{SERVER_IP}/30", "dev", f"tva{tag}"),),
        (*ns.exec(ns.client, "ip", "addr", "add", f"{CLIENT_IP}/30", "dev", f"tvb{tag}"),),
        (*ns.exec(ns.server, "ip", "link", "set", f"tva{tag}", "up"),),
        (*ns.exec(ns.client, "ip", "link", "set", f"tvb{tag}", "up"),),
        (*ns.exec(ns.server, "ip", "link", "set", "lo", "up"),),
        (*ns.exec(ns.client, "ip", "link", "set", "lo", "up"),),
    ]
    try:
        for cmd in setup:
            done = _run(*cmd)
            if done.returncode != 0:
                pytest.skip(f"this machine does not allow network namespaces: {done.stderr}")
        yield ns
    finally:
        _run("ip", "netns", "del", ns.client)  # the veth pair goes with them
        _run("ip", "netns", "del", ns.server)


@dataclass
class NsServer:
    ns: Namespaces
    process: ServerProcess

    @property
    def target(self) -> str:
        return f"{SERVER_IP}:{self.process.port}"

    def metric(self, name: str, **labels: str) -> float:
        url = f"http://127.0.0.1:{METRICS_PORT}/metrics"
        done = _run(*self.ns.exec(self.ns.server, "curl", "-sS", "--max-time", "5", url))
        assert done.returncode == 0, done.stderr
        return sample(done.stdout, name, labels)

    def wait_in_flight(self, value: int, within: float) -> float:
        """Seconds until the engine has ``value`` requests in flight (bounded)."""
        start = time.monotonic()
        while self.metric("tokenwire_engine_requests_in_flight") != value:
            assert time.monotonic() - start < within, f"in flight never reached {value}"
            time.sleep(0.05)
        return time.monotonic() - start


def start_ns_server(ns: Namespaces, *flags: str) -> NsServer:
    cmd = ns.exec(
        ns.server,
        str(BIN / "tokenwire-server"),
        *("--host", SERVER_IP, "--port", "0", "--http-port", "0"),
        *("--metrics-host", "127.0.0.1", "--metrics-port", str(METRICS_PORT)),
        *(
            "--keepalive-time-s",
            str(KEEPALIVE_S),
            "--keepalive-timeout-s",
            str(KEEPALIVE_TIMEOUT_S),
        ),
        *flags,
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOKENWIRE_")}
    process = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
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
        if match := _BOUND.search(line):
            port = int(match.group(2))
        if match := _HTTP.search(line):
            return NsServer(
                ns, ServerProcess(process, port, METRICS_PORT, log, int(match.group(2)))
            )
    process.kill()
    process.wait(10)
    raise AssertionError("server did not start:\n" + "".join(log))


@pytest.fixture
def ns_servers(namespaces: Namespaces) -> Iterator[list[NsServer]]:
    started: list[NsServer] = []
    yield started
    for server in started:
        server.process.stop()
        assert "Traceback" not in "".join(server.process.log)


GRPC_CLIENT = """
import sys, grpc
from tokenwire.v1 import generation_pb2 as pb, generation_pb2_grpc as pb_grpc
stub = pb_grpc.GenerationServiceStub(grpc.insecure_channel(sys.argv[1]))
stopping = pb.StoppingOptions(max_tokens=5000, ignore_eos=True)
call = stub.Generate(pb.GenerateRequest(prompt="x", stopping=stopping), wait_for_ready=True)
print("sent", flush=True)
for _ in call:
    print("token", flush=True)
"""

HTTP_CLIENT = """
import json, socket, sys
host, port = sys.argv[1].rsplit(":", 1)
body = json.dumps({"prompt": "x", "max_tokens": 5000, "ignore_eos": True, "stream": True}).encode()
conn = socket.create_connection((host, int(port)), timeout=60)
conn.sendall(b"POST /v1/completions HTTP/1.1\\r\\nHost: x\\r\\nContent-Type: application/json\\r\\n"
             + b"Content-Length: %d\\r\\n\\r\\n" % len(body) + body)
print("sent", flush=True)
while True:
    if not conn.recv(65536):
        break
    print("token", flush=True)
"""


def _client(ns: Namespaces, script: str, target: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        ns.exec(ns.client, sys.executable, "-c", script, target),
        stdout=subprocess.PIPE,
        text=True,
        cwd=os.getcwd(),
    )


@pytest.mark.parametrize("door", ["grpc", "http"])
@pytest.mark.parametrize("phase", ["prefill", "streaming"])
def test_a_vanished_client_is_found_and_its_request_aborted(
    namespaces: Namespaces, ns_servers: list[NsServer], door: str, phase: str
) -> None:
    # prefill: no token for 60 s, nothing written; streaming: a token every 50 ms.
    ttft = "60000" if phase == "prefill" else "5"
    server = start_ns_server(namespaces, "--sim-ttft-ms", ttft, "--sim-itl-ms", "50")
    ns_servers.append(server)
    target = server.target if door == "grpc" else f"{SERVER_IP}:{server.process.http_port}"
    client = _client(namespaces, GRPC_CLIENT if door == "grpc" else HTTP_CLIENT, target)
    assert client.stdout is not None
    try:
        assert client.stdout.readline() == "sent\n"
        server.wait_in_flight(1, within=20)
        if phase == "streaming":
            assert client.stdout.readline() == "token\n"
        # Every packet to and from the client is dropped from now on: no FIN, no RST.
        namespaces.client_iptables("-j", "DROP")
        cut = time.monotonic()
        found = server.wait_in_flight(0, within=DETECT_BOUND_S + 5)
        elapsed = time.monotonic() - cut
    finally:
        client.kill()
        client.wait(10)
        client.stdout.close()
    print(f"\nfigure vanished {door} {phase}: found after {elapsed:.2f}s (poll {found:.2f}s)")
    assert elapsed <= DETECT_BOUND_S
    assert server.metric("tokenwire_aborts_total", reason="cancelled") == 1


COMPLETE_AND_STREAM = """
import sys, grpc
from tokenwire.v1 import generation_pb2 as pb, generation_pb2_grpc as pb_grpc
stub = pb_grpc.GenerationServiceStub(grpc.insecure_channel(sys.argv[1]))
bad = 0
for i in range(int(sys.argv[2])):
    req = pb.GenerateRequest(prompt=f"lossy {i}", sampling=pb.SamplingParams(seed=i),
                             stopping=pb.StoppingOptions(max_tokens=200, ignore_eos=True))
    text = "".join(m.text for m in stub.Generate(req, timeout=60))
    whole = stub.Complete(req, timeout=60).choices[0].text
    bad += text != whole
print(f"done {bad}", flush=True)
"""


# Without netem: a relay in the client's namespace that holds every chunk 50 ms in
# each direction (in order), in front of the lossy veth link.
DELAY_RELAY = """
import asyncio, sys, time
listen, host, port, delay = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), float(sys.argv[4])

async def pipe(reader, writer):
    queue = asyncio.Queue()
    async def feed():
        while data := await reader.read(65536):
            queue.put_nowait((time.monotonic() + delay, data))
        queue.put_nowait((time.monotonic() + delay, b""))
    async def drain():
        while True:
            due, data = await queue.get()
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            if not data:
                writer.close()
                return
            writer.write(data)
            await writer.drain()
    await asyncio.gather(feed(), drain())

async def handle(reader, writer):
    up_reader, up_writer = await asyncio.open_connection(host, port)
    await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer), return_exceptions=True)

async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", listen)
    print("ready", flush=True)
    await server.serve_forever()

asyncio.run(main())
"""
RELAY_PORT = 7777  # on the client namespace's own loopback


def test_streams_complete_and_match_on_a_lossy_slow_link(
    namespaces: Namespaces, ns_servers: list[NsServer]
) -> None:
    # tc netem adds both where the kernel has it. This machine's does not
    # (CONFIG_NET_SCH_NETEM is off): then iptables drops 5% of the packets each
    # way on the veth link and a relay adds the 50 ms each way.
    device = f"tvb{os.getpid() % 100000}"
    netem = _run(
        *[
            *namespaces.exec(namespaces.client, "tc", "qdisc", "add", "dev", device, "root"),
            "netem",
            "delay",
            "50ms",
            "loss",
            "5%",
        ]
    )
    server = start_ns_server(namespaces, "--sim-ttft-ms", "5", "--sim-itl-ms", "1")
    ns_servers.append(server)
    relay = None
    target = server.target
    if netem.returncode != 0:
        namespaces.client_iptables(
            "-m", "statistic", "--mode", "random", "--probability", "0.05", "-j", "DROP"
        )
        relay = subprocess.Popen(
            namespaces.exec(
                namespaces.client,
                *(sys.executable, "-c", DELAY_RELAY, str(RELAY_PORT)),
                *(SERVER_IP, str(server.process.port), "0.05"),
            ),
            stdout=subprocess.PIPE,
            text=True,
        )
        assert relay.stdout is not None
        assert relay.stdout.readline() == "ready\n"
        target = f"127.0.0.1:{RELAY_PORT}"
    try:
        started = time.monotonic()
        done = subprocess.run(
            [
                *namespaces.exec(namespaces.client, sys.executable, "-c", COMPLETE_AND_STREAM),
                target,
                "10",
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
        took = time.monotonic() - started
    finally:
        if relay is not None:
            relay.kill()
            relay.wait(10)
            assert relay.stdout is not None
            relay.stdout.close()
    how = "netem" if relay is None else "iptables 5% loss + 50 ms relay"
    print(
        f"\nfigure lossy slow link ({how}): 10 streams + 10 Completes of 200 tokens in {took:.1f}s"
    )
    assert done.stdout.strip() == "done 0", done.stdout + done.stderr
    assert server.metric("tokenwire_engine_requests_in_flight") == 0
