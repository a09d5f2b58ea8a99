"""Errors raised by the tokenwire client; every one is a `TokenwireError`.

The tree, with the gRPC status codes that map to each class::

    TokenwireError                 .code (grpc.StatusCode), .details (str)
    ├── InvalidRequest             INVALID_ARGUMENT, OUT_OF_RANGE; .field_violations
    ├── ModelNotFound              NOT_FOUND: `model` is not the served model
    ├── NotResumable               NOT_FOUND from Resume: unknown id, grace over, other key
    ├── StreamAttached             FAILED_PRECONDITION: another stream follows that request
    ├── RequestIdInUse             ALREADY_EXISTS: a live request has this request_id
    ├── ResourceExhausted          RESOURCE_EXHAUSTED without a retry hint: a request or
    │   │                          answer over the message limit, a reader that stalled
    │   └── Overloaded             RESOURCE_EXHAUSTED with a retry hint: queue full;
    │                              .retry_after (seconds)
    ├── AuthenticationError        UNAUTHENTICATED, PERMISSION_DENIED
    ├── Unavailable                UNAVAILABLE: not ready, draining, or unreachable
    ├── DeadlineExceeded           DEADLINE_EXCEEDED: the call's timeout passed
    ├── Cancelled                  CANCELLED by the server (a local cancel() raises nothing)
    └── ServerError                INTERNAL, UNKNOWN and every other code

    try:
        text = client.complete("Hello", max_tokens=0).text
    except tokenwire.client.InvalidRequest as exc:
        print(exc.field_violations)   # (FieldViolation(field='stopping.max_tokens', ...),)
    except tokenwire.client.Overloaded as exc:
        time.sleep(exc.retry_after or 1.0)

gRPC errors become these in one place, `from_rpc_error()`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar, cast

import grpc
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

_M = TypeVar("_M", bound=Message)


@dataclass(frozen=True, slots=True)
class FieldViolation:
    """One bad field of a request, from the server's google.rpc.BadRequest detail."""

    field: str
    """Path of the field in the request, e.g. ``stopping.max_tokens``."""
    description: str


class TokenwireError(Exception):
    """Base class of every error the client raises for a failed call."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details


class InvalidRequest(TokenwireError):
    """The request was malformed or out of range; `field_violations` names the fields."""

    def __init__(
        self,
        code: grpc.StatusCode,
        details: str,
        field_violations: tuple[FieldViolation, ...] = (),
    ) -> None:
        super().__init__(code, details)
        self.field_violations = field_violations


class ModelNotFound(TokenwireError):
    """The request named a model other than the served one."""


class RequestIdInUse(TokenwireError):
    """Another live request already uses this request_id."""


class ResourceExhausted(TokenwireError):
    """A limit was hit that retrying the same call will hit again (no retry hint)."""


class Overloaded(ResourceExhausted):
    """The server is at capacity; try again after `retry_after` seconds."""

    def __init__(
        self, code: grpc.StatusCode, details: str, retry_after: float | None = None
    ) -> None:
        super().__init__(code, details)
        self.retry_after = retry_after


class AuthenticationError(TokenwireError):
    """Credentials were missing or refused."""


class Unavailable(TokenwireError):
    """The server cannot take the call now: unreachable, not ready, or shutting down."""


class NotResumable(TokenwireError):
    """Resume found nothing to attach to: an unknown request id, its grace is over,
    or another API key started it (docs/resume.md)."""


class StreamAttached(TokenwireError):
    """Resume was refused: another stream is attached to that request."""


class DeadlineExceeded(TokenwireError):
    """The call's deadline passed; the server aborted the generation."""


class Cancelled(TokenwireError):
    """The call was cancelled by the server or the network, not by this client."""


class ServerError(TokenwireError):
    """The server failed (INTERNAL) or answered a code the client does not expect."""


_CLASS_BY_CODE: dict[grpc.StatusCode, type[TokenwireError]] = {
    grpc.StatusCode.NOT_FOUND: ModelNotFound,
    grpc.StatusCode.ALREADY_EXISTS: RequestIdInUse,
    grpc.StatusCode.UNAUTHENTICATED: AuthenticationError,
    grpc.StatusCode.PERMISSION_DENIED: AuthenticationError,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.CANCELLED: Cancelled,
    grpc.StatusCode.FAILED_PRECONDITION: StreamAttached,
}


def from_rpc_error(error: grpc.RpcError, resume: bool = False) -> TokenwireError:
    """The `TokenwireError` for a failed call (a sync or an aio `grpc.RpcError`);
    ``resume``: the call was a Resume, whose NOT_FOUND is about the request id."""
    code: grpc.StatusCode = error.code()
    details: str = error.details() or ""
    if resume and code == grpc.StatusCode.NOT_FOUND:
        return NotResumable(code, details)
    if code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.OUT_OF_RANGE):
        violations = tuple(
            FieldViolation(violation.field, violation.description)
            for bad_request in _details(error, error_details_pb2.BadRequest)
            for violation in bad_request.field_violations
        )
        return InvalidRequest(code, details, violations)
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        retry_infos = _details(error, error_details_pb2.RetryInfo)
        if not retry_infos:
            return ResourceExhausted(code, details)
        return Overloaded(code, details, retry_infos[0].retry_delay.ToTimedelta().total_seconds())
    return _CLASS_BY_CODE.get(code, ServerError)(code, details)


def _details(error: grpc.RpcError, message_type: type[_M]) -> list[_M]:
    """The details of this type in the call's rich status (grpc-status-details-bin)."""
    try:
        # Raised errors are Calls too (sync), or carry the same accessors (aio).
        status: status_pb2.Status | None = rpc_status.from_call(cast(grpc.Call, error))
    except ValueError:
        # The rich status disagrees with the call's code or message: drop the details
        # rather than hide the real error behind a parsing one.
        return []
    found = []
    for detail in status.details if status is not None else ():
        if detail.Is(message_type.DESCRIPTOR):
            message = message_type()
            detail.Unpack(message)
            found.append(message)
    return found
