"""Hostile input on the HTTP door: Schemathesis against the server's own OpenAPI
document (GET /openapi.json), then what no schema describes: malformed JSON, bad
UTF-8, huge and slow bodies, header floods.

A client's mistake never answers 500 (or any 5xx); afterwards the server is
healthy, nothing is in flight and its log holds no traceback. FUZZ_EXAMPLES sets
Schemathesis's cases per route (make soak: 2,000).
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error, status_code_conformance

from ..helpers import ServerProcess, metric_value, start_server_process, wait_for
from .fuzzing import EXAMPLES

SEEN: Counter[str] = Counter()


@pytest.fixture(scope="module")
def http_fuzz_server() -> Iterator[ServerProcess]:
    server = start_server_process(
        ["--sim-ttft-ms", "0", "--sim-itl-ms", "0", "--max-tokens-limit", "512"]
    )
    yield server
    try:
        wait_for(
            lambda: metric_value(server.metrics_url, "tokenwire_engine_requests_in_flight") == 0,
            timeout=10,
        )
        health = _raw(server.http_port, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert health.startswith(b"HTTP/1.1 200"), health[:200]
    finally:
        assert server.stop() == 0
    log = "".join(server.log)
    assert "Traceback" not in log, log[-5000:]
    print(f"\nfigure http fuzz outcomes: {dict(sorted(SEEN.items()))}")


@pytest.mark.parametrize("mode", list(schemathesis.GenerationMode), ids=str)
def test_fuzz_http_api_against_its_openapi_schema(
    http_fuzz_server: ServerProcess, mode: schemathesis.GenerationMode
) -> None:
    # Schemathesis's Python API: cases from the live server's own document, for every
    # route; positive (valid by the schema) and negative (violating it) bodies.
    schema = schemathesis.openapi.from_url(http_fuzz_server.http_url + "/openapi.json")

    @settings(
        max_examples=EXAMPLES or 300,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        database=None,
    )
    @given(case=schema.as_strategy(generation_mode=mode))
    def run(case: schemathesis.Case[Any]) -> None:
        response = case.call(timeout=10)
        SEEN[f"{mode.value} {case.method} {case.path} {response.status_code}"] += 1
        case.validate_response(response, checks=[not_a_server_error, status_code_conformance])
        if response.status_code == 400:
            error = json.loads(response.content)["error"]
            assert error["message"] and error["type"] == "invalid_request_error", error

    run()


# --- what no schema describes ------------------------------------------------------

ROUTES = ("/v1/chat/completions", "/v1/completions", "/v1/generate")


def _raw(port: int, data: bytes, timeout: float = 10.0, half_close: bool = True) -> bytes:
    """Send bytes on a fresh connection; everything the server answers (bounded).
    ``half_close``: say we are done sending (a body cut short reads as a client gone)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as conn:
        conn.sendall(data)
        if half_close:
            conn.shutdown(socket.SHUT_WR)
        chunks = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = conn.recv(65536)
            except (ConnectionResetError, TimeoutError):
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)


def _post(route: str, body: bytes, extra: bytes = b"") -> bytes:
    return (
        f"POST {route} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n".encode()
        + extra
        + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
        + body
    )


def _status(answer: bytes) -> int:
    if not answer:
        return 0  # the server closed without answering (a broken request line)
    return int(answer.split(b" ", 2)[1])


def _no_server_fault(kind: str, answer: bytes) -> int:
    status = _status(answer)
    SEEN[f"{kind} {status}"] += 1
    assert status < 500, answer[:500]
    return status


JSONISH = st.recursive(
    st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)


@st.composite
def broken_json(draw: st.DrawFn) -> bytes:
    """JSON cut, spliced, with bad UTF-8, lone surrogates or NaN; or anything."""
    good = json.dumps(
        {
            "messages": [{"role": "user", "content": draw(st.text(max_size=20))}],
            "prompt": "x",
            "max_tokens": 4,
            draw(st.text(max_size=8)): draw(JSONISH),
        }
    ).encode()
    action = draw(st.sampled_from(["cut", "bad_utf8", "surrogate", "nan", "noise", "deep"]))
    if action == "cut":
        return good[: draw(st.integers(0, len(good) - 1))]
    if action == "bad_utf8":
        at = draw(st.integers(0, len(good)))
        return (
            good[:at]
            + draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x80\x80"]))
            + good[at:]
        )
    if action == "surrogate":
        return good.replace(b'"x"', b'"\\ud800"')
    if action == "nan":
        return good.replace(b"4", b"NaN")
    if action == "deep":
        depth = draw(st.integers(100, 100_000))
        return b'{"messages": ' + b"[" * depth + b"]" * depth + b"}"
    return draw(st.binary(max_size=300))


@settings(
    max_examples=EXAMPLES or 300,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    database=None,
)
@given(body=broken_json(), route=st.sampled_from(ROUTES))
def test_fuzz_http_malformed_bodies(
    http_fuzz_server: ServerProcess, body: bytes, route: str
) -> None:
    status = _no_server_fault("malformed", _raw(http_fuzz_server.http_port, _post(route, body)))
    assert status in (200, 400, 404, 413, 422), status


def test_a_huge_body_is_refused_with_413(http_fuzz_server: ServerProcess) -> None:
    body = b'{"prompt": "' + b"x" * (5 * 1024 * 1024) + b'"}'  # past --max-message-bytes
    for route in ROUTES:
        answer = _raw(http_fuzz_server.http_port, _post(route, body), timeout=30)
        assert _no_server_fault("huge", answer) == 413, answer[:300]


async def test_a_slow_body_is_served_or_refused_and_frees_everything(
    http_fuzz_server: ServerProcess,
) -> None:
    # One byte every 20 ms (about 2 s in all): a slow client, not an attack the
    # door must cut; it must answer it, and the requests beside it go on.
    body = json.dumps({"prompt": "slow", "max_tokens": 4}).encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", http_fuzz_server.http_port)
    head = _post("/v1/completions", body)
    writer.write(head[: len(head) - len(body)])
    for i in range(len(body)):
        writer.write(body[i : i + 1])
        await writer.drain()
        await asyncio.sleep(0.02)
    answer = await asyncio.wait_for(reader.read(), 20)
    writer.close()
    assert _no_server_fault("slow", answer) == 200, answer[:300]


def test_header_floods_are_refused_without_a_fault(http_fuzz_server: ServerProcess) -> None:
    port = http_fuzz_server.http_port
    body = json.dumps({"prompt": "x", "max_tokens": 2}).encode()
    many = b"".join(b"X-Flood-%d: %s\r\n" % (i, b"y" * 50) for i in range(5000))
    huge = b"X-Huge: " + b"z" * (1024 * 1024) + b"\r\n"
    bad = b"X-Bad: \xff\xfe\x00value\r\n"
    for kind, extra in (("many headers", many), ("huge header", huge), ("bad header", bad)):
        answer = _raw(port, _post("/v1/completions", body, extra), timeout=20)
        _no_server_fault(kind, answer)
    for request_id in (b"x" * 10_000, b"\xc3\x28", b"id with spaces"):
        answer = _raw(
            port, _post("/v1/completions", body, b"X-Request-Id: " + request_id + b"\r\n")
        )
        assert _no_server_fault("request id", answer) in (200, 400), answer[:300]
