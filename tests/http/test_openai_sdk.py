"""The official OpenAI Python SDK, unmodified, against the HTTP door of a real server."""

from __future__ import annotations

import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from tokenwire.server.app import Server
from tokenwire.v1 import generation_pb2 as pb

from ..helpers import sample

MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Tell me about rivers"}]
PROMPT = "Tell me about rivers"


async def test_chat_whole_answer(oai: openai.AsyncOpenAI, http_server: Server) -> None:
    reply = await oai.chat.completions.create(
        model=http_server.engine.description.name, messages=MESSAGES, max_tokens=12, seed=7
    )
    assert reply.object == "chat.completion"
    assert reply.id.startswith("chatcmpl-")
    [choice] = reply.choices
    assert choice.message.role == "assistant"
    assert choice.message.content
    assert choice.finish_reason == "length"
    assert reply.usage is not None
    assert reply.usage.completion_tokens == 12
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + 12
    assert reply.model == http_server.engine.description.name


async def test_chat_stream_equals_whole_answer_and_grpc_complete(
    oai: openai.AsyncOpenAI, http_server: Server, stub_for
) -> None:
    whole = await oai.chat.completions.create(model="", messages=MESSAGES, max_tokens=20, seed=11)
    stream = await oai.chat.completions.create(
        model="", messages=MESSAGES, max_tokens=20, seed=11, stream=True
    )
    parts, roles, finishes = [], [], []
    async for chunk in stream:
        assert chunk.object == "chat.completion.chunk"
        for c in chunk.choices:
            if c.delta.role:
                roles.append(c.delta.role)
            parts.append(c.delta.content or "")
            if c.finish_reason:
                finishes.append(c.finish_reason)
    assert roles == ["assistant"]
    assert finishes == ["length"]
    assert "".join(parts) == whole.choices[0].message.content

    stub = await stub_for(http_server)
    complete = await stub.Complete(
        pb.GenerateRequest(
            messages=pb.ChatMessages(messages=[pb.ChatMessage(role="user", content=PROMPT)]),
            sampling=pb.SamplingParams(seed=11),
            stopping=pb.StoppingOptions(max_tokens=20),
        )
    )
    assert complete.choices[0].text == whole.choices[0].message.content


async def test_completions_stream_and_whole(oai: openai.AsyncOpenAI) -> None:
    whole = await oai.completions.create(model="", prompt="Once upon a time", max_tokens=10, seed=3)
    assert whole.object == "text_completion"
    assert whole.choices[0].finish_reason == "length"
    stream = await oai.completions.create(
        model="", prompt="Once upon a time", max_tokens=10, seed=3, stream=True
    )
    text = "".join([c.choices[0].text async for c in stream if c.choices])
    assert text == whole.choices[0].text


async def test_token_id_prompt(oai: openai.AsyncOpenAI) -> None:
    reply = await oai.completions.create(model="", prompt=[5, 6, 7], max_tokens=4)
    assert reply.usage is not None and reply.usage.prompt_tokens == 3
    assert reply.usage.completion_tokens == 4


async def test_n_choices_through_the_stream_helper(oai: openai.AsyncOpenAI) -> None:
    # The SDK's helper indexes its snapshot by choice.index: first chunks must
    # come in index order, or it raises IndexError.
    async with oai.chat.completions.stream(
        model="", messages=MESSAGES, max_tokens=8, n=3, seed=5
    ) as stream:
        async for _ in stream:
            pass
        # (get_final_completion() refuses answers cut by max_tokens: read the snapshot)
        final = stream.current_completion_snapshot
    assert [c.index for c in final.choices] == [0, 1, 2]
    texts = [c.message.content for c in final.choices]
    assert all(texts) and len(set(texts)) > 1  # seeded per choice, not one text thrice
    assert all(c.finish_reason == "length" for c in final.choices)


