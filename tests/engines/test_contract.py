"""One contract for every engine: the same assertions against simulated, transformers and
tensorrt-llm (the fake in tests/fakes, which behaves as docs/tensorrt_llm.md says), each
served for real by a tokenwire server on a loopback port."""

from __future__ import annotations

import asyncio
import importlib
import json
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from tokenwire.server.app import Server
from tokenwire.server.engines.simtok import SimTokenizer
from tokenwire.server.settings import Settings
from tokenwire.v1 import generation_pb2 as pb
from tokenwire.v1 import generation_pb2_grpc as pb_grpc

from ..helpers import async_wait_for, sample

FAKES = Path(__file__).resolve().parents[1] / "fakes"
ENGINES = ["simulated", "transformers", "tensorrt-llm"]
ADAPTER = "tuned"  # the LoRA adapter every engine serves beside its model


@dataclass
class Served:
    kind: str
    server: Server
    stub: pb_grpc.GenerationServiceAsyncStub
    info: pb.ModelInfo
    decode: Callable[[list[int], bool], str]  # the tokenizer's decode(ids, skip_special_tokens)

    def metric(self, name: str, **labels: str) -> float:
        return sample(self.server.metrics.text().decode(), name, labels)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from .tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("contract") / "tiny-llama")


@pytest.fixture(scope="session")
def tiny_adapter(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LoRA adapter for the tiny model, with non-zero weights (PEFT's save_pretrained)."""
    pytest.importorskip("peft")
    from .tiny_model import build_tiny_adapter

    return build_tiny_adapter(tiny_model, tmp_path_factory.mktemp("contract") / "tuned")


@pytest.fixture(scope="session")
def adapter_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An adapter directory as far as the simulator and the fake TensorRT-LLM read it."""
    path = tmp_path_factory.mktemp("tuned-config")
    config = {"peft_type": "LORA", "r": 4, "target_modules": ["q_proj", "v_proj"]}
    (path / "adapter_config.json").write_text(json.dumps(config))
    return path


def _forget_fake() -> None:
    for name in [n for n in sys.modules if n == "tensorrt_llm" or n.startswith("tensorrt_llm.")]:
        del sys.modules[name]


@pytest.fixture(params=ENGINES)
async def served(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Served]:
    kind: str = request.param
    base: dict[str, Any] = {"port": 0, "metrics_port": 0, "http_port": 0}
    # The simulator's tokenizer, which the fake TensorRT-LLM shares.
    decode: Callable[[list[int], bool], str] = SimTokenizer().decode
    if kind == "simulated":
        lora = f"{ADAPTER}={request.getfixturevalue('adapter_dir')}"
        settings = Settings(sim_ttft_ms=1, sim_itl_ms=2, lora=lora, **base)
    elif kind == "transformers":
        model = request.getfixturevalue("tiny_model")
        lora = f"{ADAPTER}={request.getfixturevalue('tiny_adapter')}"
        settings = Settings(engine="transformers", model=str(model), lora=lora, **base)
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(model, local_files_only=True)

        def decode(ids: list[int], skip: bool) -> str:
            return str(
                tokenizer.decode(ids, skip_special_tokens=skip, clean_up_tokenization_spaces=False)
            )
    else:
        _forget_fake()
        monkeypatch.syspath_prepend(str(FAKES))
        fake: Any = importlib.import_module("tensorrt_llm._fake")
        fake.step_s = 0.002
        lora = f"{ADAPTER}={request.getfixturevalue('adapter_dir')}"
        settings = Settings(engine="tensorrt-llm", model="fake-model", lora=lora, **base)
    server = Server(settings)
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
    stub = pb_grpc.GenerationServiceStub(channel)
    info = await stub.GetModelInfo(pb.GetModelInfoRequest())
    try:
        yield Served(kind, server, stub, info, decode)
    finally:
        await channel.close()
        await server.stop(grace=0)
        if kind == "tensorrt-llm":
            _forget_fake()


def gen(max_tokens: int = 24, seed: int = 7, n: int = 1, **fields: Any) -> pb.GenerateRequest:
    fields.setdefault("prompt", "the quick brown fox")
    stopping = fields.pop("stopping", None) or pb.StoppingOptions(
        max_tokens=max_tokens, ignore_eos=True
    )
    # Seeded sampling, with top_p set: engines refuse several greedy answers to one request.
    sampling = pb.SamplingParams(seed=seed, n=n, temperature=0.9, top_p=0.95)
    return pb.GenerateRequest(sampling=sampling, stopping=stopping, **fields)


async def stream(s: Served, req: pb.GenerateRequest) -> list[pb.GenerateResponse]:
    return [m async for m in s.stub.Generate(req)]


def by_index(messages: list[pb.GenerateResponse]) -> dict[int, list[pb.GenerateResponse]]:
    out: dict[int, list[pb.GenerateResponse]] = {}
    for m in messages:
        out.setdefault(m.index, []).append(m)
    return out


async def test_streaming_matches_complete(served: Served) -> None:
    req = gen(max_tokens=24)
    messages = await stream(served, req)
    assert len(messages) > 1
    done = await served.stub.Complete(req)
    assert "".join(m.text for m in messages) == done.choices[0].text
    assert [t for m in messages for t in m.token_ids] == list(done.choices[0].token_ids)
    assert messages[-1].finish_reason == pb.FINISH_REASON_LENGTH
    assert messages[-1].usage.completion_tokens == 24 == done.usage.completion_tokens
    assert served.server.engine.in_flight() == 0


async def test_n_sequences_stream_their_own_deltas(served: Served) -> None:
    req = gen(max_tokens=12, n=2)
    indexed = by_index(await stream(served, req))
    done = await served.stub.Complete(req)
    assert sorted(indexed) == [0, 1]
    for choice in done.choices:
        deltas = indexed[choice.index]
        assert [t for m in deltas for t in m.token_ids] == list(choice.token_ids)
        assert "".join(m.text for m in deltas) == choice.text
        assert deltas[-1].completion_tokens == len(choice.token_ids) == 12
        assert [m.finish_reason != 0 for m in deltas].count(True) == 1


async def test_stop_token_id_ends_the_sequence(served: Served) -> None:
    ids = [t for m in await stream(served, gen(max_tokens=16, seed=3)) for t in m.token_ids]
    stop = ids[5]
    first = ids.index(stop)
    stopping = pb.StoppingOptions(max_tokens=16, ignore_eos=True, stop_token_ids=[stop])
    messages = await stream(served, gen(seed=3, stopping=stopping))
    assert [t for m in messages for t in m.token_ids] == ids[: first + 1]
    assert messages[-1].finish_reason == pb.FINISH_REASON_STOP_SEQUENCE
    assert messages[-1].stop_match.stop_token_id == stop


async def test_stop_string_ends_the_text_before_it(served: Served) -> None:
    full = "".join(m.text for m in await stream(served, gen(max_tokens=32, seed=5)))
    # Two visible characters from the second half of the output make the stop string.
    usable = [
        full[i : i + 2]
        for i in range(len(full) // 2, len(full) - 2)
        if full[i : i + 2].isprintable()
        and full[i : i + 2].strip()
        and "\ufffd" not in full[i : i + 2]
    ]
    assert usable, full
    stop = usable[0]
    stopping = pb.StoppingOptions(max_tokens=32, ignore_eos=True, stop=[stop])
    messages = await stream(served, gen(seed=5, stopping=stopping))
    assert "".join(m.text for m in messages) == full[: full.index(stop)]
    assert messages[-1].finish_reason == pb.FINISH_REASON_STOP_SEQUENCE
    assert messages[-1].stop_match.stop_text == stop


async def test_deltas_never_split_a_character(served: Served) -> None:
    split = 0
    for seed in range(8):
        req = gen(max_tokens=40, seed=seed, prompt="café 日本語 🚀 naïve")
        messages = await stream(served, req)
        for m in messages:
            m.text.encode("utf-8")  # valid on the wire
            split += bool(m.token_ids) and not m.text
        # No message but the last ends in U+FFFD: bytes of a character wait for the
        # rest. (A U+FFFD inside a message is the model's own invalid bytes: random
        # weights emit some.)
        assert not any(m.text.endswith("\ufffd") for m in messages[:-1])
        # Deltas add up to the decode of the whole sequence, a character cut off by
        # max_tokens included (as decode renders it).
        ids = [t for m in messages for t in m.token_ids]
        assert "".join(m.text for m in messages) == served.decode(ids, True)
    assert split, "no character was split across tokens: the test proves nothing"


async def test_the_text_is_the_decode_of_the_ids_at_every_end(served: Served) -> None:
    """End of sequence, max_tokens, n > 1, special tokens shown or not: each sequence's
    text, streamed and completed, is the tokenizer's decode of its ids."""
    for seed in range(6):
        skip = seed % 2 == 0
        stopping = pb.StoppingOptions(max_tokens=30 + seed)  # EOS may come first
        req = gen(seed=seed, n=2, stopping=stopping, prompt="café 日本語 🚀")
        req.output.skip_special_tokens = skip
        indexed = by_index(await stream(served, req))
        done = await served.stub.Complete(req)
        for choice in done.choices:
            ids = list(choice.token_ids)
            assert choice.text == served.decode(ids, skip)
            assert "".join(m.text for m in indexed[choice.index]) == choice.text


async def test_the_text_depends_on_the_prompt_and_the_seed(served: Served) -> None:
    async def text(prompt: str, seed: int) -> str:
        req = gen(max_tokens=16, seed=seed, prompt=prompt)
        streamed = "".join(m.text for m in await stream(served, req))
        assert (await served.stub.Complete(req)).choices[0].text == streamed
        return streamed

    prompts = ("the quick brown fox", "hello world", "日本語 🚀")
    first = [await text(p, 7) for p in prompts]
    assert len(set(first)) == 3, first  # another prompt, another answer
    assert [await text(p, 7) for p in prompts] == first  # the same prompt and seed: the same
    assert await text(prompts[0], 8) != first[0]


async def test_cancel_and_deadline_free_the_engine_request(served: Served) -> None:
    room = served.info.max_context_length - 32
    long = gen(max_tokens=min(room, 4000))
    calls = [served.stub.Generate(long) for _ in range(3)]
    for call in calls:
        first = await call.read()
        assert isinstance(first, pb.GenerateResponse) and first.token_ids
    for call in calls:
        call.cancel()
    await async_wait_for(lambda: served.server.engine.in_flight() == 0, within=10)
    await async_wait_for(lambda: served.metric("tokenwire_aborts_total", reason="cancelled") == 3)

    async def expire() -> grpc.StatusCode:
        try:
            await served.stub.Complete(long, timeout=0.05)
        except grpc.aio.AioRpcError as error:
            return error.code()
        return grpc.StatusCode.OK

    codes = await asyncio.gather(*(expire() for _ in range(3)))
    assert set(codes) == {grpc.StatusCode.DEADLINE_EXCEEDED}
    await async_wait_for(lambda: served.server.engine.in_flight() == 0, within=10)
    assert served.metric("tokenwire_aborts_total", reason="deadline") == 3


@pytest.mark.parametrize(
    ("req", "field"),
    [
        (gen(stopping=pb.StoppingOptions(max_tokens=0)), "stopping.max_tokens"),
        (pb.GenerateRequest(token_ids=pb.TokenIds(ids=[10**7])), "token_ids.ids[0]"),
        (pb.GenerateRequest(prompt="x", sampling=pb.SamplingParams(top_p=2)), "sampling.top_p"),
    ],
)
async def test_errors_map_to_status_codes(
    served: Served, req: pb.GenerateRequest, field: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await served.stub.Complete(req)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in (info.value.details() or "")


async def test_prompt_beyond_the_context_is_refused(served: Served) -> None:
    too_long = pb.StoppingOptions(max_tokens=served.info.max_context_length)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await served.stub.Complete(gen(stopping=too_long))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "stopping.max_tokens" in (info.value.details() or "")
    assert served.server.engine.in_flight() == 0


async def test_the_engine_reports_its_load(served: Served) -> None:
    """GetLoad and the load metrics come from the engine: requests running and KV
    blocks in use while it generates, back to idle once it is done."""
    idle = await served.stub.GetLoad(pb.GetLoadRequest())
    assert idle.num_requests_running == 0 and idle.num_requests_waiting == 0
    room = served.info.max_context_length - 32
    calls = [served.stub.Generate(gen(max_tokens=min(room, 4000))) for _ in range(2)]
    for call in calls:
        assert isinstance(await call.read(), pb.GenerateResponse)

    async def busy() -> pb.Load:
        return await served.stub.GetLoad(pb.GetLoadRequest())

    # Engines that report asynchronously (TensorRT-LLM's iteration stats) catch up
    # within their polling period.
    async def running_both() -> bool:
        load = await busy()
        return load.num_requests_running == 2 and load.kv_cache_utilization > 0

    await async_wait_for(running_both, within=10)
    load = await busy()
    # TensorRT-LLM reports its pool's shape with its first iteration's stats.
    assert 0 < load.kv_cache_utilization <= 1
    assert load.kv_total_blocks > 0 and load.kv_block_size > 0
    assert served.metric("tokenwire_num_requests_running") == load.num_requests_running
    for call in calls:
        call.cancel()
    await async_wait_for(lambda: served.server.engine.in_flight() == 0, within=10)

    async def back_to_idle() -> bool:
        load = await busy()
        return load.num_requests_running == 0 and load.kv_cache_utilization == 0

    await async_wait_for(back_to_idle, within=10)
    assert served.metric("tokenwire_kv_cache_utilization") == 0


async def test_a_request_naming_an_adapter_gets_its_text(served: Served) -> None:
    """A LoRA adapter is served by name (a request's model), listed in GetModelInfo, and
    changes the text: the same prompt and seed read otherwise than on the base model."""
    assert list(served.info.adapters) == [ADAPTER]

    async def text(model: str) -> str:
        req = gen(max_tokens=16, model=model)
        streamed = "".join(m.text for m in await stream(served, req))
        assert (await served.stub.Complete(req)).choices[0].text == streamed
        return streamed

    base = await text("")
    assert await text(served.info.model) == base  # naming the model itself: the base model
    tuned = await text(ADAPTER)
    assert tuned and tuned != base
    assert await text(ADAPTER) == tuned
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await served.stub.Complete(gen(model="not-served"))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert served.server.engine.in_flight() == 0


# Short strings: a random model (the tiny one) would otherwise write on to max_tokens.
CITY = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 8},
        "size": {"enum": ["small", "large"]},
    },
    "required": ["name", "size"],
    "additionalProperties": False,
}


