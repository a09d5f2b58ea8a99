"""The ``tokenwire`` console script, run as a real subprocess against a real server."""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import selectors
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme

from tests.helpers import (
    BIN,
    ServerProcess,
    free_port,
    metric_value,
    start_server_process,
    wait_for,
)
from tokenwire.client import Client
from tokenwire.client.cli import main

TOKENWIRE = str(BIN / "tokenwire")


def tokenwire(
    *args: str, env: dict[str, str] | None = None, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [TOKENWIRE, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
        input=input,
    )


def json_lines(done: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


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
    assert stderr == b""
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


def test_connection_flags_go_before_or_after_the_command(sim_server: ServerProcess) -> None:
    before = tokenwire("--target", sim_server.target, "--json", "info")
    assert before.returncode == 0, before.stderr
    assert json.loads(before.stdout)["engine"] == "simulated"
    # Given twice, the one after the command's name wins.
    unreachable = f"127.0.0.1:{free_port()}"
    both = tokenwire("--target", unreachable, "info", "--target", sim_server.target)
    assert both.returncode == 0, both.stderr
    assert "engine:" in both.stdout


def test_version_comes_from_the_package_metadata() -> None:
    done = tokenwire("--version")
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"tokenwire {importlib.metadata.version('tokenwire')}\n"


_SOME_FLAGS = ["--target", "--tls-client-cert", "--tls-client-key", "--max-tokens", "--min-tokens"]
_SOME_FLAGS += ["--stop", "--stop-token-id", "--logprobs", "--top-logprobs", "--stats"]
_STRUCTURED = ["--json-schema", "--json-object", "--regex", "--grammar", "--choice"]
_TOOLS = ["--tools", "--tool-choice", "--no-parallel-tool-calls"]


@pytest.mark.parametrize(
    ("command", "some"),
    [("generate", _SOME_FLAGS + _STRUCTURED), ("chat", _STRUCTURED + _TOOLS)],
)
def test_every_flag_shows_its_default(
    capsys: pytest.CaptureFixture[str], command: str, some: list[str]
) -> None:
    with pytest.raises(SystemExit) as caught:
        main([command, "--help"], environ={})
    assert caught.value.code == 0
    # An entry starts with its flag, indented by two, and goes on in deeper lines.
    entries: dict[str, str] = {}
    flag = None
    for line in capsys.readouterr().out.splitlines():
        start = re.match(r"  (--[\w-]+)", line)
        if start:
            flag = start.group(1)
            entries[flag] = line
        elif flag is not None and line.startswith("   "):
            entries[flag] += " " + line.strip()
        else:
            flag = None
    assert set(some) <= set(entries)
    assert [entry for entry in entries.values() if "(default: " not in entry] == []


def test_generate_dash_reads_the_prompt_from_stdin(sim_server: ServerProcess) -> None:
    prompt = "Tell me about rivers"
    # No seed: the simulator's text is then a function of the prompt it saw.
    done = tokenwire(
        "generate", "-", "--target", sim_server.target, "--max-tokens", "8", "--stats",
        input=prompt + "\n",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    with Client(sim_server.target, timeout=30) as client:
        expected = client.complete(prompt, max_tokens=8)
        prompt_tokens = len(client.tokenize(prompt))
    assert done.stdout == expected.text + "\n"
    # The newline that ended the input is not part of the prompt.
    assert f" prompt_tokens={prompt_tokens} " in done.stderr


def test_stop_token_ids_end_the_sequence_at_the_first_of_them(sim_server: ServerProcess) -> None:
    options = ["--max-tokens", "30", "--ignore-eos", "--seed", "5"]
    with Client(sim_server.target, timeout=30) as client:
        ids = client.complete("Go on", max_tokens=30, ignore_eos=True, seed=5).choices[0].token_ids
    # Two ids that first appear at positions `first` < `later`.
    first, later = [i for i in range(3, len(ids)) if ids[i] not in ids[:i]][:2]
    chunks = json_lines(
        tokenwire(
            "generate", "Go on", "--target", sim_server.target, *options, "--json",
            "--stop-token-id", str(ids[first]), "--stop-token-id", str(ids[later]),
        )
    )  # fmt: skip
    assert [token for chunk in chunks for token in chunk["token_ids"]] == list(ids[: first + 1])
    assert chunks[-1]["finish_reason"] == "stop_sequence"
    assert chunks[-1]["stop_match"] == {"text": None, "token_id": ids[first]}


def test_min_tokens_hold_off_a_stop(sim_server: ServerProcess) -> None:
    with Client(sim_server.target, timeout=30) as client:
        full = client.complete("Go on", max_tokens=30, ignore_eos=True, seed=5).text
    word = full.split()[3]  # a stop that fires a few tokens in
    story = ["generate", "Go on", "--target", sim_server.target, "--json", "--stop", word]
    story += ["--max-tokens", "30", "--ignore-eos", "--seed", "5"]
    early = json_lines(tokenwire(*story))
    assert early[-1]["finish_reason"] == "stop_sequence"
    stopped_at = early[-1]["usage"]["completion_tokens"]
    held = json_lines(tokenwire(*story, "--min-tokens", str(stopped_at + 1)))
    assert held[-1]["usage"]["completion_tokens"] > stopped_at
    # The stop that ended the first run is now text like any other.
    early_text = "".join(chunk["text"] for chunk in early)
    assert "".join(chunk["text"] for chunk in held).startswith(early_text + word)


def test_logprobs_print_a_table_after_the_text(sim_server: ServerProcess) -> None:
    args = ["generate", "Hi", "--target", sim_server.target, "--max-tokens", "4", "--seed", "3"]
    args += ["--ignore-eos"]
    with Client(sim_server.target, timeout=30) as client:
        expected = client.complete("Hi", max_tokens=4, seed=3, ignore_eos=True, top_logprobs=2)
    choice = expected.choices[0]
    assert choice.cumulative_logprob is not None

    done = tokenwire(*args, "--top-logprobs", "2")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(expected.text + "\n\n")
    header, *rows, total = done.stdout[len(expected.text) + 2 :].splitlines()
    assert header.split() == ["token", "logprob", "alternatives"]
    for row, entry in zip(rows, choice.logprobs, strict=True):
        token = json.dumps(entry.token, ensure_ascii=False)
        assert row.startswith(token + " ")
        logprob, alternatives = row[len(token) :].split(None, 1)
        assert logprob == f"{entry.logprob:.3f}"
        assert alternatives == "  ".join(
            f"{json.dumps(top.token, ensure_ascii=False)} {top.logprob:.3f}" for top in entry.top
        )
    assert total.split() == ["total", f"{choice.cumulative_logprob:.3f}"]

    plain = tokenwire(*args, "--logprobs")
    assert plain.stdout.splitlines()[2].split() == ["token", "logprob"]


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, str]:
    """PEM files: a server certificate for 127.0.0.1, and a client one from another CA."""
    server_ca, client_ca = trustme.CA(), trustme.CA()
    files = {
        "server-ca.pem": server_ca.cert_pem,
        "client-ca.pem": client_ca.cert_pem,
    }
    for name, issued in (
        ("server", server_ca.issue_cert("127.0.0.1", "localhost")),
        ("client", client_ca.issue_cert("client@example.com")),
    ):
        files[f"{name}.pem"] = issued.cert_chain_pems[0]
        files[f"{name}.key"] = issued.private_key_pem
    for name, blob in files.items():
        blob.write_to_path(str(tmp_path / name))
    return {name: str(tmp_path / name) for name in files}


@pytest.fixture
def mtls_server(pki: dict[str, str]) -> Iterator[ServerProcess]:
    server = start_server_process(
        ["--tls-cert", pki["server.pem"], "--tls-key", pki["server.key"],
         "--tls-client-ca", pki["client-ca.pem"]]
    )  # fmt: skip
    yield server
    server.stop()


def test_client_certificate_for_mutual_tls(mtls_server: ServerProcess, pki: dict[str, str]) -> None:
    trust = ["--target", mtls_server.target, "--ca-cert", pki["server-ca.pem"]]
    identity = ["--tls-client-cert", pki["client.pem"], "--tls-client-key", pki["client.key"]]
    done = tokenwire(*trust, *identity, "--json", "info")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["engine"] == "simulated"

    # The server asks for a client certificate: without one the handshake fails.
    refused = tokenwire("info", *trust, "--deadline", "10")
    assert refused.returncode == 1
    assert refused.stderr.startswith("error: UNAVAILABLE: ")

    half = tokenwire("info", *trust, identity[0], identity[1])
    assert half.returncode == 2
    assert "--tls-client-cert and --tls-client-key go together" in half.stderr


def test_ctrl_c_prints_the_stats_so_far(slow_sim_server: ServerProcess) -> None:
    story = ["generate", "Tell me a long story", "--max-tokens", "1000", "--ignore-eos"]
    process = subprocess.Popen(
        [TOKENWIRE, *story, "--target", slow_sim_server.target, "--stats"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        first = read_some(process.stdout.fileno(), within=20)
        assert first, "no text arrived before the deadline"
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 130, stderr
    assert (first + stdout).endswith(b"\n")
    # One line; the server's usage and timing never came, as the call did not finish.
    stats = re.fullmatch(
        rb"finish_reason=cancelled tokens=(\d+) tokens_per_second=[\d.]+ "
        rb"client_ttft_ms=[\d.]+\n",
        stderr,
    )
    assert stats is not None, stderr
    assert 0 < int(stats.group(1)) < 1000
