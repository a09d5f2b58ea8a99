"""``--log-json``: every line the server process writes is one JSON object, grpc's own too."""

from __future__ import annotations

import json
import socket
import subprocess
from pathlib import Path

import grpc
import trustme

from ..helpers import BIN, start_server_process, wait_for


def test_grpc_core_lines_come_out_as_json(tmp_path: Path):
    ca = trustme.CA()
    issued = ca.issue_cert("localhost", "127.0.0.1")
    issued.private_key_pem.write_to_path(str(tmp_path / "server.key"))
    issued.cert_chain_pems[0].write_to_path(str(tmp_path / "server.pem"))
    server = start_server_process(
        [
            "--log-json",
            "--tls-cert",
            str(tmp_path / "server.pem"),
            "--tls-key",
            str(tmp_path / "server.key"),
        ]
    )
    try:
        # A plaintext client against the TLS port: grpc's C core logs the failed
        # handshake on its own, past Python's logging.
        with grpc.insecure_channel(server.target) as channel:
            ready = grpc.channel_ready_future(channel)

            def handshake_logged() -> bool:
                return any("Handshake failed" in line for line in server.log)

            wait_for(handshake_logged, timeout=15, interval=0.05)
            ready.cancel()
    finally:
        assert server.stop() == 0
    records = [json.loads(line) for line in server.log]  # stdout and stderr, every line
    assert all(
        isinstance(r, dict) and {"time", "level", "logger", "message"} <= r.keys() for r in records
    )
    handshakes = [r for r in records if "Handshake failed" in r["message"]]
    assert handshakes and all(r["logger"] == "grpc" for r in handshakes)
    assert any(r["logger"] == "tokenwire.server" and r["message"] == "stopped" for r in records)


def test_a_failed_start_is_json_too():
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        out = subprocess.run(
            [
                str(BIN / "tokenwire-server"),
                "--log-json",
                "--port",
                "0",
                "--metrics-port",
                str(port),
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert out.returncode == 2
    (record,) = [json.loads(line) for line in out.stderr.splitlines()]
    assert record["level"] == "error"
    assert record["message"] == f"--metrics-port {port}: address already in use (127.0.0.1:{port})"
