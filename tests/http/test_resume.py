"""Resumable streams over HTTP: SSE ids, GET /v1/requests/{id}/events, keepalives the
official SDK still parses (docs/resume.md)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import grpc
import openai

from tokenwire.server.app import Server
from tokenwire.v1 import generation_pb2 as pb
from tokenwire.v1 import generation_pb2_grpc as pb_grpc

from ..helpers import async_wait_for, http_request
from .conftest import base_url, curl, open_stream


def body(max_tokens: int = 40, grace_ms: int = 10_000, **extra: Any) -> dict[str, Any]:
    return {
        "prompt": "tell me a long story",
        "max_tokens": max_tokens,
        "seed": 5,
        "temperature": 1.0,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"resume_grace_ms": grace_ms, "include_usage": True},
        **extra,
    }


def events(raw: bytes) -> list[tuple[int | None, str]]:
    """SSE events as (id, data), comments skipped; data as sent."""
    out = []
    for block in raw.decode().split("\n\n"):
        seq, data = None, []
        for line in block.split("\n"):
            if line.startswith("id: "):
                seq = int(line[4:])
            elif line.startswith("data: "):
                data.append(line[6:])
        if data:
            out.append((seq, "\n".join(data)))
    return out


def text_of(evs: list[tuple[int | None, str]]) -> str:
    parts = []
    for _, data in evs:
        if data == "[DONE]":
            continue
        for choice in json.loads(data)["choices"]:
            parts.append(choice["text"])
    return "".join(parts)


async def whole_text(server: Server, **extra: Any) -> str:
    plain = body(**extra)
    del plain["stream"], plain["stream_options"]
    status, _, raw = await http_request(server.http_port, "/v1/completions", plain)
    assert status == 200
    return str(json.loads(raw)["choices"][0]["text"])


async def read_events(reader: asyncio.StreamReader, count: int) -> bytes:
    """Bytes up to the end of the ``count``-th event with an id (bounded)."""
    got = b""
    while got.count(b"id: ") < count or not got.endswith(b"\n\n"):
        got += await asyncio.wait_for(reader.read(1), 5)
    return got


async def test_a_dropped_sse_stream_resumes_from_its_last_event_id(make_http_server):
    server = await make_http_server(sim_itl_ms=5)
    reader, writer = await open_stream(
        server.http_port, body(), "X-Request-ID: sse-1\r\n", path="/v1/completions"
    )
    before = events(b"data: " + await read_events(reader, 5))
    writer.close()  # the connection ends: the stream detaches and goes on
    await async_wait_for(lambda: server.metrics.detached_streams == 1)
    last = [seq for seq, _ in before if seq is not None][-1]
    # Ids rise; one may be skipped (a message with nothing to say, as the half of a
    # split character, sends no event), never repeated.
    seen = [seq for seq, _ in before]
    assert None not in seen and seen == sorted({s for s in seen if s is not None})

    status, headers, raw = await http_request(
        server.http_port,
        "/v1/requests/sse-1/events",
        method="GET",
        headers=f"Last-Event-ID: {last}\r\n",
    )
    assert status == 200 and headers["content-type"].startswith("text/event-stream")
    after = events(raw)
    assert after[-1] == (None, "[DONE]")
    numbered = [seq for seq, _ in after if seq is not None]
    assert numbered == sorted(set(numbered)) and numbered[0] > last  # none twice
    # None missing: what was read before and after is the whole text.
    assert text_of(before + after) == await whole_text(server)
    usage = json.loads(after[-2][1])["usage"]
    assert usage["completion_tokens"] == 40

    # Fetched again with ?starting_after (a finished stream is kept for its grace); curl.
    again = await curl(f"{base_url(server)}/v1/requests/sse-1/events?starting_after={last}")
    assert events(again.stdout.encode()) == after
    assert server.metrics.resumes["resumed"] == 2


async def test_the_openai_sdk_parses_ids_and_keepalives(make_http_server):
    server = await make_http_server(sim_itl_ms=60, http_keepalive_s=0.02)
    async with openai.AsyncOpenAI(
        base_url=base_url(server) + "/v1", api_key="unused", max_retries=0
    ) as client:
        extra = body(max_tokens=8)
        stream = await client.completions.create(
            model=server.engine.description.name,
            prompt=extra["prompt"],
            max_tokens=8,
            seed=5,
            temperature=1.0,
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"ignore_eos": True, "stream_options": extra["stream_options"]},
        )
        chunks = [chunk async for chunk in stream]
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == await whole_text(server, max_tokens=8)
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 8
    # The keepalives really went out between id'd events (60 ms a token, one per 20 ms).
    status, _, raw = await http_request(
        server.http_port, "/v1/completions", body(max_tokens=4), headers="X-Request-ID: ka\r\n"
    )
    assert status == 200
    assert b"\n: keepalive\n" in raw and b": keepalive\n\n" not in raw
    assert events(raw)[0][0] == 1


async def test_resuming_refusals_name_what_is_wrong(make_http_server):
    server = await make_http_server(max_resume_grace_ms=1000)
    status, _, raw = await http_request(server.http_port, "/v1/completions", body(grace_ms=2000))
    assert status == 400
    assert json.loads(raw)["error"]["param"] == "stream_options.resume_grace_ms"
    status, _, raw = await http_request(
        server.http_port, "/v1/requests/nobody/events", method="GET"
    )
    assert status == 404 and json.loads(raw)["error"]["type"] == "not_found_error"
    status, _, _ = await http_request(
        server.http_port,
        "/v1/completions",
        body(max_tokens=3, grace_ms=1000),
        headers="X-Request-ID: r\r\n",
    )
    assert status == 200
    status, _, raw = await http_request(
        server.http_port,
        "/v1/requests/r/events",
        method="GET",
        headers="Last-Event-ID: nope\r\n",
    )
    assert status == 400 and json.loads(raw)["error"]["param"] == "Last-Event-ID"
    status, _, raw = await http_request(
        server.http_port, "/v1/requests/r/events?starting_after=99", method="GET"
    )
    assert status == 400 and json.loads(raw)["error"]["param"] == "starting_after"
    assert server.metrics.resumes["not_found"] == 1 and server.metrics.resumes["invalid"] == 1


async def test_a_grpc_stream_resumes_over_http_as_native_json(make_http_server):
    server = await make_http_server(sim_itl_ms=5)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = pb_grpc.GenerationServiceStub(channel)
        req = pb.GenerateRequest(
            request_id="native",
            prompt="x",
            stopping=pb.StoppingOptions(max_tokens=6),
            stream=pb.StreamOptions(resume_grace_ms=5000),
        )
        sent = [m async for m in stub.Generate(req)]
    status, _, raw = await http_request(
        server.http_port, "/v1/requests/native/events?starting_after=2", method="GET"
    )
    assert status == 200
    got = events(raw)
    assert [seq for seq, _ in got[:-1]] == [m.sequence for m in sent[2:]]
    assert [json.loads(data)["text"] for _, data in got[:-1]] == [m.text for m in sent[2:]]
    assert got[-1] == (None, "[DONE]")


async def test_a_resumable_chat_stream_reads_as_a_plain_one_with_the_sdk(make_http_server):
    server = await make_http_server(sim_itl_ms=5, http_keepalive_s=0.002)
    async with openai.AsyncOpenAI(
        base_url=base_url(server) + "/v1", api_key="unused", max_retries=0
    ) as client:
        common: dict[str, Any] = {
            "model": server.engine.description.name,
            "messages": [{"role": "user", "content": "hello"}],
            "max_tokens": 12,
            "seed": 9,
            "temperature": 1.0,
        }
        stream = await client.chat.completions.create(
            stream=True, extra_body={"stream_options": {"resume_grace_ms": 1000}}, **common
        )
        chunks = [chunk async for chunk in stream]
        whole = await client.chat.completions.create(**common)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == (
        whole.choices[0].message.content
    )
    assert chunks[-1].choices[0].finish_reason == "length"
