"""The domain's errors, and the one table that says how each door answers every one.

Error tree::

    ServiceError                  (this module)
    ├── InvalidArgument           a field is malformed or out of range (names it)
    ├── ModelNotFound             ``model`` is not the served model
    ├── DuplicateRequestId        a live request has this request id
    ├── Overloaded                the queue is full (with a retry hint)
    ├── DeadlineTooShort          refused before using the engine: it cannot finish in time
    ├── ReaderStalled             the client stopped reading
    ├── AnswerTooLarge            a whole answer outgrew one message
    ├── BodyTooLarge              an HTTP request body over the limit
    ├── Unauthenticated           no valid API key
    ├── NotFound                  no such HTTP route, or no such resumable request
    ├── ResumeConflict            another stream is attached to that request (Resume)
    └── Ended                     the call ended before its answer did
        ├── ClientCancelled       the client cancelled or went away
        ├── DeadlineExpired       the client's deadline passed
        ├── Aborted               aborted by its id (the Abort RPC)
        ├── Detached              nobody came back to a resumable stream in time
        └── ShuttingDown          the server is stopping (refused, or cut at the grace's end)
    EngineError                   (engines/base.py)
    ├── EngineUnavailable         the engine cannot take requests
    │   └── EngineStalled         (this module) it stopped advancing a request
    ├── RequestFailed             this request failed inside the engine
    └── InvalidInput              the engine rejects an input value (names the field)

``answer(error)`` looks the error up in ``_TABLE``, most specific first: the
gRPC status code (by name: nothing here imports grpc), the HTTP status, and
OpenAI's error type and code. Anything not in it is a bug: INTERNAL / 500, with
the details kept out of the reply.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..engines.base import EngineError, EngineUnavailable, InvalidInput, RequestFailed


class ServiceError(Exception):
    """An error the server raises on purpose; ``answer()`` says how each door replies."""


class InvalidArgument(ServiceError):
    """A request field is malformed or out of range; ``field`` is its path."""

    def __init__(self, field: str, description: str) -> None:
        super().__init__(f"{field}: {description}")
        self.field = field
        self.description = description


class ModelNotFound(ServiceError):
    pass


class DuplicateRequestId(ServiceError):
    pass


class Overloaded(ServiceError):
    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class DeadlineTooShort(ServiceError):
    pass


class ReaderStalled(ServiceError):
    pass


class AnswerTooLarge(ServiceError):
    """What grpc itself answers for a message over the limit, but said at once."""


class BodyTooLarge(ServiceError):
    pass


class Unauthenticated(ServiceError):
    pass


class NotFound(ServiceError):
    pass


class ResumeConflict(ServiceError):
    """A resumable request already has a stream attached to it."""


class Ended(ServiceError):
    """The call ended before its answer: the reason, decided once (core.lifecycle)."""


class ClientCancelled(Ended):
    pass


class DeadlineExpired(Ended):
    pass


class ShuttingDown(Ended):
    pass


class Aborted(Ended):
    """A gateway aborted the request by its id (``Abort``); its client still waits
    for an ending, which says so."""


class Detached(Ended):
    """A resumable stream nobody came back to within its grace (or that outgrew the
    bounds on kept messages while detached): aborted, and forgotten."""


class EngineStalled(EngineUnavailable):
    """The engine produced nothing for a request within the engine stall timeout."""


@dataclass(frozen=True, slots=True)
class Answer:
    """How both doors answer one kind of error."""

    grpc: str  # grpc.StatusCode name
    http: int
    kind: str  # OpenAI's error "type"
    code: str | None = None  # OpenAI's error "code"
    prefix: str = ""  # put before the error's own message


_BAD = Answer("INVALID_ARGUMENT", 400, "invalid_request_error")
_INTERNAL = Answer("INTERNAL", 500, "server_error", prefix="engine failed this request: ")
_BUG = Answer("INTERNAL", 500, "server_error")

# Most specific first: the first class the error is an instance of answers.
_TABLE: tuple[tuple[type[BaseException], Answer], ...] = (
    (InvalidArgument, _BAD),
    (InvalidInput, _BAD),
    (ModelNotFound, Answer("NOT_FOUND", 404, "invalid_request_error", "model_not_found")),
    (NotFound, Answer("NOT_FOUND", 404, "not_found_error")),
    (ResumeConflict, Answer("FAILED_PRECONDITION", 409, "invalid_request_error", "conflict")),
    (DuplicateRequestId, Answer("ALREADY_EXISTS", 409, "invalid_request_error", "conflict")),
    (Overloaded, Answer("RESOURCE_EXHAUSTED", 429, "rate_limit_error", "overloaded")),
    (BodyTooLarge, Answer("RESOURCE_EXHAUSTED", 413, "invalid_request_error", "too_large")),
    (AnswerTooLarge, Answer("RESOURCE_EXHAUSTED", 413, "invalid_request_error", "too_large")),
    (ReaderStalled, Answer("RESOURCE_EXHAUSTED", 408, "timeout_error", "reader_stalled")),
    (DeadlineTooShort, Answer("DEADLINE_EXCEEDED", 504, "timeout_error", "deadline_too_short")),
    (DeadlineExpired, Answer("DEADLINE_EXCEEDED", 504, "timeout_error", "deadline_exceeded")),
    (ClientCancelled, Answer("CANCELLED", 499, "cancelled", "cancelled")),
    (Aborted, Answer("CANCELLED", 499, "cancelled", "aborted")),
    (Detached, Answer("CANCELLED", 499, "cancelled", "detached")),
    (ShuttingDown, Answer("UNAVAILABLE", 503, "service_unavailable_error", "shutting_down")),
    (Unauthenticated, Answer("UNAUTHENTICATED", 401, "authentication_error", "invalid_api_key")),
    (
        EngineUnavailable,
        Answer("UNAVAILABLE", 503, "service_unavailable_error", prefix="engine unavailable: "),
    ),
    (RequestFailed, _INTERNAL),
    (EngineError, _INTERNAL),
)


def answer(error: BaseException) -> Answer:
    for kind, found in _TABLE:
        if isinstance(error, kind):
            return found
    return _BUG


def message(error: BaseException) -> str:
    """What the client is told: the error's own words, or nothing for a bug."""
    found = answer(error)
    if found is _BUG:
        return "internal error"
    return found.prefix + str(error)


def field_of(error: BaseException) -> str | None:
    """The request field a refusal is about, if it names one."""
    if isinstance(error, InvalidArgument):
        return error.field
    if isinstance(error, InvalidInput):
        return error.field_path
    return None
