"""The asyncio `AsyncClient` against a real server over loopback."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest

from tests.helpers import ServerProcess, async_wait_for, metric_value
from tokenwire.client import (
    AsyncClient,
    Chunk,
    DeadlineExceeded,
    GenerateOptions,
    InvalidRequest,
)

IN_FLIGHT = "tokenwire_engine_requests_in_flight"
ENDLESS: GenerateOptions = {"max_tokens": 1000, "ignore_eos": True}


@pytest.fixture
async def client(sim_server: ServerProcess) -> AsyncIterator[AsyncClient]:
    async with AsyncClient(sim_server.target, timeout=30) as client:
        yield client


def cancelled_aborts(server: ServerProcess) -> float:
    return metric_value(server.metrics_url, "tokenwire_aborts_total", {"reason": "cancelled"})


async def wait_until_idle(server: ServerProcess) -> None:
    await async_wait_for(lambda: metric_value(server.metrics_url, IN_FLIGHT) == 0)


async def test_async_for_streams_text_and_progress(client: AsyncClient) -> None:
    stream = client.generate("Tell me about rivers", max_tokens=20, ignore_eos=True, seed=4)
    texts = []
    async for chunk in stream:
        texts.append(chunk.text)
        assert stream.text == "".join(texts)
    assert stream.done and stream.token_count == 20
    assert stream.tokens_per_second > 0
    assert stream.finish_reason == "length"
    assert stream.usage is not None and stream.usage.completion_tokens == 20
    assert stream.timing is not None


async def test_await_reads_to_the_end_calling_sync_and_async_callbacks(
    client: AsyncClient,
) -> None:
    seen: list[Chunk] = []
    stream = await client.generate("Hi", max_tokens=8, ignore_eos=True, on_token=seen.append)
    assert stream.done and "".join(c.text for c in seen) == stream.text

    async def record(chunk: Chunk) -> None:
        await asyncio.sleep(0)  # a real coroutine: the stream must await it
        seen.append(chunk)

    seen.clear()
    stream = await client.generate("Hi", max_tokens=8, ignore_eos=True, on_token=record)
    assert sum(len(c.token_ids) for c in seen) == stream.token_count == 8


async def test_complete_returns_the_streamed_text_for_the_same_seed(client: AsyncClient) -> None:
    options: GenerateOptions = {"max_tokens": 32, "seed": 99, "n": 2}
    streamed = await client.generate("Write a poem", **options).collect()
    completed = await client.complete("Write a poem", **options)
    assert [c.text for c in completed.choices] == [c.text for c in streamed.choices]
    assert completed.text != ""


async def test_chat_model_info_and_tokenize(client: AsyncClient) -> None:
    messages = [("user", "What is a river?")]
    stream = await client.chat(messages, max_tokens=6, ignore_eos=True)
    assert stream.text and stream.usage is not None
    assert stream.usage.prompt_tokens == len(await client.tokenize(messages=messages))
    assert (await client.model_info()).engine == "simulated"


async def test_breaking_out_of_async_for_cancels_the_rpc(slow_sim_server: ServerProcess) -> None:
    before = cancelled_aborts(slow_sim_server)
    async with AsyncClient(slow_sim_server.target) as client:
        stream = client.generate("Tell me a long story", **ENDLESS)
        async for _chunk in stream:
            break
        # The client and the stream are still referenced: the loop's exit cancelled it.
        await wait_until_idle(slow_sim_server)
        await async_wait_for(lambda: cancelled_aborts(slow_sim_server) == before + 1)
        assert stream.cancelled and stream.finish_reason == "cancelled"


async def test_cancelling_the_task_cancels_the_rpc_and_propagates(
    slow_sim_server: ServerProcess,
) -> None:
    first_chunk = asyncio.Event()
    async with AsyncClient(slow_sim_server.target) as client:

        async def consume() -> None:
            async for _chunk in client.generate("Tell me a long story", **ENDLESS):
                first_chunk.set()

        task = asyncio.create_task(consume())
        await asyncio.wait_for(first_chunk.wait(), 10)
        task.cancel()
        # The stream must not swallow the task's own cancellation.
        with pytest.raises(asyncio.CancelledError):
            await task
        await wait_until_idle(slow_sim_server)


async def test_cancel_inside_the_loop_ends_it_quietly(slow_sim_server: ServerProcess) -> None:
    async with AsyncClient(slow_sim_server.target) as client:
        async with client.generate("Tell me a long story", **ENDLESS) as stream:
            count = 0
            async for _chunk in stream:
                count += 1
                stream.cancel()
        assert count == 1 and stream.cancelled
        await wait_until_idle(slow_sim_server)


async def test_deadline_raises_deadline_exceeded(slow_sim_server: ServerProcess) -> None:
    async with AsyncClient(slow_sim_server.target) as client:
        with pytest.raises(DeadlineExceeded) as caught:
            await client.generate("Tell me a long story", timeout=0.5, **ENDLESS)
        assert caught.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
        with pytest.raises(DeadlineExceeded):
            await client.complete("Tell me a long story", timeout=0.3, **ENDLESS)
    await wait_until_idle(slow_sim_server)


async def test_invalid_argument_names_the_field(client: AsyncClient) -> None:
    with pytest.raises(InvalidRequest) as caught:
        await client.complete("Hi", max_tokens=0)
    assert "stopping.max_tokens" in [v.field for v in caught.value.field_violations]
    with pytest.raises(InvalidRequest) as caught:
        async for _chunk in client.generate("Hi", max_tokens=0):
            pass
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
