"""Flags and environment to Settings: readable help, one line per problem, no secret shown."""

from __future__ import annotations

from importlib.metadata import version

import pytest

from tokenwire.server import flags
from tokenwire.server.settings import BadSettings, Settings

SECRET = "tw-7f3a9c-do-not-print"


def problems(argv: list[str]) -> tuple[str, ...]:
    with pytest.raises(BadSettings) as info:
        flags.parse(argv)
    return info.value.problems


def test_flags_and_environment_build_the_settings(monkeypatch):
    monkeypatch.setenv("TOKENWIRE_MAX_QUEUE", "7")
    monkeypatch.setenv("TOKENWIRE_PORT", "6000")
    settings = flags.parse(["--port", "6001", "--no-reflection", "--log-json", "--api-key", "k"])
    assert settings.port == 6001  # the flag wins over the environment
    assert settings.max_queue == 7
    assert settings.reflection is False and settings.log_json is True
    assert settings.api_key is not None and settings.api_key.get_secret_value() == "k"
    assert flags.parse(["--otlp-endpoint", "http://collector:4317"]).otlp_endpoint == (
        "http://collector:4317"
    )


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--port", "70000"], "--port (TOKENWIRE_PORT): must be between 0 and 65535, got 70000"),
        (["--max-queue", "-1"], "--max-queue (TOKENWIRE_MAX_QUEUE): must be at least 0, got -1"),
        (["--max-n", "two"], "--max-n (TOKENWIRE_MAX_N): must be a whole number, got 'two'"),
        (
            ["--kv-cache-memory-fraction", "1.5"],
            "--kv-cache-memory-fraction (TOKENWIRE_KV_CACHE_MEMORY_FRACTION): "
            "must be above 0 and at most 1, got 1.5",
        ),
        (
            ["--engine", "vllm"],
            "--engine (TOKENWIRE_ENGINE): must be one of simulated, transformers, "
            "tensorrt-llm, got 'vllm'",
        ),
        (["--host", ""], "--host (TOKENWIRE_HOST): must not be empty"),
        (
            ["--tls-cert", "/nonexistent/cert.pem", "--tls-key", "/nonexistent/key.pem"],
            "--tls-cert (TOKENWIRE_TLS_CERT): no such file, got '/nonexistent/cert.pem'",
        ),
        (
            ["--default-max-tokens", "9000"],
            "--default-max-tokens (TOKENWIRE_DEFAULT_MAX_TOKENS) must not exceed "
            "--max-tokens-limit (TOKENWIRE_MAX_TOKENS_LIMIT)",
        ),
        (["--prot", "1"], "unknown flag --prot: did you mean --port?"),
        (["--port"], "argument --port: expected one argument (see tokenwire-server --help)"),
    ],
)
def test_each_problem_is_one_line_naming_the_flag_and_variable(argv, expected):
    assert expected in problems(argv)


def test_every_problem_is_reported_at_once():
    found = problems(["--port", "70000", "--max-n", "0", "--sim-itl-ms", "-1"])
    assert {p.split(":")[0] for p in found} == {
        "--port (TOKENWIRE_PORT)",
        "--max-n (TOKENWIRE_MAX_N)",
        "--sim-itl-ms (TOKENWIRE_SIM_ITL_MS)",
    }


def test_a_bad_environment_variable_is_named_too(monkeypatch):
    monkeypatch.setenv("TOKENWIRE_METRICS_PORT", "lots")
    assert problems([]) == (
        "--metrics-port (TOKENWIRE_METRICS_PORT): must be a whole number, got 'lots'",
    )


def test_tls_files_go_together(tmp_path):
    cert = tmp_path / "cert.pem"
    cert.write_text("x")
    assert problems(["--tls-cert", str(cert)]) == (
        "--tls-cert (TOKENWIRE_TLS_CERT) and --tls-key (TOKENWIRE_TLS_KEY) go together",
    )


@pytest.mark.parametrize(
    "argv",
    [
        ["--api-key", SECRET, "--tls-cert", "x"],  # the pydantic dump used to echo it
        ["--api-key", SECRET, "--port", "70000", "--engine", "bogus"],
        ["--api-key", ""],
        ["--api-kee", SECRET],  # a typo: the value is the unknown flag's
        [f"--api-kee={SECRET}"],
        ["--api_key", SECRET],
        ["--no-reflection", SECRET],  # a stray value
        [SECRET],
        [f"--log-json={SECRET}"],
        ["--api-key", SECRET, "--default-max-tokens", "9000"],
    ],
)
def test_no_problem_shows_a_secret(argv, tmp_path):
    text = "\n".join(problems(argv))
    assert text and SECRET not in text


def test_a_secret_from_the_environment_is_not_shown_either(monkeypatch):
    monkeypatch.setenv("TOKENWIRE_API_KEY", SECRET)
    monkeypatch.setenv("TOKENWIRE_TLS_CLIENT_CA", "/nonexistent")
    text = "\n".join(problems([]))
    assert "TOKENWIRE_TLS_CLIENT_CA" in text and SECRET not in text


def test_help_reads_as_help(capsys):
    with pytest.raises(SystemExit) as done:
        flags.parse(["--help"])
    assert done.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # as wrapped for any terminal
    for internal in ("{str,null}", "SecretStr", "null", "{Path", "{int", "{float"):
        assert internal not in text
    for alias in ("--tokenwire-otlp-endpoint", "--otel-exporter-otlp-endpoint"):
        assert alias not in text
    for shown in (
        "--port PORT",
        "--tls-cert PATH",
        "--sim-ttft-ms MS",
        "--shutdown-grace-s SECONDS",
        "--api-key KEY",
        "--max-queue N",
        "--engine {simulated,transformers,tensorrt-llm}",
        "--reflection, --no-reflection",
        "(default: 50051)",
        "TOKENWIRE_<FLAG>",
    ):
        assert shown in text
    for name in Settings.model_fields:  # every setting, under the name CONTRACT.md gives it
        assert f"--{name.replace('_', '-')}" in text


def test_version(capsys):
    with pytest.raises(SystemExit) as done:
        flags.parse(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == f"tokenwire-server {version('tokenwire')}"


def test_lora_adapters_repeat_on_the_command_line_or_separate_by_commas(monkeypatch):
    monkeypatch.setenv("TOKENWIRE_LORA", "sql=/a/sql, chat=/a/chat")
    assert flags.parse([]).lora_adapters() == {"sql": "/a/sql", "chat": "/a/chat"}
    given = flags.parse(["--lora", "x=/a/x", "--lora", "y=/a/y"])  # the flag wins
    assert given.lora_adapters() == {"x": "/a/x", "y": "/a/y"}
    for bad in (["--lora", "x"], ["--lora", "x=/a", "--lora", "x=/b"], ["--lora", "=/a"]):
        with pytest.raises(BadSettings, match=r"--lora \(TOKENWIRE_LORA\)"):
            flags.parse(bad)
