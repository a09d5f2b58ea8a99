"""Native output (grpc's C core, TensorRT-LLM, anything on stderr) as JSON log records."""

from __future__ import annotations

import json
import subprocess
import sys

from tokenwire.server import native_logs

GRPC_LINE = (
    "I1202 03:43:34.509828   11561 ssl_transport_security.cc:2563] Handshake failed with "
    "error SSL_ERROR_SSL: WRONG_VERSION_NUMBER"
)


def test_a_grpc_core_line_keeps_its_level_and_source():
    entry = native_logs.record(GRPC_LINE)
    assert entry["logger"] == "grpc" and entry["level"] == "info"
    assert entry["source"] == "ssl_transport_security.cc:2563"
    assert entry["message"].startswith("Handshake failed with error SSL_ERROR_SSL")
    assert native_logs.record("E0101 00:00:00.000001 7 server.cc:1] boom")["level"] == "error"


def test_tensorrt_llm_and_other_lines():
    entry = native_logs.record("[TensorRT-LLM][WARNING] KV cache is small")
    assert (entry["logger"], entry["level"], entry["message"]) == (
        "tensorrt_llm",
        "warning",
        "KV cache is small",
    )
    assert native_logs.record("[TensorRT-LLM][INTERNAL_ERROR] x")["level"] == "critical"
    other = native_logs.record("Traceback (most recent call last):")
    assert (other["logger"], other["level"]) == ("stderr", "warning")


def test_the_wrapper_writes_json_lines_and_drops_what_the_level_hides():
    lines = [GRPC_LINE, "W0101 00:00:00.000001 7 chttp2.cc:9] slow", "plain text", ""]
    out = subprocess.run(
        [sys.executable, "-m", native_logs.__name__, "warning"],
        input="\n".join(lines).encode() + b"\nnot utf-8: \xff",
        capture_output=True,
        timeout=30,
        check=True,
    )
    records = [json.loads(line) for line in out.stdout.decode().splitlines()]
    assert [r["message"] for r in records] == ["slow", "plain text", "not utf-8: \\xff"]
