"""Load signals over the network, as a router reads them: /metrics on the HTTP port
(what llm-d's endpoint picker scrapes every 50 ms) and GetLoad."""

from __future__ import annotations

import asyncio
import time

from prometheus_client.parser import text_string_to_metric_families

from tokenwire.v1 import generation_pb2 as pb

from ..helpers import async_wait_for, http_request, parse_metrics
from .test_admission import fill_slots_and_queue

LOAD_GAUGES = (
    "tokenwire_num_requests_waiting",
    "tokenwire_num_requests_running",
    "tokenwire_kv_cache_utilization",
    "tokenwire_cache_config_info",
)


async def scrape_http(port: int) -> str:
    status, _, body = await http_request(port, "/metrics", method="GET")
    assert status == 200
    return body.decode()


def value(text: str, name: str, **labels: str) -> float:
    return parse_metrics(text)[name, frozenset(labels.items())]


async def test_load_moves_with_load_and_returns_to_idle(make_server, stub_for):
    server = await make_server(
        sim_itl_ms=5, max_concurrent_requests=2, max_queue=10, sim_kv_blocks=64
    )
    stub = await stub_for(server)
    running, queued = await fill_slots_and_queue(server, stub, 2, 3)

    text = await scrape_http(server.http_port)
    assert value(text, "tokenwire_num_requests_waiting") == 3  # our queue; the simulator has none
    assert value(text, "tokenwire_num_requests_running") == 2  # the slot count
    first = value(text, "tokenwire_kv_cache_utilization")
    assert 0 < first <= 1
    assert value(text, "tokenwire_cache_config_info", block_size="16", num_gpu_blocks="64") == 1
    load = await stub.GetLoad(pb.GetLoadRequest())
    assert (load.num_requests_waiting, load.num_requests_running) == (3, 2)
    assert (load.kv_block_size, load.kv_total_blocks) == (16, 64)

    # Blocks fill as the streams generate (two sequences of 5,000 tokens would need
    # far more than 64 blocks: the utilization rises to full and stays there).
    async def rising() -> bool:
        return value(await scrape_http(server.http_port), "tokenwire_kv_cache_utilization") > first

    await async_wait_for(rising, within=10)

    for call in running + queued:
        call.cancel()
    await async_wait_for(lambda: server.engine.in_flight() == 0 and server.admission.busy == 0)
    text = await scrape_http(server.http_port)
    assert value(text, "tokenwire_num_requests_waiting") == 0
    assert value(text, "tokenwire_num_requests_running") == 0
    assert value(text, "tokenwire_kv_cache_utilization") == 0
    idle = await stub.GetLoad(pb.GetLoadRequest())
    assert (idle.num_requests_waiting, idle.num_requests_running) == (0, 0)
    assert idle.kv_cache_utilization == 0


async def test_the_pickers_view_every_50_ms_under_load(make_server, stub_for):
    """Scraped as the endpoint picker does, on the inference (HTTP) port every 50 ms
    while streams run and queue: every scrape parses, with the load gauges typed as
    gauges, and the view follows the load as it drains."""
    server = await make_server(sim_itl_ms=2, max_concurrent_requests=2, max_queue=10)
    stub = await stub_for(server)
    short = pb.GenerateRequest(
        prompt="x", stopping=pb.StoppingOptions(max_tokens=100, ignore_eos=True)
    )
    calls = [stub.Generate(short) for _ in range(6)]
    seen: list[tuple[float, float]] = []
    for _ in range(100):  # bounded: 6 streams of 100 tokens at 2 ms drain in about 0.6 s
        started = time.monotonic()
        text = await scrape_http(server.http_port)
        types = {f.name: f.type for f in text_string_to_metric_families(text)}
        for name in LOAD_GAUGES:
            assert types[name] == "gauge", name
        seen.append(
            (
                value(text, "tokenwire_num_requests_waiting"),
                value(text, "tokenwire_num_requests_running"),
            )
        )
        if seen[-1] == (0, 0) and len(seen) > 1:
            break
        await asyncio.sleep(max(0.0, started + 0.05 - time.monotonic()))
    assert max(waiting for waiting, _ in seen) > 0  # a queue was seen...
    assert max(running for _, running in seen) == 2  # ...behind full slots...
    assert seen[-1] == (0, 0)  # ...and the view drained with the load
    for call in calls:
        assert [m async for m in call][-1].finish_reason == pb.FINISH_REASON_LENGTH
