"""LoRA adapters on the simulator, through both doors: picked by model name, listed, counted."""

from __future__ import annotations

import json

import grpc
import pytest

from tokenwire.v1 import generation_pb2 as pb

from ..helpers import async_wait_for, http_request, parse_metrics
from .test_admission import fill_slots_and_queue
from .test_cancellation import metric

ADAPTERS = "sql=/adapters/sql,chat=/adapters/chat"


def ask(model: str = "") -> pb.GenerateRequest:
    return pb.GenerateRequest(
        prompt="write a query",
        model=model,
        sampling=pb.SamplingParams(seed=3, temperature=0.8),
        stopping=pb.StoppingOptions(max_tokens=24, ignore_eos=True),
    )


async def test_a_request_picks_an_adapter_by_model_name(make_server, stub_for):
    server = await make_server(lora=ADAPTERS)
    stub = await stub_for(server)
    info = await stub.GetModelInfo(pb.GetModelInfoRequest())
    assert list(info.adapters) == ["sql", "chat"]
    texts = {m: (await stub.Complete(ask(m))).choices[0].text for m in ("", info.model, "sql")}
    assert texts[""] == texts[info.model]  # the base model, by name or by default
    assert texts["sql"] != texts[""]  # the adapter changes the answer...
    assert (await stub.Complete(ask("sql"))).choices[0].text == texts["sql"]  # ...the same way

    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.Complete(ask("nope"))
    assert refused.value.code() == grpc.StatusCode.NOT_FOUND
    assert "'sql'" in (refused.value.details() or "")  # the refusal lists what is served


async def test_adapters_over_http_are_listed_and_answer_under_their_name(make_server):
    server = await make_server(lora=ADAPTERS)
    status, _, body = await http_request(server.http_port, "/v1/models", method="GET")
    assert status == 200
    models = json.loads(body)["data"]
    base = models[0]["id"]
    assert [m["id"] for m in models] == [base, "sql", "chat"]
    assert all(m["parent"] == base for m in models[1:])

    chat = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 8, "seed": 1}
    status, _, body = await http_request(
        server.http_port, "/v1/chat/completions", {**chat, "model": "chat"}
    )
    assert status == 200 and json.loads(body)["model"] == "chat"
    status, _, body = await http_request(
        server.http_port, "/v1/chat/completions", {**chat, "model": "nope"}
    )
    assert status == 404 and json.loads(body)["error"]["param"] == "model"


async def test_the_routers_lora_metric_follows_running_and_waiting_adapters(make_server, stub_for):
    server = await make_server(lora=ADAPTERS, sim_itl_ms=5, max_concurrent_requests=1)
    stub = await stub_for(server)

    def info() -> dict[str, str]:
        [(labels, value)] = [
            (dict(labels), value)
            for (name, labels), value in parse_metrics(server.metrics.text().decode()).items()
            if name == "tokenwire_lora_requests_info"
        ]
        assert value > 1.7e9  # a Unix time: when the sets last changed
        return labels

    assert info() == {"max_lora": "2", "running_lora_adapters": "", "waiting_lora_adapters": ""}
    long_sql = ask("sql")
    long_sql.stopping.max_tokens = 5000
    running = stub.Generate(long_sql)
    await running.read()
    long_chat = ask("chat")
    long_chat.stopping.max_tokens = 5000
    queued = stub.Generate(long_chat)
    await async_wait_for(lambda: server.admission.queue_depth == 1)
    assert info()["running_lora_adapters"] == "sql"
    assert info()["waiting_lora_adapters"] == "chat"
    running.cancel()
    await queued.read()  # the slot went to the queued one
    assert info()["running_lora_adapters"] == "chat" and info()["waiting_lora_adapters"] == ""
    queued.cancel()
    await async_wait_for(lambda: server.engine.in_flight() == 0)
    assert info()["running_lora_adapters"] == ""
    assert metric(server, "tokenwire_num_requests_running") == 0


async def test_a_malformed_adapter_list_is_refused_at_start(make_server):
    with pytest.raises(ValueError, match="NAME=PATH"):
        await make_server(lora="just-a-path")


async def test_base_requests_leave_the_lora_metric_empty(make_server, stub_for):
    server = await make_server(lora=ADAPTERS, max_concurrent_requests=1, max_queue=4)
    stub = await stub_for(server)
    running, queued = await fill_slots_and_queue(server, stub, 1, 1)
    text = server.metrics.text().decode()
    assert 'running_lora_adapters=""' in text and 'waiting_lora_adapters=""' in text
    for call in running + queued:
        call.cancel()
    await async_wait_for(lambda: server.engine.in_flight() == 0 and server.admission.busy == 0)
