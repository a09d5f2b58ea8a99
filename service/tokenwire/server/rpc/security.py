"""gRPC transport security, and the API-key check on every call (keys: core/auth.py).

TLS: ``--tls-cert``/``--tls-key``, and with ``--tls-client-ca`` mutual TLS (clients
must present a certificate signed by that CA). The files are read again when they
change, without a restart: grpc asks for the current certificates at each new
connection, and we answer from the files' modification times.

API keys: ``RequireKeys`` refuses every call without a valid key, except health
and reflection (``OPEN_PREFIXES``).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc

from ..core.auth import ApiKeys, WatchedFiles
from .reflection import V1, V1ALPHA

log = logging.getLogger("tokenwire.server")

# Open without a key: health, because probes cannot send one; reflection, because
# it tells only the public contract and lets grpcurl call health with no key (see
# docs/operations.md, "API keys, health and reflection").
OPEN_PREFIXES = ("/grpc.health.v1.Health/", f"/{V1ALPHA}/", f"/{V1}/")


def server_credentials(cert: Path, key: Path, client_ca: Path | None) -> grpc.ServerCredentials:
    """TLS credentials that follow the files on disk (mutual TLS with a client CA)."""
    files = WatchedFiles([p for p in (cert, key, client_ca) if p is not None])

    def load() -> grpc.ServerCertificateConfiguration:
        return grpc.ssl_server_certificate_configuration(
            [(key.read_bytes(), cert.read_bytes())],
            root_certificates=client_ca.read_bytes() if client_ca else None,
        )

    files.changed()
    initial = load()

    def fetch() -> grpc.ServerCertificateConfiguration | None:
        if not files.changed():
            return None
        try:
            config = load()
        except (OSError, ValueError) as error:
            log.error("new TLS files could not be loaded, keeping the old ones: %s", error)
            return None
        log.info("TLS certificates reloaded")
        return config

    # grpc documents a fetcher's None as "no change"; its type stubs leave None out.
    return grpc.dynamic_ssl_server_credentials(
        initial,
        fetch,  # type: ignore[arg-type]
        require_client_authentication=client_ca is not None,
    )


class RequireKeys(grpc.aio.ServerInterceptor):
    """Refuses calls without a valid key with UNAUTHENTICATED (``OPEN_PREFIXES`` excepted)."""

    def __init__(self, keys: ApiKeys, on_refusal: Callable[[str], None]) -> None:
        self._keys = keys
        self._on_refusal = on_refusal

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        method = handler_call_details.method
        handler = await continuation(handler_call_details)
        if handler is None or method.startswith(OPEN_PREFIXES):
            return handler
        if self._keys.authorized(handler_call_details.invocation_metadata):
            return handler
        self._on_refusal(method.rsplit("/", 1)[-1])
        return _refusing(handler)


def _refusing(handler: grpc.RpcMethodHandler[Any, Any]) -> grpc.RpcMethodHandler[Any, Any]:
    """A handler of the same shape that ends the call with UNAUTHENTICATED."""

    async def refuse(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await context.abort(
            grpc.StatusCode.UNAUTHENTICATED,
            "missing or invalid API key: send 'authorization: Bearer <key>'",
        )

    des, ser = handler.request_deserializer, handler.response_serializer
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(refuse, des, ser)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(refuse, des, ser)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(refuse, des, ser)
    return grpc.unary_unary_rpc_method_handler(refuse, des, ser)
