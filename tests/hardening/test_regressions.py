"""What the fuzzing found, each kept as a plain test: a client's mistake is a 400
naming its field, never a 500, a traceback or a dropped connection."""

from __future__ import annotations

import asyncio
import json
import re

import pytest

from tokenwire.server import connections
from tokenwire.server.settings import Settings

from ..helpers import http_request
from ..http.conftest import HttpServerFactory


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"prompt": [2**40], "max_tokens": 2}, "prompt"),
        ({"prompt": "x", "max_tokens": 2**40}, "max_tokens"),
        ({"prompt": "x", "n": 2**33}, "n"),
        ({"prompt": "x", "top_k": -(2**40)}, "top_k"),
        ({"prompt": "x", "stop_token_ids": [2**32]}, "stop_token_ids[0]"),
    ],
)
async def test_integers_past_32_bits_are_refused_naming_the_field(
    make_http_server: HttpServerFactory, body: dict[str, object], param: str
) -> None:
    server = await make_http_server()
    status, _, raw = await http_request(server.http_port, "/v1/completions", body)
    assert status == 400, raw
    assert json.loads(raw)["error"]["param"] == param


async def test_a_64_bit_seed_is_still_accepted(make_http_server: HttpServerFactory) -> None:
    server = await make_http_server()
    body = {"prompt": "x", "max_tokens": 2, "seed": 2**63 + 5}
    status, _, raw = await http_request(server.http_port, "/v1/completions", body)
    assert status == 200, raw


async def raw_post(port: int, path: str, body: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
        + body
    )
    answer = await asyncio.wait_for(reader.read(), 20)
    writer.close()
    return answer


async def test_generate_refuses_a_body_that_is_not_utf8(
    make_http_server: HttpServerFactory,
) -> None:
    server = await make_http_server()
    answer = await raw_post(server.http_port, "/v1/generate", b'{"prompt": "\xff"}')
    assert answer.startswith(b"HTTP/1.1 400"), answer[:300]
    assert b'"param":"body"' in answer


async def test_generate_refuses_a_request_id_a_header_cannot_carry(
    make_http_server: HttpServerFactory,
) -> None:
    server = await make_http_server()
    body = json.dumps({"prompt": "x", "request_id": "a\nb"}).encode()
    answer = await raw_post(server.http_port, "/v1/generate", body)
    assert answer.startswith(b"HTTP/1.1 400"), answer[:300]
    assert b'"param":"request_id"' in answer
    # A fresh id is echoed instead (a random one: it may start with "a" as well).
    echoed = re.search(rb"(?im)^x-request-id: (.*?)\r$", answer)
    assert echoed is not None and re.fullmatch(rb"[0-9a-f]{32}", echoed[1]), answer[:300]


def test_keepalive_and_connection_age_reach_grpc() -> None:
    options = dict(
        connections.grpc_options(
            Settings(keepalive_time_s=2, keepalive_timeout_s=0.5, max_connection_age_s=60)
        )
    )
    assert options["grpc.keepalive_time_ms"] == 2000
    assert options["grpc.keepalive_timeout_ms"] == 500
    assert options["grpc.http2.max_pings_without_data"] == 0  # pings in a silent prefill
    assert options["grpc.max_connection_age_ms"] == 60_000
    assert options["grpc.max_connection_age_grace_ms"] == 30_000  # --shutdown-grace-s
    off = dict(connections.grpc_options(Settings(keepalive_time_s=0)))
    assert "grpc.keepalive_time_ms" not in off and "grpc.max_connection_age_ms" not in off
