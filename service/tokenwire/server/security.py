"""Transport security and API keys.

TLS: ``--tls-cert``/``--tls-key``, and with ``--tls-client-ca`` mutual TLS (clients
must present a certificate signed by that CA). The files are read again when they
change, without a restart: grpc asks for the current certificates at each new
connection, and we answer from the files' modification times.

API keys: ``--api-key`` and/or ``--api-keys-file`` (one key per line, ``#`` comments;
re-read when it changes, so a rotated Kubernetes secret takes effect). Clients send
``authorization: Bearer <key>``; comparison is constant-time, against every key.
Health and reflection stay open (``OPEN_PREFIXES``). Keys never reach the logs.
"""

from __future__ import annotations

import hmac
import logging
import os
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import grpc

from .reflection import V1, V1ALPHA
from .settings import BadSettings, option

log = logging.getLogger("tokenwire.server")

# Open without a key: health, because probes cannot send one; reflection, because
# it tells only the public contract and lets grpcurl call health with no key (see
# docs/operations.md, "API keys, health and reflection").
OPEN_PREFIXES = ("/grpc.health.v1.Health/", f"/{V1ALPHA}/", f"/{V1}/")


class _WatchedFiles:
    """Re-reads a set of files when any of their modification times changes."""

    def __init__(self, paths: Sequence[Path]) -> None:
        self._paths = tuple(paths)
        self._stamp: tuple[float, ...] | None = None

    def changed(self) -> bool:
        try:
            stamp = tuple(os.stat(p).st_mtime_ns for p in self._paths)
        except OSError as error:
            log.warning("cannot read %s: keeping what was loaded", error.filename)
            return False
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        return True


def server_credentials(cert: Path, key: Path, client_ca: Path | None) -> grpc.ServerCredentials:
    """TLS credentials that follow the files on disk (mutual TLS with a client CA)."""
    files = _WatchedFiles([p for p in (cert, key, client_ca) if p is not None])

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


class ApiKeys(grpc.aio.ServerInterceptor):
    """Refuses calls without a valid bearer key with UNAUTHENTICATED (health excepted)."""

    def __init__(
        self,
        key: str | None,
        keys_file: Path | None,
        on_refusal: Callable[[str], None] = lambda method: None,
    ) -> None:
        self._static = [key.encode()] if key else []
        self._file = keys_file
        self._files = _WatchedFiles([keys_file]) if keys_file else None
        self._from_file: list[bytes] = []
        self._on_refusal = on_refusal
        self._reload()
        if not self._keys():
            raise BadSettings(f"{option('api_keys_file')}: {keys_file} holds no key")

    def _keys(self) -> list[bytes]:
        return self._static + self._from_file

    def _reload(self) -> None:
        if self._files is None or self._file is None or not self._files.changed():
            return
        lines = self._file.read_text().splitlines()
        keys = (line.strip() for line in lines)
        self._from_file = [key.encode() for key in keys if key and not key.startswith("#")]
        log.info("API keys loaded: %d from %s", len(self._from_file), self._file)

    def authorized(self, metadata: Sequence[tuple[str, str | bytes]] | None) -> bool:
        self._reload()
        offered = b""
        for name, value in metadata or ():
            if name == "authorization":
                text = value.decode() if isinstance(value, bytes) else value
                scheme, _, token = text.partition(" ")
                if scheme.lower() == "bearer":
                    offered = token.strip().encode()
        # Compare with every key, whatever matches, so timing tells nothing.
        ok = False
        for key in self._keys():
            ok |= hmac.compare_digest(offered, key)
        return ok and bool(offered)

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
        if self.authorized(handler_call_details.invocation_metadata):
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
