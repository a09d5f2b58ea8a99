"""Usage receipts in trailing metadata, so gateways can bill without reading the stream."""

from __future__ import annotations

from tokenwire.v1 import generation_pb2 as pb


def as_dict(metadata: object) -> dict[str, str]:
    return {k: v for k, v in metadata if k.startswith("tokenwire-")}  # type: ignore[attr-defined]


async def test_generate_and_complete_carry_a_receipt(stub):
    req = pb.GenerateRequest(
        prompt="the river",
        sampling=pb.SamplingParams(n=2),
        stopping=pb.StoppingOptions(max_tokens=7, ignore_eos=True),
    )
    call = stub.Generate(req)
    messages = [m async for m in call]
    receipt = as_dict(await call.trailing_metadata())
    assert receipt == {
        "tokenwire-prompt-tokens": str(messages[-1].usage.prompt_tokens),
        "tokenwire-completion-tokens": "14",
        "tokenwire-finish": "length,length",
    }
    unary = stub.Complete(req)
    await unary
    assert as_dict(await unary.trailing_metadata())["tokenwire-completion-tokens"] == "14"


async def test_stop_sequence_finish_in_receipt(stub):
    req = pb.GenerateRequest(
        prompt="x",
        stopping=pb.StoppingOptions(max_tokens=50, stop=[" "], ignore_eos=True),
    )
    call = stub.Generate(req)
    [m async for m in call]
    assert as_dict(await call.trailing_metadata())["tokenwire-finish"] == "stop_sequence"
