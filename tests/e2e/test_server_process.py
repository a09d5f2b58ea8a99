"""The server as operators run it: console script, flags and environment, metrics, signals."""

from __future__ import annotations

import signal
import subprocess
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tokenwire.v1 import generation_pb2 as pb
from tokenwire.v1 import generation_pb2_grpc as pb_grpc

from ..helpers import BIN, metric_value, scrape, start_server_process, wait_for

CONTRACT_METRICS = (
    "tokenwire_streams_active",
    "tokenwire_engine_requests_in_flight",
    "tokenwire_requests_total",
    "tokenwire_aborts_total",
    "tokenwire_queue_depth",
    "tokenwire_tokens_total",
    "gen_ai_server_time_to_first_token_seconds",
    "gen_ai_server_time_per_output_token_seconds",
    "gen_ai_server_request_duration_seconds",
)


def test_every_contract_metric_is_exported(sim_server):
    stub = pb_grpc.GenerationServiceStub(grpc.insecure_channel(sim_server.target))
    stub.Complete(pb.GenerateRequest(prompt="x", stopping=pb.StoppingOptions(max_tokens=3)))
    text = scrape(sim_server.metrics_url)
    names = {
        line.split("{")[0].split(" ")[0] for line in text.splitlines() if not line.startswith("#")
    }
    for name in CONTRACT_METRICS:
        assert any(n == name or n.startswith(name + "_") for n in names), name


def test_environment_and_flags_configure_the_server():
    server = start_server_process(
        ["--sim-itl-ms", "0"], env={"TOKENWIRE_MODEL": "from-env", "TOKENWIRE_MAX_N": "2"}
    )
    try:
        stub = pb_grpc.GenerationServiceStub(grpc.insecure_channel(server.target))
        info = stub.GetModelInfo(pb.GetModelInfoRequest())
        assert info.model == "from-env" and info.limits.max_n == 2
        assert any(f"127.0.0.1:{server.port}" in line for line in server.log)
    finally:
        assert server.stop() == 0


def test_bad_settings_fail_fast_with_a_message():
    out = subprocess.run(
        [str(BIN / "tokenwire-server"), "--engine", "bogus"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 2
    assert "engine" in out.stderr and "Traceback" not in out.stderr


def test_unavailable_engine_fails_fast():
    out = subprocess.run(
        [
            str(BIN / "tokenwire-server"),
            "--engine",
            "tensorrt-llm",
            "--port",
            "0",
            "--metrics-port",
            "0",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 1
    assert "tensorrt-llm" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_drains_then_aborts_live_streams_and_exits_zero(sig):
    server = start_server_process(["--sim-itl-ms", "20", "--shutdown-grace-s", "1"])
    channel = grpc.insecure_channel(server.target)
    stub = pb_grpc.GenerationServiceStub(channel)
    stopping = pb.StoppingOptions(max_tokens=20, ignore_eos=True)  # ~0.4 s: ends within grace
    short = stub.Generate(pb.GenerateRequest(prompt="x", stopping=stopping))
    long = stub.Generate(
        pb.GenerateRequest(
            prompt="x", stopping=pb.StoppingOptions(max_tokens=5000, ignore_eos=True)
        )
    )
    try:
        assert next(short).token_ids and next(long).token_ids
        wait_for(
            lambda: metric_value(server.metrics_url, "tokenwire_engine_requests_in_flight") == 2
        )
        server.process.send_signal(sig)
        health: Any = health_pb2_grpc.HealthStub(grpc.insecure_channel(server.target))

        def not_serving() -> bool:
            try:
                reply = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
            except grpc.RpcError as error:
                # Refused: the server is going away. A slow answer proves nothing.
                return bool(error.code() == grpc.StatusCode.UNAVAILABLE)
            return bool(reply.status == health_pb2.HealthCheckResponse.NOT_SERVING)

        wait_for(not_serving, timeout=5)
        # New calls are refused while live ones drain.
        with pytest.raises(grpc.RpcError) as refused:
            stub.Complete(pb.GenerateRequest(prompt="x"), timeout=5)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        # The short stream finishes normally within the grace...
        rest = list(short)
        assert rest[-1].finish_reason == pb.FINISH_REASON_LENGTH
        # ...the long one is cut at the end of it, and its engine request aborted.
        with pytest.raises(grpc.RpcError) as info:
            for _ in long:
                pass
        assert info.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
        assert server.process.wait(15) == 0
        assert any("aborted the engine request: shutdown" in line for line in server.log)
    finally:
        channel.close()
        server.stop()
