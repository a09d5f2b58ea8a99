"""Generate over a real loopback connection: incremental delivery, grouping, equality
with Complete, UTF-8 safety, n > 1, logprobs, stops and the input kinds."""

from __future__ import annotations

import math

import pytest

from tokenwire.server.engines.simtok import SimTokenizer
from tokenwire.v1 import generation_pb2 as pb

FIXED = pb.StoppingOptions(max_tokens=20, ignore_eos=True)


def request(**fields: object) -> pb.GenerateRequest:
    fields.setdefault("prompt", "tell me about the river")
    fields.setdefault("stopping", FIXED)
    return pb.GenerateRequest(**fields)  # type: ignore[arg-type]


async def collect(stub, req: pb.GenerateRequest) -> list[pb.GenerateResponse]:
    return [m async for m in stub.Generate(req)]


async def test_messages_arrive_while_the_engine_is_still_generating(make_server, stub_for):
    server = await make_server(sim_ttft_ms=5, sim_itl_ms=40)
    stub = await stub_for(server)
    seen_while_generating = 0
    async for msg in stub.Generate(request()):
        if server.engine.in_flight() == 1 and not msg.finish_reason:
            seen_while_generating += 1
    # Every message but the last arrived while the request was still in the engine.
    assert seen_while_generating == 19
    assert msg.finish_reason == pb.FINISH_REASON_LENGTH


@pytest.mark.parametrize(
    ("stream", "expected_sizes"),
    [
        (pb.StreamOptions(streaming_step=1), [1] * 20),
        (pb.StreamOptions(streaming_step=4), [4] * 5),
        (pb.StreamOptions(streaming_step=6), [6, 6, 6, 2]),
        (pb.StreamOptions(streaming_step=1000), [20]),
        (pb.StreamOptions(streaming_step=8, max_batch_delay_ms=0), [1] * 20),
    ],
)
async def test_streaming_step_sets_tokens_per_message(
    make_server, stub_for, stream, expected_sizes
):
    # At itl 0 the simulator hands over exactly one token per step: sizes are exact.
    server = await make_server(sim_ttft_ms=0, sim_itl_ms=0)
    msgs = await collect(await stub_for(server), request(stream=stream))
    assert [len(m.token_ids) for m in msgs] == expected_sizes
    assert [m.completion_tokens for m in msgs][-1] == 20


async def test_max_batch_delay_bounds_how_long_tokens_wait(make_server, stub_for):
    server = await make_server(sim_ttft_ms=1, sim_itl_ms=20)
    stub = await stub_for(server)
    # A step that is never reached: only the delay bound can flush before the end.
    req = request(stream=pb.StreamOptions(streaming_step=1000, max_batch_delay_ms=50))
    msgs = await collect(stub, req)
    sizes = [len(m.token_ids) for m in msgs]
    assert sum(sizes) == 20
    assert len(msgs) >= 3, sizes  # 20 tokens 20 ms apart span 380 ms: several flushes
    assert max(sizes) < 20


async def test_zero_step_sends_what_is_available(stub):
    msgs = await collect(stub, request(stream=pb.StreamOptions(streaming_step=0)))
    assert sum(len(m.token_ids) for m in msgs) == 20
    assert all(m.token_ids for m in msgs)


@pytest.mark.parametrize("seed", [1, 2, 3, 42])
async def test_streamed_text_equals_complete(stub, seed):
    req = request(
        sampling=pb.SamplingParams(seed=seed, n=2),
        stopping=pb.StoppingOptions(max_tokens=64),
        stream=pb.StreamOptions(streaming_step=3),
    )
    msgs = await collect(stub, req)
    done = await stub.Complete(req)
    for choice in done.choices:
        deltas = [m for m in msgs if m.index == choice.index]
        assert "".join(m.text for m in deltas) == choice.text
        assert [t for m in deltas for t in m.token_ids] == list(choice.token_ids)
        assert deltas[-1].finish_reason == choice.finish_reason != pb.FINISH_REASON_UNSPECIFIED
    assert done.usage.completion_tokens == sum(len(m.token_ids) for m in msgs)
    assert msgs[-1].usage == done.usage


