"""Tokens per message, counted on both doors: one token a message while the front end
keeps up, grouped messages when asked (streaming_step) or when it falls behind."""

from __future__ import annotations

from tokenwire.v1 import generation_pb2 as pb

from ..helpers import http_request, sample

NAME = "tokenwire_stream_message_tokens"


def buckets(server) -> dict[str, float]:
    text = server.metrics.text().decode()
    return {le: sample(text, f"{NAME}_bucket", {"le": le}) for le in ("1.0", "2.0", "4.0", "+Inf")}


async def test_every_message_of_either_door_is_counted_with_its_tokens(make_server, stub_for):
    server = await make_server(sim_itl_ms=5, http_port=0)
    stub = await stub_for(server)
    one = pb.GenerateRequest(prompt="hi", stopping=pb.StoppingOptions(max_tokens=6))
    messages = [m async for m in stub.Generate(one)]
    assert sample(server.metrics.text().decode(), f"{NAME}_count") == len(messages)
    assert sample(server.metrics.text().decode(), f"{NAME}_sum") == 6

    # Over HTTP with grouping: 12 tokens four at a time, three more messages of 4.
    body = {
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 12,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"streaming_step": 4},
    }
    before = buckets(server)
    status, _, raw = await http_request(server.http_port, "/v1/chat/completions", body)
    assert status == 200 and raw.count(b"data: ") >= 4
    after = buckets(server)
    grew = {le: after[le] - before[le] for le in after}
    assert grew == {"1.0": 0, "2.0": 0, "4.0": 3, "+Inf": 3}
