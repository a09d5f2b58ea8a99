"""The server as operators run it: console script, flags and environment, metrics, signals."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tokenwire.v1 import generation_pb2 as pb
from tokenwire.v1 import generation_pb2_grpc as pb_grpc

from ..helpers import BIN, free_port, metric_value, scrape, start_server_process, wait_for

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


def run_server(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``tokenwire-server ARGS``, for a start that should end by itself at once."""
    return subprocess.run(
        [str(BIN / "tokenwire-server"), *args],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, **(env or {})},
    )


def assert_one_clean_line(out: subprocess.CompletedProcess[str], line: str) -> None:
    assert out.returncode == 2, out.stderr
    assert out.stderr == f"tokenwire-server: {line}\n"  # no traceback, no "Exception ignored"
    assert out.stdout == ""


def test_bad_settings_fail_fast_with_a_message():
    out = run_server("--engine", "bogus", "--port", "70000")
    assert out.returncode == 2
    assert out.stderr.splitlines() == [
        "tokenwire-server: --engine (TOKENWIRE_ENGINE): must be one of simulated, "
        "transformers, tensorrt-llm, got 'bogus'",
        "tokenwire-server: --port (TOKENWIRE_PORT): must be between 0 and 65535, got 70000",
    ]


def test_help_and_version():
    out = run_server("--help")
    assert out.returncode == 0 and "--metrics-port PORT" in out.stdout and out.stderr == ""
    out = run_server("--version")
    assert out.returncode == 0 and out.stdout.startswith("tokenwire-server ")


@pytest.fixture
def held_port() -> Iterator[int]:
    """A loopback port another program listens on."""
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        yield int(other.getsockname()[1])


def test_a_second_server_on_a_taken_port_fails_clearly(sim_server):
    out = run_server("--port", str(sim_server.port), "--metrics-port", "0")
    port = sim_server.port
    assert_one_clean_line(out, f"--port {port}: address already in use (127.0.0.1:{port})")
    stub = pb_grpc.GenerationServiceStub(grpc.insecure_channel(sim_server.target))
    reply = stub.Complete(pb.GenerateRequest(prompt="x", stopping=pb.StoppingOptions(max_tokens=2)))
    assert reply.choices  # the first server still has the port, all of it


@pytest.mark.parametrize("flag", ["--metrics-port", "--health-port"])
def test_a_taken_side_port_names_its_flag(held_port, flag):
    out = run_server("--port", "0", "--metrics-port", "0", flag, str(held_port))
    line = f"{flag} {held_port}: address already in use (127.0.0.1:{held_port})"
    assert_one_clean_line(out, line)


@pytest.mark.parametrize(
    ("args", "env", "line"),
    [
        (
            ("--host", "192.0.2.1"),  # TEST-NET-1: an address of no machine here
            {},
            "--port 0: cannot listen on 192.0.2.1:0: --host 192.0.2.1 is not an address "
            "of this machine",
        ),
        (
            ("--host", "no-such-host.invalid"),
            {},
            "--port 0: cannot resolve --host 'no-such-host.invalid' (",
        ),
        ((), {"TOKENWIRE_HOST": ""}, "--host (TOKENWIRE_HOST): must not be empty"),
    ],
)
def test_a_host_that_cannot_be_listened_on_is_one_line(args, env, line):
    out = run_server("--port", "0", "--metrics-port", "0", *args, env=env)
    assert out.returncode == 2, out.stderr
    assert out.stderr.startswith(f"tokenwire-server: {line}")
    assert len(out.stderr.splitlines()) == 1


def test_ports_are_checked_before_the_model_loads(held_port):
    # A model that cannot load: had the engine started first, this would be its error.
    model = ("--engine", "transformers", "--model", "/nonexistent/model")
    out = run_server(*model, "--port", "0", "--metrics-port", str(held_port))
    line = f"--metrics-port {held_port}: address already in use (127.0.0.1:{held_port})"
    assert_one_clean_line(out, line)


def test_our_own_listeners_may_not_share_a_port():
    port = str(free_port())
    out = run_server("--port", port, "--metrics-port", port)
    assert_one_clean_line(out, f"--metrics-port {port}: --port uses this port already")


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


def test_a_second_ctrl_c_cuts_the_grace_short():
    server = start_server_process(["--sim-itl-ms", "20", "--shutdown-grace-s", "120"])
    channel = grpc.insecure_channel(server.target)
    stub = pb_grpc.GenerationServiceStub(channel)
    live = stub.Generate(
        pb.GenerateRequest(
            prompt="x", stopping=pb.StoppingOptions(max_tokens=8000, ignore_eos=True)
        )
    )
    try:
        assert next(live).token_ids
        server.process.send_signal(signal.SIGINT)
        wait_for(lambda: any("shutting down" in line for line in server.log), timeout=10)
        assert next(live).token_ids  # draining: the live stream goes on
        server.process.send_signal(signal.SIGINT)
        assert server.process.wait(15) == 0  # long before the 120 s grace
        with pytest.raises(grpc.RpcError) as info:
            for _ in live:
                pass
        assert info.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
        server.stop()  # collects the rest of the log
        assert any("second SIGINT: aborting live streams now" in line for line in server.log)
        assert any("aborted the engine request: shutdown" in line for line in server.log)
    finally:
        channel.close()
        server.stop()
