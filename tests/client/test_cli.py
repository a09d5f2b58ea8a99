"""The ``tokenwire`` console script, run as a real subprocess against a real server."""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys

import pytest

from tests.helpers import BIN, ServerProcess, free_port, metric_value, wait_for
from tokenwire.client import Client
from tokenwire.client.cli import main

TOKENWIRE = str(BIN / "tokenwire")


def tokenwire(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [TOKENWIRE, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


def test_generate_prints_the_text_and_exits_0(sim_server: ServerProcess) -> None:
    args = ["--max-tokens", "24", "--seed", "8", "--ignore-eos"]
    done = tokenwire("generate", "Tell me about rivers", "--target", sim_server.target, *args)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    with Client(sim_server.target, timeout=30) as client:
        expected = client.complete("Tell me about rivers", max_tokens=24, seed=8, ignore_eos=True)
    assert done.stdout == expected.text + "\n"


def test_generate_reads_the_target_from_the_environment(sim_server: ServerProcess) -> None:
    env = {"TOKENWIRE_TARGET": sim_server.target}
    done = tokenwire("generate", "Hi", "--max-tokens", "3", "--seed", "4", "--ignore-eos", env=env)
    assert done.returncode == 0, done.stderr
    with Client(sim_server.target, timeout=30) as client:
        expected = client.complete("Hi", max_tokens=3, seed=4, ignore_eos=True)
    assert done.stdout == expected.text + "\n"


def test_generate_json_prints_one_object_per_chunk(sim_server: ServerProcess) -> None:
    done = tokenwire(
        "generate", "Hi", "--target", sim_server.target, "--max-tokens", "6", "--ignore-eos",
        "--n", "2", "--json",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    chunks = [json.loads(line) for line in done.stdout.splitlines()]
    assert {chunk["index"] for chunk in chunks} == {0, 1}
    assert sum(len(chunk["token_ids"]) for chunk in chunks) == 12
    assert chunks[-1]["usage"]["completion_tokens"] == 12


def test_generate_stats_go_to_stderr(sim_server: ServerProcess) -> None:
    done = tokenwire(
        "generate", "Hi", "--target", sim_server.target, "--max-tokens", "5", "--ignore-eos",
        "--stats",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "tokens=5 " in done.stderr and "tokens_per_second=" in done.stderr
    assert "total_ms=" in done.stderr and "tokens=" not in done.stdout


def test_chat_streams_the_reply(sim_server: ServerProcess) -> None:
    done = tokenwire(
        "chat", "What is a river?", "--system", "Be brief.", "--target", sim_server.target,
        "--max-tokens", "8", "--seed", "1",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    with Client(sim_server.target, timeout=30) as client:
        messages = [("system", "Be brief."), ("user", "What is a river?")]
        expected = client.complete(messages=messages, max_tokens=8, seed=1)
    assert done.stdout == expected.text + "\n"


def test_info_describes_the_server(sim_server: ServerProcess) -> None:
    done = tokenwire("info", "--target", sim_server.target)
    assert done.returncode == 0, done.stderr
    assert "model:" in done.stdout and "tokenwire-sim" in done.stdout
    assert "limits.max_tokens:" in done.stdout

    as_json = json.loads(tokenwire("info", "--target", sim_server.target, "--json").stdout)
    assert as_json["engine"] == "simulated" and as_json["limits"]["max_n"] > 0


def test_tokenize_prints_ids_and_tokens(sim_server: ServerProcess) -> None:
    done = tokenwire("tokenize", "Hello world", "--target", sim_server.target, "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert len(result["token_ids"]) == len(result["tokens"]) > 0

    plain = tokenwire("tokenize", "Hello world", "--target", sim_server.target)
    assert len(plain.stdout.splitlines()) == len(result["token_ids"])
    bare = tokenwire(
        "tokenize", "Hello world", "--no-special-tokens", "--target", sim_server.target
    )
    assert len(bare.stdout.splitlines()) < len(result["token_ids"])


def test_invalid_request_prints_one_line_and_exits_2(sim_server: ServerProcess) -> None:
    done = tokenwire("generate", "Hi", "--target", sim_server.target, "--max-tokens", "0")
    assert done.returncode == 2
    assert done.stderr.startswith("error: INVALID_ARGUMENT: ")
    assert "stopping.max_tokens" in done.stderr
    assert len(done.stderr.splitlines()) == 1 and done.stdout == ""


def test_unreachable_server_exits_1() -> None:
    done = tokenwire("info", "--target", f"127.0.0.1:{free_port()}", "--deadline", "5")
    assert done.returncode == 1
    assert done.stderr.startswith("error: UNAVAILABLE: ")
    assert "Traceback" not in done.stderr


def test_bad_usage_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["generate"], ["generate", "Hi", "--max-tokens", "-1"], ["nope"]):
        with pytest.raises(SystemExit) as caught:
            main(argv)
        assert caught.value.code == 2
    assert "usage: tokenwire" in capsys.readouterr().err


def test_ctrl_c_cancels_the_call_and_exits_130(slow_sim_server: ServerProcess) -> None:
    metrics = slow_sim_server.metrics_url
    before = metric_value(metrics, "tokenwire_aborts_total", {"reason": "cancelled"})
    story = ["generate", "Tell me a long story", "--max-tokens", "1000", "--ignore-eos"]
    process = subprocess.Popen(
        [TOKENWIRE, *story, "--target", slow_sim_server.target],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        first = read_some(process.stdout.fileno(), within=20)
        assert first, "no text arrived before the deadline"
        assert metric_value(metrics, "tokenwire_engine_requests_in_flight") == 1
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 130, stderr
    assert b"Traceback" not in stderr and stderr == b""
    assert (first + stdout).endswith(b"\n")
    wait_for(lambda: metric_value(metrics, "tokenwire_engine_requests_in_flight") == 0)
    wait_for(
        lambda: (
            metric_value(metrics, "tokenwire_aborts_total", {"reason": "cancelled"}) == before + 1
        )
    )


def read_some(fd: int, within: float) -> bytes:
    """The first bytes that arrive on `fd`, waiting at most `within` seconds."""
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        return os.read(fd, 4096) if selector.select(within) else b""


def test_python_dash_m_runs_the_same_command(sim_server: ServerProcess) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "tokenwire.client", "info", "--target", sim_server.target],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "engine:" in done.stdout