async def test_a_json_schema_answer_validates(served: Served) -> None:
    import jsonschema

    for seed in range(4):
        req = gen(
            seed=seed,
            stopping=pb.StoppingOptions(max_tokens=300),
            structured_output=pb.StructuredOutput(json_schema=json.dumps(CITY)),
        )
        messages = await stream(served, req)
        text = "".join(m.text for m in messages)
        assert messages[-1].finish_reason == pb.FINISH_REASON_STOP, (seed, text)
        jsonschema.validate(json.loads(text), CITY)
    assert served.server.engine.in_flight() == 0


async def test_a_regex_answer_matches(served: Served) -> None:
    import re

    for seed in range(4):
        req = gen(
            seed=seed,
            stopping=pb.StoppingOptions(max_tokens=60),
            structured_output=pb.StructuredOutput(regex=r"(yes|no), [a-z]{1,8}"),
        )
        done = (await served.stub.Complete(req)).choices[0]
        assert re.fullmatch(r"(yes|no), [a-z]{1,8}", done.text), (seed, done.text)


async def test_a_forced_tool_call_comes_back_as_a_call(served: Served) -> None:
    import jsonschema

    chat = pb.ChatMessages(messages=[pb.ChatMessage(role="user", content="weather in Paris?")])
    tool = pb.Tool(name="describe_city", parameters_json=json.dumps(CITY))
    req = gen(
        prompt=None,
        messages=chat,
        tools=[tool],
        tool_choice="describe_city",
        parallel_tool_calls=False,  # one call, exactly (else a model may make several)
        stopping=pb.StoppingOptions(max_tokens=300),
    )
    done = (await served.stub.Complete(req)).choices[0]
    assert done.finish_reason == pb.FINISH_REASON_TOOL_CALLS, done
    assert [c.name for c in done.tool_calls] == ["describe_city"] and done.text == ""
    jsonschema.validate(json.loads(done.tool_calls[0].arguments), CITY)
