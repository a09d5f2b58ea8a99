"""Request building and error mapping, offline: what must hold whatever the server does."""

from __future__ import annotations

import grpc
import grpc.aio
import pytest
from google.protobuf.duration_pb2 import Duration
from google.rpc import code_pb2, error_details_pb2, status_pb2

from tokenwire.client import (
    AuthenticationError,
    Cancelled,
    DeadlineExceeded,
    GenerateOptions,
    InvalidRequest,
    ModelNotFound,
    Overloaded,
    RequestIdInUse,
    ResourceExhausted,
    ServerError,
    TokenwireError,
    Unavailable,
)
from tokenwire.client._convert import OPTION_NAMES, generate_request, tokenize_request
from tokenwire.client._errors import from_rpc_error


def test_every_documented_option_reaches_the_request() -> None:
    assert set(GenerateOptions.__annotations__) == OPTION_NAMES


def test_only_the_options_given_are_set() -> None:
    request = generate_request("Hi", None, None, {})
    assert request.prompt == "Hi"
    for group in ("sampling", "stopping", "output", "stream"):
        assert not request.HasField(group)

    # An explicit zero is sent: the server must be able to refuse max_tokens=0.
    request = generate_request("Hi", None, None, {"max_tokens": 0, "temperature": 0.0})
    assert request.stopping.HasField("max_tokens") and request.stopping.max_tokens == 0
    assert request.sampling.HasField("temperature")
    assert not request.sampling.HasField("top_p")
    assert not request.HasField("output")


def test_options_land_in_their_groups() -> None:
    options: GenerateOptions = {
        "stop": "END",
        "stop_token_ids": [7, 8],
        "seed": 2**63,
        "n": 2,
        "logprobs": True,
        "streaming_step": 4,
        "request_id": "r1",
        "model": "m",
    }
    request = generate_request(None, [("user", "Hi"), {"role": "x", "content": "y"}], None, options)
    assert list(request.stopping.stop) == ["END"]
    assert list(request.stopping.stop_token_ids) == [7, 8]
    assert request.sampling.seed == 2**63 and request.sampling.n == 2
    assert request.output.logprobs and request.stream.streaming_step == 4
    assert (request.request_id, request.model) == ("r1", "m")
    assert [(m.role, m.content) for m in request.messages.messages] == [("user", "Hi"), ("x", "y")]


def test_inputs_are_exclusive() -> None:
    assert generate_request(None, None, [1, 2], {}).token_ids.ids == [1, 2]
    with pytest.raises(TypeError, match="exactly one"):
        generate_request("a", [("user", "b")], None, {})
    with pytest.raises(TypeError, match="exactly one"):
        tokenize_request(None, None, None)
    request = tokenize_request("a", None, False)
    assert request.HasField("add_special_tokens") and not request.add_special_tokens
    assert not tokenize_request("a", None, None).HasField("add_special_tokens")


def rpc_error(
    code: grpc.StatusCode, *details: error_details_pb2.BadRequest | error_details_pb2.RetryInfo
) -> grpc.RpcError:
    """A failed call as grpc.aio raises it, with a rich status when details are given."""
    status = status_pb2.Status(code=getattr(code_pb2, code.name), message="why")
    for detail in details:
        status.details.add().Pack(detail)
    trailing = grpc.aio.Metadata(("grpc-status-details-bin", status.SerializeToString()))
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), trailing, details="why")


def test_bad_request_detail_becomes_field_violations() -> None:
    bad = error_details_pb2.BadRequest()
    bad.field_violations.add(field="stopping.max_tokens", description="must be at least 1")
    error = from_rpc_error(rpc_error(grpc.StatusCode.INVALID_ARGUMENT, bad))
    assert isinstance(error, InvalidRequest)
    assert [(v.field, v.description) for v in error.field_violations] == [
        ("stopping.max_tokens", "must be at least 1")
    ]
    assert error.details == "why" and str(error) == "INVALID_ARGUMENT: why"


def test_retry_info_detail_becomes_retry_after() -> None:
    retry = error_details_pb2.RetryInfo(retry_delay=Duration(seconds=1, nanos=500_000_000))
    error = from_rpc_error(rpc_error(grpc.StatusCode.RESOURCE_EXHAUSTED, retry))
    assert isinstance(error, Overloaded) and error.retry_after == 1.5
    bare = from_rpc_error(rpc_error(grpc.StatusCode.RESOURCE_EXHAUSTED))
    # No hint: a limit the same call would hit again, not a full queue.
    assert isinstance(bare, ResourceExhausted) and not isinstance(bare, Overloaded)


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        (grpc.StatusCode.OUT_OF_RANGE, InvalidRequest),
        (grpc.StatusCode.NOT_FOUND, ModelNotFound),
        (grpc.StatusCode.ALREADY_EXISTS, RequestIdInUse),
        (grpc.StatusCode.UNAUTHENTICATED, AuthenticationError),
        (grpc.StatusCode.PERMISSION_DENIED, AuthenticationError),
        (grpc.StatusCode.UNAVAILABLE, Unavailable),
        (grpc.StatusCode.DEADLINE_EXCEEDED, DeadlineExceeded),
        (grpc.StatusCode.CANCELLED, Cancelled),
        (grpc.StatusCode.INTERNAL, ServerError),
        (grpc.StatusCode.UNIMPLEMENTED, ServerError),
    ],
)
def test_every_code_maps_to_one_class(code: grpc.StatusCode, kind: type[TokenwireError]) -> None:
    error = from_rpc_error(rpc_error(code))
    assert type(error) is kind and error.code == code