async def test_usage_and_timing_only_on_the_final_message(stub):
    msgs = await collect(stub, request(sampling=pb.SamplingParams(n=3)))
    assert all(not m.HasField("usage") and not m.HasField("timing") for m in msgs[:-1])
    last = msgs[-1]
    assert last.usage.completion_tokens == 60
    assert last.usage.total_tokens == last.usage.prompt_tokens + 60
    assert last.usage.prompt_tokens > 0
    assert 0 < last.timing.time_to_first_token_ms <= last.timing.total_ms
    assert {m.index for m in msgs} == {0, 1, 2}
    finishes = [m for m in msgs if m.finish_reason]
    assert sorted(m.index for m in finishes) == [0, 1, 2]


async def test_utf8_deltas_are_whole_characters_across_many_seeds(make_server, stub_for):
    server = await make_server(sim_ttft_ms=0, sim_itl_ms=0)
    stub = await stub_for(server)
    tokenizer = SimTokenizer()
    split_characters = 0
    for seed in range(120):
        req = request(
            sampling=pb.SamplingParams(seed=seed), stopping=pb.StoppingOptions(max_tokens=48)
        )
        msgs = await collect(stub, req)
        for m in msgs:
            # Only the last message may end a character cut off by max_tokens (as U+FFFD).
            assert "\ufffd" not in m.text or m.finish_reason
            m.text.encode("utf-8")  # no lone surrogates: valid UTF-8 on the wire
            if m.token_ids and not m.text:
                split_characters += 1  # bytes of a character waiting for the rest
        ids = [t for m in msgs for t in m.token_ids]
        # The text is the tokenizer's decode of the ids.
        assert "".join(m.text for m in msgs) == tokenizer.decode(ids)
    assert split_characters > 20, "the simulator should split multi-byte characters often"


async def test_logprobs_and_top_logprobs(stub):
    req = request(
        sampling=pb.SamplingParams(seed=5),
        output=pb.OutputOptions(top_logprobs=3),
        stream=pb.StreamOptions(streaming_step=4),
    )
    msgs = await collect(stub, req)
    total = 0.0
    for m in msgs:
        assert len(m.logprobs) == len(m.token_ids)
        for lp, token in zip(m.logprobs, m.token_ids, strict=True):
            assert lp.token_id == token and lp.logprob <= 0 and lp.token
            assert len(lp.top) == 3
            assert lp.top[0].token_id == token
            assert lp.top[0].logprob >= lp.top[1].logprob >= lp.top[2].logprob
            total += lp.logprob
        assert math.isclose(m.cumulative_logprob, total, rel_tol=1e-4, abs_tol=1e-4)


async def test_no_logprobs_unless_asked(stub):
    msgs = await collect(stub, request())
    assert all(not m.logprobs and not m.HasField("cumulative_logprob") for m in msgs)


