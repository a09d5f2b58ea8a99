"""The Node.js client (clients/node, @grpc/grpc-js) against a real server.

Another language's stack streams the same text as Python's ``Complete``, and
its deadline and mid-stream cancel free the engine request at once.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
from pathlib import Path

import grpc
import pytest
import trustme

from tokenwire.v1 import generation_pb2 as pb
from tokenwire.v1 import generation_pb2_grpc as pb_grpc

from ..helpers import ServerProcess, metric_value, start_server_process, wait_for

CLIENT = Path(__file__).resolve().parents[2] / "clients" / "node"
NODE = shutil.which("node")
pytestmark = [
    pytest.mark.skipif(NODE is None, reason="node is not installed"),
    pytest.mark.skipif(
        not (CLIENT / "node_modules" / "@grpc" / "grpc-js").is_dir(),
        reason="clients/node has no node_modules: run `make node-check`",
    ),
]


def node_generate(server: ServerProcess, *args: str) -> subprocess.Popen[str]:
    assert NODE is not None
    return subprocess.Popen(
        [NODE, str(CLIENT / "generate.js"), "--target", server.target, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(process: subprocess.Popen[str], timeout: float = 20) -> tuple[int, str, str]:
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
        raise AssertionError(f"the node client did not exit within {timeout}s: {err}") from None
    return process.returncode, out, err


def aborts(server: ServerProcess, reason: str) -> float:
    return metric_value(server.metrics_url, "tokenwire_aborts_total", {"reason": reason})


def in_flight(server: ServerProcess) -> float:
    return metric_value(server.metrics_url, "tokenwire_engine_requests_in_flight")


def test_streamed_text_equals_complete(sim_server):
    prompt, seed, max_tokens = "Tell me about rivers, in French: café, élan", 11, 40
    code, out, err = finish(
        node_generate(sim_server, prompt, "--seed", str(seed), "--max-tokens", str(max_tokens))
    )
    assert code == 0, err
    with grpc.insecure_channel(sim_server.target) as channel:
        reply = pb_grpc.GenerationServiceStub(channel).Complete(
            pb.GenerateRequest(
                prompt=prompt,
                sampling=pb.SamplingParams(seed=seed),
                stopping=pb.StoppingOptions(max_tokens=max_tokens),
            ),
            timeout=10,
        )
    assert reply.choices[0].text
    assert out == reply.choices[0].text + "\n"
    finish_reason = pb.FinishReason.Name(reply.choices[0].finish_reason)
    assert f"[finished: {finish_reason}; {reply.usage.completion_tokens} tokens]" in err


def test_cancel_mid_stream_frees_the_engine_request(slow_sim_server):
    before = aborts(slow_sim_server, "cancelled")
    code, out, err = finish(
        node_generate(slow_sim_server, "go on", "--max-tokens", "5000", "--ignore-eos",
                      "--cancel-after", "3")
    )  # fmt: skip
    assert code == 0, err
    assert "[cancelled after 3 messages]" in err
    assert out.strip()
    wait_for(lambda: in_flight(slow_sim_server) == 0, timeout=5)
    wait_for(lambda: aborts(slow_sim_server, "cancelled") == before + 1, timeout=5)


def test_ctrl_c_cancels_the_call(slow_sim_server):
    before = aborts(slow_sim_server, "cancelled")
    process = node_generate(slow_sim_server, "go on", "--max-tokens", "5000", "--ignore-eos")
    try:
        wait_for(lambda: in_flight(slow_sim_server) == 1, timeout=10)
    except AssertionError:
        process.kill()
        raise
    process.send_signal(signal.SIGINT)
    code, _, err = finish(process)
    assert code == 0, err
    assert "[cancelled after" in err
    wait_for(lambda: in_flight(slow_sim_server) == 0, timeout=5)
    wait_for(lambda: aborts(slow_sim_server, "cancelled") == before + 1, timeout=5)


def test_deadline_ends_the_stream_and_the_engine_request(slow_sim_server):
    before = aborts(slow_sim_server, "deadline")
    code, _, err = finish(
        node_generate(slow_sim_server, "go on", "--max-tokens", "5000", "--ignore-eos",
                      "--deadline", "0.5")
    )  # fmt: skip
    assert code == 4, err
    assert "[DEADLINE_EXCEEDED" in err
    wait_for(lambda: in_flight(slow_sim_server) == 0, timeout=5)
    wait_for(lambda: aborts(slow_sim_server, "deadline") == before + 1, timeout=5)


def test_mutual_tls_and_api_key(tmp_path):
    ca = trustme.CA()
    server_cert, client_cert = ca.issue_cert("127.0.0.1"), ca.issue_cert("client@example.com")
    files = {
        "ca.pem": ca.cert_pem,
        "server.pem": server_cert.cert_chain_pems[0],
        "server.key": server_cert.private_key_pem,
        "client.pem": client_cert.cert_chain_pems[0],
        "client.key": client_cert.private_key_pem,
    }
    for name, blob in files.items():
        blob.write_to_path(str(tmp_path / name))
    (tmp_path / "keys").write_text("# accepted keys\nsecret-one\n")
    server = start_server_process(
        ["--sim-ttft-ms", "1", "--sim-itl-ms", "1",
         "--tls-cert", str(tmp_path / "server.pem"), "--tls-key", str(tmp_path / "server.key"),
         "--tls-client-ca", str(tmp_path / "ca.pem"), "--api-keys-file", str(tmp_path / "keys")]
    )  # fmt: skip
    tls = ["--ca-file", str(tmp_path / "ca.pem"), "--cert-file", str(tmp_path / "client.pem"),
           "--key-file", str(tmp_path / "client.key")]  # fmt: skip
    try:
        code, out, err = finish(node_generate(server, "hi", "--max-tokens", "4", *tls,
                                              "--api-key", "secret-one"))  # fmt: skip
        assert code == 0, err
        assert out.strip()
        code, _, err = finish(node_generate(server, "hi", *tls, "--api-key", "wrong"))
        assert code == 1
        assert "[UNAUTHENTICATED" in err
    finally:
        server.stop()
