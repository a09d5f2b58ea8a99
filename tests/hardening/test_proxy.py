"""Through a real L7 proxy (HAProxy, h2c on both sides for gRPC): streams, cancels,
deadlines and disconnects reach the server and free the engine request at once."""

from __future__ import annotations

import json

import aiohttp
import grpc

from tokenwire.v1 import generation_pb2 as pb
from tokenwire.v1 import generation_pb2_grpc as pb_grpc

from ..conftest import ServerFactory
from ..helpers import async_wait_for
from ..proxies import HaproxyFactory

SHORT = pb.GenerateRequest(
    prompt="rivers", sampling=pb.SamplingParams(seed=7), stopping=pb.StoppingOptions(max_tokens=16)
)


async def test_streams_through_the_proxy_on_both_doors(
    make_server: ServerFactory, haproxy: HaproxyFactory
) -> None:
    server = await make_server(sim_itl_ms=2)
    proxy = haproxy(server.port, server.http_port)
    async with grpc.aio.insecure_channel(proxy.grpc_target) as channel:
        stub = pb_grpc.GenerationServiceStub(channel)
        streamed = [m async for m in stub.Generate(SHORT)]
        whole = await stub.Complete(SHORT)
    assert len(streamed) > 1
    text = "".join(m.text for m in streamed)
    assert text == whole.choices[0].text and text
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 8, "stream": True}
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as http,
        http.post(proxy.http_url + "/v1/chat/completions", json=body) as response,
    ):
        assert response.status == 200
        events = [
            line.decode().rstrip() async for line in response.content if line.startswith(b"data: ")
        ]
    assert events[-1] == "data: [DONE]"
    chunks = [json.loads(e[6:]) for e in events[:-1]]
    assert chunks[0]["object"] == "chat.completion.chunk"
    await async_wait_for(lambda: server.engine.in_flight() == 0)


async def test_a_restarted_proxy_serves_on_the_same_ports(
    make_server: ServerFactory, haproxy: HaproxyFactory
) -> None:
    server = await make_server()
    proxy = haproxy(server.port, server.http_port)
    ports = (proxy.grpc_port, proxy.http_port)
    proxy.restart()
    assert (proxy.grpc_port, proxy.http_port) == ports
    async with grpc.aio.insecure_channel(proxy.grpc_target) as channel:
        answer = await pb_grpc.GenerationServiceStub(channel).Complete(SHORT, timeout=10)
    assert answer.choices[0].text