async def test_stop_string_ends_the_sequence_and_is_not_sent(stub):
    base = request(sampling=pb.SamplingParams(seed=9), stopping=pb.StoppingOptions(max_tokens=60))
    full = "".join(m.text for m in await collect(stub, base))
    words = full.split()
    stop = words[len(words) // 2]
    cut = full.index(stop)
    for include in (False, True):
        stopping = pb.StoppingOptions(max_tokens=60, stop=[stop], include_stop_in_output=include)
        req = request(sampling=pb.SamplingParams(seed=9), stopping=stopping)
        msgs = await collect(stub, req)
        text = "".join(m.text for m in msgs)
        assert text == (full[: cut + len(stop)] if include else full[:cut])
        assert msgs[-1].finish_reason == pb.FINISH_REASON_STOP_SEQUENCE
        assert msgs[-1].stop_match.stop_text == stop


async def test_stop_token_id_ends_the_sequence(stub):
    base = request(sampling=pb.SamplingParams(seed=4), stopping=pb.StoppingOptions(max_tokens=30))
    ids = [t for m in await collect(stub, base) for t in m.token_ids]
    stop_id = ids[10]
    first = ids.index(stop_id)
    stopping = pb.StoppingOptions(max_tokens=30, stop_token_ids=[stop_id])
    msgs = await collect(stub, request(sampling=pb.SamplingParams(seed=4), stopping=stopping))
    got = [t for m in msgs for t in m.token_ids]
    assert got == ids[: first + 1]
    assert msgs[-1].finish_reason == pb.FINISH_REASON_STOP_SEQUENCE
    assert msgs[-1].stop_match.stop_token_id == stop_id


async def test_end_of_sequence_min_tokens_and_ignore_eos(stub):
    eos = (await stub.GetModelInfo(pb.GetModelInfoRequest())).eos_token_id
    natural = await stub.Complete(
        request(sampling=pb.SamplingParams(seed=11), stopping=pb.StoppingOptions(max_tokens=2000))
    )
    choice = natural.choices[0]
    assert choice.finish_reason == pb.FINISH_REASON_STOP
    assert choice.token_ids[-1] == eos
    length = len(choice.token_ids)

    longer = await stub.Complete(
        request(
            sampling=pb.SamplingParams(seed=11),
            stopping=pb.StoppingOptions(max_tokens=2000, min_tokens=length + 10),
        )
    )
    assert len(longer.choices[0].token_ids) >= length + 10

    forced = await stub.Complete(
        request(
            sampling=pb.SamplingParams(seed=11),
            stopping=pb.StoppingOptions(max_tokens=length + 5, ignore_eos=True),
        )
    )
    assert forced.choices[0].finish_reason == pb.FINISH_REASON_LENGTH
    assert eos not in forced.choices[0].token_ids


async def test_chat_and_token_id_inputs_match_tokenize(stub):
    chat = pb.ChatMessages(
        messages=[
            pb.ChatMessage(role="system", content="be brief"),
            pb.ChatMessage(role="user", content="hello there"),
        ]
    )
    ids = (await stub.Tokenize(pb.TokenizeRequest(messages=chat))).token_ids
    via_chat = await stub.Complete(request(prompt=None, messages=chat))
    via_ids = await stub.Complete(request(prompt=None, token_ids=pb.TokenIds(ids=ids)))
    assert via_chat.choices[0].text == via_ids.choices[0].text
    assert via_chat.usage.prompt_tokens == len(ids)


async def test_request_id_is_echoed_or_assigned(stub):
    mine = await collect(stub, request(request_id="order-66"))
    assert {m.request_id for m in mine} == {"order-66"}
    assigned = await collect(stub, request())
    ids = {m.request_id for m in assigned}
    assert len(ids) == 1 and len(ids.pop()) >= 32


async def test_model_info_and_tokenize(stub):
    info = await stub.GetModelInfo(pb.GetModelInfoRequest())
    assert info.model == "tokenwire-sim" and info.engine == "simulated"
    assert info.vocab_size > 256 and info.max_context_length >= 16
    assert info.limits.max_tokens >= info.limits.default_max_tokens > 0
    tokens = await stub.Tokenize(
        pb.TokenizeRequest(prompt="the river café", add_special_tokens=False)
    )
    assert len(tokens.tokens) == len(tokens.token_ids)
    assert tokens.tokens[:2] == ["the", " river"]
    assert "<0xC3>" in tokens.tokens  # é spelt as two byte tokens
    with_bos = await stub.Tokenize(pb.TokenizeRequest(prompt="the river café"))
    assert list(with_bos.token_ids[1:]) == list(tokens.token_ids)
