"""Errors as gRPC statuses: the code from the core's table, plus rich details.

A refusal about a field carries a ``google.rpc.BadRequest`` naming it; a full
queue carries a ``google.rpc.RetryInfo`` with the expected wait. Both ride in
``grpc-status-details-bin``, where every gRPC library's rich-status helpers
look for them.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc
from google.protobuf import duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

from ..core import errors

_DETAILS_KEY = "grpc-status-details-bin"


@dataclass(frozen=True, slots=True)
class Status:
    """What to answer: a code, a message, and trailing metadata with details."""

    code: grpc.StatusCode
    message: str
    trailing_metadata: tuple[tuple[str, str | bytes], ...] = ()


def code_of(error: BaseException) -> grpc.StatusCode:
    return grpc.StatusCode[errors.answer(error).grpc]


def to_status(error: BaseException) -> Status:
    """The status for an error raised while serving a request."""
    code = code_of(error)
    message = errors.message(error)
    field = errors.field_of(error)
    if field is not None:
        description = getattr(error, "description", message)
        violation = error_details_pb2.BadRequest.FieldViolation(
            field=field, description=description
        )
        detail = error_details_pb2.BadRequest(field_violations=[violation])
        return _with_details(code, message, detail)
    if isinstance(error, errors.Overloaded):
        retry = error_details_pb2.RetryInfo(retry_delay=_duration(error.retry_after_s))
        return _with_details(code, message, retry)
    return Status(code, message)


def _with_details(
    code: grpc.StatusCode,
    message: str,
    detail: error_details_pb2.BadRequest | error_details_pb2.RetryInfo,
) -> Status:
    status = status_pb2.Status(code=getattr(code_pb2, code.name), message=message)
    status.details.add().Pack(detail)
    return Status(code, message, ((_DETAILS_KEY, status.SerializeToString()),))


def _duration(seconds: float) -> duration_pb2.Duration:
    whole = int(seconds)
    return duration_pb2.Duration(seconds=whole, nanos=int((seconds - whole) * 1e9))
