"""Structured output over gRPC, end to end on the simulator: every answer satisfies its
constraint, streamed and whole alike; one cut by max_tokens says so; bad constraints
are refused up front, naming the field, with nothing left in flight."""

from __future__ import annotations

import json
import re
from typing import Any

import grpc
import jsonschema
import pytest
from google.rpc import error_details_pb2, status_pb2

from tokenwire.server.app import Server
from tokenwire.v1 import generation_pb2 as pb
from tokenwire.v1 import generation_pb2_grpc as pb_grpc

from ..conftest import ServerFactory, StubFactory


@pytest.fixture
async def server(make_server: ServerFactory) -> Server:
    return await make_server(sim_ttft_ms=0, sim_itl_ms=0)


SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "minLength": 1},
        "population": {"type": "integer", "minimum": 0},
        "rivers": {"type": "array", "items": {"type": "string"}, "maxItems": 3},
        "kind": {"enum": ["town", "city", "village"]},
        "coast": {"type": "boolean"},
    },
    "required": ["city", "population", "kind"],
    "additionalProperties": False,
}
SEEDS = range(24)


def constrained(seed: int, max_tokens: int = 400, **kind: Any) -> pb.GenerateRequest:
    return pb.GenerateRequest(
        prompt="Describe a city",
        sampling=pb.SamplingParams(seed=seed),
        stopping=pb.StoppingOptions(max_tokens=max_tokens),
        structured_output=pb.StructuredOutput(**kind),
    )


async def streamed(
    stub: pb_grpc.GenerationServiceAsyncStub, req: pb.GenerateRequest
) -> tuple[str, int]:
    text, finish = [], 0
    async for msg in stub.Generate(req):
        text.append(msg.text)
        finish = msg.finish_reason or finish
    return "".join(text), finish


async def test_json_schema_answers_validate_streamed_and_whole(
    stub: pb_grpc.GenerationServiceAsyncStub,
) -> None:
    answers = set()
    for seed in SEEDS:
        req = constrained(seed, json_schema=json.dumps(SCHEMA))
        whole = (await stub.Complete(req)).choices[0]
        text, finish = await streamed(stub, req)
        assert (text, finish) == (whole.text, whole.finish_reason), seed
        assert finish == pb.FINISH_REASON_STOP
        jsonschema.validate(json.loads(text), SCHEMA)
        answers.add(text)
    assert len(answers) > len(SEEDS) // 2  # a function of the seed, not one canned answer


async def test_n_sequences_each_satisfy_the_schema(
    stub: pb_grpc.GenerationServiceAsyncStub,
) -> None:
    req = constrained(3, json_schema=json.dumps(SCHEMA))
    req.sampling.n = 4
    answer = await stub.Complete(req)
    assert len(answer.choices) == 4
    for choice in answer.choices:
        jsonschema.validate(json.loads(choice.text), SCHEMA)


@pytest.mark.parametrize(
    ("kind", "check"),
    [
        ({"regex": r"[a-z]{2,12}@[a-z]{2,12}\.(com|org)"}, r"[a-z]{2,12}@[a-z]{2,12}\.(com|org)"),
        ({"regex": r"\d{3}-\d{4}"}, r"[0-9]{3}-[0-9]{4}"),  # \d is Unicode: no more than ASCII here
        (
            {"choice": pb.Choices(choices=["north", "south", "east", "west"])},
            "north|south|east|west",
        ),
        ({"ebnf_grammar": 'root ::= "yes" | "no" | "maybe: " [a-z]+'}, "yes|no|maybe: [a-z]+"),
    ],
)
async def test_regex_choice_and_grammar_answers_match(
    stub: pb_grpc.GenerationServiceAsyncStub, kind: dict[str, Any], check: str
) -> None:
    for seed in SEEDS:
        text = (await stub.Complete(constrained(seed, **kind))).choices[0].text
        assert re.fullmatch(check, text), (seed, text)


async def test_json_object_answers_are_objects(stub: pb_grpc.GenerationServiceAsyncStub) -> None:
    for seed in SEEDS:
        text = (await stub.Complete(constrained(seed, json_object=True))).choices[0].text
        assert isinstance(json.loads(text), dict)


async def test_an_answer_cut_by_max_tokens_finishes_length(
    stub: pb_grpc.GenerationServiceAsyncStub,
) -> None:
    for seed in range(8):
        choice = (
            await stub.Complete(constrained(seed, 6, json_schema=json.dumps(SCHEMA)))
        ).choices[0]
        assert choice.finish_reason == pb.FINISH_REASON_LENGTH
        with pytest.raises(ValueError):
            json.loads(choice.text)


def bad_request_field(error: grpc.aio.AioRpcError) -> str:
    for key, value in error.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            status = status_pb2.Status.FromString(value)
            detail = error_details_pb2.BadRequest()
            assert status.details[0].Unpack(detail)
            return str(detail.field_violations[0].field)
    raise AssertionError("no BadRequest detail")


@pytest.mark.parametrize(
    ("kind", "field"),
    [
        (
            {"json_schema": '{"type": "object", "properties": {"a": {"type": "strin"}}}'},
            "structured_output.json_schema",
        ),
        ({"json_schema": "{"}, "structured_output.json_schema"),
        ({"regex": "(unclosed"}, "structured_output.regex"),
        ({"ebnf_grammar": "root ::= missing"}, "structured_output.ebnf_grammar"),
        ({"choice": pb.Choices()}, "structured_output.choice.choices"),
        ({"json_object": False}, "structured_output.json_object"),
    ],
)
async def test_bad_constraints_are_refused_up_front(
    server: Server, stub: pb_grpc.GenerationServiceAsyncStub, kind: dict[str, Any], field: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as whole:
        await stub.Complete(constrained(1, **kind))
    with pytest.raises(grpc.aio.AioRpcError) as streamed:
        async for _ in stub.Generate(constrained(1, **kind)):
            pass
    for caught in (whole, streamed):
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert (caught.value.details() or "").startswith(field)
        assert bad_request_field(caught.value) == field
    assert server.engine.in_flight() == 0


async def test_constraints_with_ignore_eos_are_refused(
    stub: pb_grpc.GenerationServiceAsyncStub,
) -> None:
    req = constrained(1, regex="a+")
    req.stopping.ignore_eos = True
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Complete(req)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_request_field(caught.value) == "stopping.ignore_eos"


async def test_schema_size_is_limited(make_server: ServerFactory, stub_for: StubFactory) -> None:
    server = await make_server(max_grammar_bytes=1024)
    stub = await stub_for(server)
    big = {"type": "object", "properties": {f"p{i}": {"type": "string"} for i in range(100)}}
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Complete(constrained(1, json_schema=json.dumps(big)))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "limit of 1024" in (caught.value.details() or "")
