"""Request errors and the one table that maps every error to a gRPC status.

Error tree::

    ServiceError                  (this module)
    ├── InvalidArgument           INVALID_ARGUMENT, google.rpc.BadRequest naming the field
    ├── ModelNotFound             NOT_FOUND
    ├── DuplicateRequestId        ALREADY_EXISTS
    ├── Overloaded                RESOURCE_EXHAUSTED, google.rpc.RetryInfo
    ├── DeadlineTooShort          DEADLINE_EXCEEDED, refused before using the engine
    ├── ReaderStalled             RESOURCE_EXHAUSTED: the client stopped reading
    └── AnswerTooLarge            RESOURCE_EXHAUSTED: a Complete answer outgrew one message
    EngineError                   (engines/base.py)
    ├── EngineUnavailable         UNAVAILABLE
    │   └── EngineStalled         (this module) the engine stopped advancing a request
    ├── RequestFailed             INTERNAL
    └── InvalidInput              INVALID_ARGUMENT, BadRequest naming the field

Anything else is a bug: INTERNAL, with the details kept out of the reply.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc
from google.protobuf import duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

from .engines.base import EngineError, EngineUnavailable, InvalidInput, RequestFailed

_DETAILS_KEY = "grpc-status-details-bin"


class ServiceError(Exception):
    """An error the servicer raises on purpose; ``status()`` says how to reply."""

    code = grpc.StatusCode.INTERNAL


class InvalidArgument(ServiceError):
    """A request field is malformed or out of range; ``field`` is its path."""

    code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, field: str, description: str) -> None:
        super().__init__(f"{field}: {description}")
        self.field = field
        self.description = description


class ModelNotFound(ServiceError):
    code = grpc.StatusCode.NOT_FOUND


class DuplicateRequestId(ServiceError):
    code = grpc.StatusCode.ALREADY_EXISTS


class Overloaded(ServiceError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class DeadlineTooShort(ServiceError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class ReaderStalled(ServiceError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class AnswerTooLarge(ServiceError):
    """What grpc itself answers for a message over the limit, but said at once."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class EngineStalled(EngineUnavailable):
    """The engine produced nothing for a request within the engine stall timeout."""


@dataclass(frozen=True, slots=True)
class Status:
    """What to answer: a code, a message, and trailing metadata with details."""

    code: grpc.StatusCode
    message: str
    trailing_metadata: tuple[tuple[str, str | bytes], ...] = ()


def to_status(error: BaseException) -> Status:
    """The status for an error raised while serving a request."""
    if isinstance(error, InvalidArgument | InvalidInput):
        field = error.field if isinstance(error, InvalidArgument) else error.field_path
        return _bad_request(field, error.description)
    if isinstance(error, Overloaded):
        retry = error_details_pb2.RetryInfo(retry_delay=_duration(error.retry_after_s))
        return _with_details(error.code, str(error), retry)
    if isinstance(error, ServiceError):
        return Status(error.code, str(error))
    if isinstance(error, EngineUnavailable):
        return Status(grpc.StatusCode.UNAVAILABLE, f"engine unavailable: {error}")
    if isinstance(error, RequestFailed | EngineError):
        return Status(grpc.StatusCode.INTERNAL, f"engine failed this request: {error}")
    return Status(grpc.StatusCode.INTERNAL, "internal error")


def _bad_request(field: str, description: str) -> Status:
    detail = error_details_pb2.BadRequest(
        field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field=field, description=description)
        ]
    )
    return _with_details(grpc.StatusCode.INVALID_ARGUMENT, f"{field}: {description}", detail)


def _with_details(
    code: grpc.StatusCode,
    message: str,
    detail: error_details_pb2.BadRequest | error_details_pb2.RetryInfo,
) -> Status:
    status = status_pb2.Status(code=_RPC_CODES[code], message=message)
    status.details.add().Pack(detail)
    return Status(code, message, ((_DETAILS_KEY, status.SerializeToString()),))


def _duration(seconds: float) -> duration_pb2.Duration:
    whole = int(seconds)
    return duration_pb2.Duration(seconds=whole, nanos=int((seconds - whole) * 1e9))


_RPC_CODES = {
    grpc.StatusCode.INVALID_ARGUMENT: code_pb2.INVALID_ARGUMENT,
    grpc.StatusCode.RESOURCE_EXHAUSTED: code_pb2.RESOURCE_EXHAUSTED,
}
