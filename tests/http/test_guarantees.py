"""What the gRPC door guarantees, the HTTP door guarantees too: keys, TLS, admission,
duplicate ids, the drain, keepalives during a long prefill, traces and receipts."""

from __future__ import annotations

import asyncio
import json
import logging
import os
from pathlib import Path

import openai
import pytest
import trustme
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tokenwire.server.app import Server

from ..helpers import async_wait_for, http_request, sample
from .conftest import HttpServerFactory, base_url, curl, open_stream

CHAT = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
LONG = {**CHAT, "max_tokens": 5000, "ignore_eos": True, "stream": True}


def metric(server: Server, name: str, **labels: str) -> float:
    return sample(server.metrics.text().decode(), name, labels)


async def test_api_keys_guard_generation_but_not_health_or_metrics(
    make_http_server: HttpServerFactory,
) -> None:
    server = await make_http_server(api_key="s3cret-http")
    port = server.http_port
    status, _, body = await http_request(port, "/v1/chat/completions", CHAT)
    assert status == 401
    assert json.loads(body)["error"]["type"] == "authentication_error"
    status, _, _ = await http_request(
        port, "/v1/chat/completions", CHAT, "Authorization: Bearer wrong\r\n"
    )
    assert status == 401
    status, _, _ = await http_request(
        port, "/v1/chat/completions", CHAT, "Authorization: Bearer s3cret-http\r\n"
    )
    assert status == 200
    assert (await http_request(port, "/health", method="GET"))[0] == 200
    assert (await http_request(port, "/metrics", method="GET"))[0] == 200
    assert (
        metric(server, "tokenwire_http_requests_total", route="/v1/chat/completions", status="401")
        == 2
    )
    async with openai.AsyncOpenAI(
        base_url=base_url(server) + "/v1", api_key="s3cret-http", max_retries=0
    ) as client:
        reply = await client.chat.completions.create(
            model="", messages=[{"role": "user", "content": "hi"}], max_tokens=2
        )
        assert reply.choices[0].message.content is not None


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Path]:
    server_ca, client_ca = trustme.CA(), trustme.CA()
    cert = server_ca.issue_cert("localhost", "127.0.0.1")
    cert.private_key_pem.write_to_path(str(tmp_path / "server.key"))
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "server.pem"))
    server_ca.cert_pem.write_to_path(str(tmp_path / "server-ca.pem"))
    client_ca.cert_pem.write_to_path(str(tmp_path / "client-ca.pem"))
    client = client_ca.issue_cert("client@example.com")
    client.private_key_pem.write_to_path(str(tmp_path / "client.key"))
    client.cert_chain_pems[0].write_to_path(str(tmp_path / "client.pem"))
    return {p.name: p for p in tmp_path.iterdir()}


