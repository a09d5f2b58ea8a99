"""Server interceptors: cross-cutting checks applied to every method of every service.

``MalformedRequests``: a request body that does not parse as the method's message
type is answered INVALID_ARGUMENT at once, and counted like any other refusal. Left
to grpc, it becomes UNKNOWN with a traceback in the log for every such request (an
easy way to flood logs).
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError


class _Malformed:
    """Stands in for a request body that did not parse."""

    __slots__ = ("error",)

    def __init__(self, error: DecodeError) -> None:
        self.error = error


def _lenient(deserialize: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserialize is None:
        return None

    def parse(data: bytes) -> Any:
        try:
            return deserialize(data)
        except DecodeError as error:
            return _Malformed(error)

    return parse


Refused = Callable[[str], None]
"""Told the method name (``Generate``) of each call refused: the metrics count it."""


async def _refuse(
    context: grpc.aio.ServicerContext[Any, Any], method: str, refused: Refused
) -> None:
    refused(method.rsplit("/", 1)[-1])
    await context.abort(
        grpc.StatusCode.INVALID_ARGUMENT, f"request body is not a valid message for {method}"
    )


def _guard(behaviour: Any, method: str, refused: Refused) -> Any:
    """Wrap a handler so that a malformed request is refused before it runs."""
    if inspect.isasyncgenfunction(behaviour):

        async def stream(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            if isinstance(request, _Malformed):
                await _refuse(context, method, refused)
            async for response in behaviour(request, context):
                yield response

        return stream

    async def call(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        if isinstance(request, _Malformed):
            await _refuse(context, method, refused)
        return await behaviour(request, context)

    return call


class MalformedRequests(grpc.aio.ServerInterceptor):
    def __init__(self, refused: Refused) -> None:
        self._refused = refused
        # Each method's guarded handler, built once: (the handler it wraps, the guard).
        self._guarded: dict[str, tuple[object, grpc.RpcMethodHandler[Any, Any]]] = {}

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        if handler is None or handler.request_streaming:
            return handler
        method = handler_call_details.method
        cached = self._guarded.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        guarded = _guarded(handler, method, self._refused)
        self._guarded[method] = (handler, guarded)
        return guarded


def _guarded(
    handler: grpc.RpcMethodHandler[Any, Any], method: str, refused: Refused
) -> grpc.RpcMethodHandler[Any, Any]:
    deserializer = _lenient(handler.request_deserializer)
    # On a grpc.aio server the behaviours are coroutine functions (or async
    # generator functions), which grpc's stubs type as plain callables.
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(
            _guard(handler.unary_unary, method, refused), deserializer, handler.response_serializer
        )
    return grpc.unary_stream_rpc_method_handler(
        _guard(handler.unary_stream, method, refused), deserializer, handler.response_serializer
    )