async def test_include_usage_sends_a_last_chunk_with_no_choices(oai: openai.AsyncOpenAI) -> None:
    stream = await oai.chat.completions.create(
        model="",
        messages=MESSAGES,
        max_tokens=6,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [c async for c in stream]
    assert all(c.usage is None for c in chunks[:-1])
    last = chunks[-1]
    assert last.choices == []
    assert last.usage is not None and last.usage.completion_tokens == 6


async def test_logprobs_per_chunk(oai: openai.AsyncOpenAI) -> None:
    stream = await oai.chat.completions.create(
        model="", messages=MESSAGES, max_tokens=5, stream=True, logprobs=True, top_logprobs=2
    )
    tokens = []
    async for chunk in stream:
        for c in chunk.choices:
            if c.logprobs and c.logprobs.content:
                for lp in c.logprobs.content:
                    assert lp.logprob <= 0
                    assert len(lp.top_logprobs) == 2
                    assert lp.bytes == list(lp.token.encode())
                    tokens.append(lp.token)
    assert len(tokens) == 5

    whole = await oai.completions.create(model="", prompt="hi", max_tokens=4, logprobs=1)
    completion_lp = whole.choices[0].logprobs
    assert completion_lp is not None and completion_lp.tokens is not None
    assert len(completion_lp.tokens) == 4
    tops = completion_lp.top_logprobs
    assert tops is not None and all(len(t) == 1 for t in tops)
    assert completion_lp.text_offset == sorted(completion_lp.text_offset or [])


async def test_stop_string_ends_with_stop_and_names_the_match(oai: openai.AsyncOpenAI) -> None:
    free = await oai.completions.create(model="", prompt="Tell me a story", max_tokens=40, seed=1)
    text = free.choices[0].text
    stop = text.split()[2]  # a word that comes up part-way through
    cut = await oai.completions.create(
        model="", prompt="Tell me a story", max_tokens=40, seed=1, stop=[stop]
    )
    choice = cut.choices[0]
    assert choice.finish_reason == "stop"
    assert choice.text == text[: text.index(stop)]
    assert choice.model_extra is not None and choice.model_extra["stop_reason"] == stop


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_completion_tokens": 10**6}, "max_completion_tokens"),
        ({"temperature": 5}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"n": 1000}, "n"),
        ({"stop": ["x"] * 100}, "stop"),
        ({"top_logprobs": 3}, "top_logprobs"),
        (
            {"tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": "g"},
            "tool_choice",
        ),
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "x", "schema": {"type": "x"}},
                }
            },
            "response_format.json_schema.schema",
        ),
        ({"extra_body": {"logit_bias": {"5": 10}}}, "logit_bias"),
        ({"extra_body": {"stop_token_ids": [10**9]}}, "stop_token_ids[0]"),
    ],
)
async def test_bad_input_raises_the_sdks_typed_error_naming_the_param(
    oai: openai.AsyncOpenAI, kwargs, param
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await oai.chat.completions.create(model="", messages=MESSAGES, **kwargs)
    assert caught.value.status_code == 400
    assert caught.value.param == param
    assert caught.value.type == "invalid_request_error"


async def test_unknown_model_is_not_found(oai: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        await oai.chat.completions.create(model="no-such-model", messages=MESSAGES)
    assert caught.value.param == "model"
    assert caught.value.code == "model_not_found"


async def test_models_lists_the_served_model(oai: openai.AsyncOpenAI, http_server: Server) -> None:
    models = [m.id async for m in oai.models.list()]
    assert models == [http_server.engine.description.name]


async def test_grpc_and_http_share_one_engine(oai: openai.AsyncOpenAI, http_server: Server) -> None:
    before = http_server.metrics.text().decode()
    await oai.completions.create(model="", prompt="hi", max_tokens=3)
    after = http_server.metrics.text().decode()
    assert sample(after, "tokenwire_tokens_total", {"kind": "completion"}) == (
        sample(before, "tokenwire_tokens_total", {"kind": "completion"}) + 3
    )
    assert (
        sample(
            after, "tokenwire_http_requests_total", {"route": "/v1/completions", "status": "200"}
        )
        == 1
    )


async def test_return_token_ids_gives_each_chunk_its_ids(oai: openai.AsyncOpenAI) -> None:
    # vLLM's extension: clients that count or check tokens get the ids beside the text.
    whole = await oai.completions.create(
        model="", prompt="hi", max_tokens=6, seed=2, extra_body={"return_token_ids": True}
    )
    assert whole.choices[0].model_extra is not None
    ids = whole.choices[0].model_extra["token_ids"]
    assert len(ids) == 6
    stream = await oai.completions.create(
        model="",
        prompt="hi",
        max_tokens=6,
        seed=2,
        stream=True,
        extra_body={"return_token_ids": True},
    )
    streamed = [t async for c in stream for t in (c.choices[0].model_extra or {})["token_ids"]]
    assert streamed == ids