async def test_mutual_tls_with_the_grpc_certificates(
    make_http_server: HttpServerFactory, pki: dict[str, Path]
) -> None:
    server = await make_http_server(
        tls_cert=pki["server.pem"], tls_key=pki["server.key"], tls_client_ca=pki["client-ca.pem"]
    )
    url = f"https://127.0.0.1:{server.http_port}/v1/chat/completions"
    body = json.dumps({**CHAT, "stream": True})
    common = ["--cacert", str(pki["server-ca.pem"]), "-H", "content-type: application/json"]
    done = await curl(*common, "-d", body, url)
    assert done.returncode != 0  # no client certificate: the handshake fails
    done = await curl(
        *common, "--cert", str(pki["client.pem"]), "--key", str(pki["client.key"]), "-d", body, url
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.rstrip().endswith("data: [DONE]")
    done = await curl("-d", body, "http://" + url.removeprefix("https://"))
    assert done.returncode != 0 or "HTTP" not in done.stdout  # no plaintext on a TLS port


async def test_a_duplicate_live_request_id_is_409_and_a_full_queue_429_with_retry_after(
    make_http_server: HttpServerFactory,
) -> None:
    server = await make_http_server(sim_itl_ms=20, max_concurrent_requests=1, max_queue=0)
    _, first = await open_stream(server.http_port, LONG, "X-Request-Id: same-id\r\n")
    status, fields, body = await http_request(
        server.http_port, "/v1/chat/completions", CHAT, "X-Request-Id: same-id\r\n"
    )
    assert status == 409 and fields["x-request-id"] == "same-id"
    status, fields, body = await http_request(server.http_port, "/v1/chat/completions", CHAT)
    assert status == 429
    assert int(fields["retry-after"]) >= 1
    assert json.loads(body)["error"]["type"] == "rate_limit_error"
    first.close()
    await async_wait_for(lambda: server.engine.in_flight() == 0)


async def test_sigterm_drain_refuses_new_requests_and_lets_live_streams_finish(
    make_http_server: HttpServerFactory,
) -> None:
    server = await make_http_server(sim_itl_ms=10)
    short = {**CHAT, "max_tokens": 60, "stream": True}
    live_reader, live = await open_stream(server.http_port, short)
    idle_reader, idle = await asyncio.open_connection("127.0.0.1", server.http_port)
    stopping = asyncio.create_task(server.stop(grace=10))
    await async_wait_for(lambda: server.core.grace_ends_at is not None)
    # A kept-alive connection still reaches the door: it says why it refuses.
    data = json.dumps(CHAT).encode()
    idle.write(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: "
        + str(len(data)).encode()
        + b"\r\n\r\n"
        + data
    )
    head = await asyncio.wait_for(idle_reader.readuntil(b"\r\n\r\n"), 10)
    assert head.startswith(b"HTTP/1.1 503")
    # The live stream runs to its end.
    reader = live_reader
    rest = await asyncio.wait_for(reader.readuntil(b"data: [DONE]\n\n"), 10)
    assert b'"finish_reason":"length"' in rest
    await asyncio.wait_for(stopping, 15)
    assert server.metrics._aborts["shutdown"] == 0  # the provider is shut: read the count
    live.close()
    idle.close()


async def test_a_stream_still_live_when_the_grace_ends_gets_an_error_event(
    make_http_server: HttpServerFactory,
) -> None:
    server = await make_http_server(sim_itl_ms=10)
    live_reader, live = await open_stream(server.http_port, LONG)
    await asyncio.wait_for(server.stop(grace=0.2), 15)
    reader = live_reader
    rest = await asyncio.wait_for(reader.readuntil(b"data: [DONE]\n\n"), 10)
    error = json.loads(rest.split(b"data: ")[-2].strip())
    assert error["error"]["code"] == "shutting_down"
    assert server.metrics._aborts["shutdown"] == 1  # the provider is shut: read the count
    assert server.engine.in_flight() == 0
    live.close()


async def test_keepalives_during_a_long_prefill_do_not_break_the_official_sdk(
    make_http_server: HttpServerFactory,
) -> None:
    server = await make_http_server(sim_ttft_ms=600, http_keepalive_s=0.1)
    raw = (await http_request(server.http_port, "/v1/chat/completions", {**CHAT, "stream": True}))[
        2
    ]
    assert b": keepalive\n" in raw  # sent while the first token was pending
    async with openai.AsyncOpenAI(
        base_url=base_url(server) + "/v1", api_key="x", max_retries=0
    ) as client:
        stream = await client.chat.completions.create(
            model="", messages=[{"role": "user", "content": "hi"}], max_tokens=4, stream=True
        )
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text


async def test_spans_continue_traceparent_and_endings_are_logged_with_usage(
    make_http_server: HttpServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    server = await make_http_server(sim_itl_ms=10)
    exporter = InMemorySpanExporter()
    server.tracing.add_exporter(exporter, batch=False)
    trace_id, parent = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"
    caplog.set_level(logging.INFO, logger="tokenwire.server")
    status, _, _ = await http_request(
        server.http_port,
        "/v1/completions",
        {"prompt": "hi", "max_tokens": 3},
        f"traceparent: 00-{trace_id}-{parent}-01\r\nX-Request-Id: traced-1\r\n",
    )
    assert status == 200
    [span] = exporter.get_finished_spans()
    assert span.context is not None and f"{span.context.trace_id:032x}" == trace_id
    assert span.parent is not None and f"{span.parent.span_id:016x}" == parent
    assert span.name == "POST /v1/completions"
    # An aborted stream is logged too, with what it had used.
    _, live = await open_stream(server.http_port, LONG, "X-Request-Id: cut-1\r\n")
    live.close()
    await async_wait_for(lambda: server.engine.in_flight() == 0)
    await async_wait_for(lambda: any("aborted:cancelled" in r.getMessage() for r in caplog.records))
    receipts = {getattr(r, "request_id", None): r.getMessage() for r in caplog.records}
    assert "completion_tokens=3" in receipts["traced-1"]
    assert "aborted:cancelled" in receipts["cut-1"]


async def test_health_is_503_with_the_reason_when_the_engine_cannot_serve(
    http_server: Server,
) -> None:
    status, _, body = await http_request(http_server.http_port, "/health", method="GET")
    assert status == 200 and json.loads(body)["status"] == "serving"
    http_server.engine._closed = True  # type: ignore[attr-defined]  # the simulator's own flag
    try:
        status, _, body = await http_request(http_server.http_port, "/health", method="GET")
        assert status == 503 and "engine" in json.loads(body)["reason"]
        status, _, body = await http_request(http_server.http_port, "/v1/chat/completions", CHAT)
        assert status == 503
    finally:
        http_server.engine._closed = False  # type: ignore[attr-defined]


async def test_tls_files_are_read_again_when_they_change(
    make_http_server: HttpServerFactory, pki: dict[str, Path], tmp_path: Path
) -> None:
    server = await make_http_server(tls_cert=pki["server.pem"], tls_key=pki["server.key"])
    url = f"https://127.0.0.1:{server.http_port}/health"
    assert (await curl("--cacert", str(pki["server-ca.pem"]), url)).returncode == 0
    new_ca = trustme.CA()
    cert = new_ca.issue_cert("localhost", "127.0.0.1")
    cert.private_key_pem.write_to_path(str(pki["server.key"]))
    cert.cert_chain_pems[0].write_to_path(str(pki["server.pem"]))
    stamp = os.stat(pki["server.pem"]).st_mtime_ns + 10**9  # a visibly newer file
    for path in (pki["server.pem"], pki["server.key"]):
        os.utime(path, ns=(stamp, stamp))
    new_ca.cert_pem.write_to_path(str(tmp_path / "new-ca.pem"))
    done = await curl("--cacert", str(tmp_path / "new-ca.pem"), url)
    assert done.returncode == 0, done.stderr  # the next handshake used the new certificate
    assert (await curl("--cacert", str(pki["server-ca.pem"]), url)).returncode != 0


async def test_the_clients_timeout_is_a_deadline_that_aborts_the_engine_request(
    make_http_server: HttpServerFactory,
) -> None:
    # The official SDKs send their timeout as X-Stainless-Timeout: past it nobody reads.
    server = await make_http_server(sim_itl_ms=10)
    status, _, raw = await http_request(
        server.http_port, "/v1/chat/completions", LONG, "X-Stainless-Timeout: 0.3\r\n"
    )
    assert status == 200  # the stream had started: the deadline ends it in the stream
    error = json.loads(raw.split(b"data: ")[-2].split(b"\r\n")[0])
    assert error["error"]["code"] == "deadline_exceeded"
    await async_wait_for(lambda: server.engine.in_flight() == 0)
    assert metric(server, "tokenwire_aborts_total", reason="deadline") == 1
    assert (
        metric(server, "tokenwire_http_requests_total", route="/v1/chat/completions", status="504")
        == 1
    )


async def test_a_whole_answer_is_bounded_like_grpc_complete(
    make_http_server: HttpServerFactory,
) -> None:
    server = await make_http_server(max_message_bytes=65536, sim_itl_ms=0)
    sure = {**CHAT, "max_tokens": 8000, "ignore_eos": True, "logprobs": True, "top_logprobs": 5}
    status, _, raw = await http_request(server.http_port, "/v1/chat/completions", sure)
    assert status == 400 and json.loads(raw)["error"]["param"] == "max_tokens"
    grows = {**sure, "stop": ["never said"]}
    status, _, raw = await http_request(server.http_port, "/v1/chat/completions", grows)
    assert status == 413 and json.loads(raw)["error"]["code"] == "too_large"
    assert server.engine.in_flight() == 0
    assert metric(server, "tokenwire_aborts_total", reason="error") == 1


async def test_a_second_signal_cuts_the_drain_short_for_http_streams_too(
    make_http_server: HttpServerFactory,
) -> None:
    server = await make_http_server(sim_itl_ms=10)
    live_reader, live = await open_stream(server.http_port, LONG)
    stopping = asyncio.create_task(server.stop(grace=30))
    await async_wait_for(lambda: server.core.grace_ends_at is not None)
    await server.hurry()  # what serve() does on the second SIGINT/SIGTERM
    rest = await asyncio.wait_for(live_reader.readuntil(b"data: [DONE]\n\n"), 10)
    error = json.loads(rest.split(b"data: ")[-2].strip())
    assert error["error"]["code"] == "shutting_down"
    await asyncio.wait_for(stopping, 15)  # well inside the 30 s grace
    assert server.metrics._aborts["shutdown"] == 1  # the provider is shut: read the count
    assert server.engine.in_flight() == 0
    live.close()
