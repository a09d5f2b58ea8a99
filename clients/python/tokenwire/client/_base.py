"""Connection settings shared by `Client` and `AsyncClient`: target, credentials, deadline."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import grpc

from tokenwire.client._types import ChannelOptions, MetadataLike

DEFAULT_TARGET = "127.0.0.1:50051"


class BaseClient:
    """Holds what every call of a client needs; subclasses own the channel.

    Args:
        target: ``host:port`` of the tokenwire server (any gRPC target string).
        timeout: default deadline of each call, in seconds; None waits forever. A
            call's own ``timeout=`` overrides it.
        api_key: sent as ``authorization: Bearer <api_key>`` on every call.
        tls: use TLS with the system's root certificates. Implied by any of
            ``root_certificates``, ``private_key`` or ``certificate_chain`` (PEM bytes;
            the last two present a client certificate for mTLS).
        metadata: extra gRPC metadata sent on every call.
        options: gRPC channel arguments.
        wait_for_ready: queue calls while the server is unreachable, until their
            deadline, instead of failing at once with `Unavailable`.
    """

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        timeout: float | None = None,
        api_key: str | None = None,
        tls: bool = False,
        root_certificates: bytes | None = None,
        private_key: bytes | None = None,
        certificate_chain: bytes | None = None,
        metadata: MetadataLike | None = None,
        options: ChannelOptions = (),
        wait_for_ready: bool = False,
    ) -> None:
        self.target = target
        self.timeout = timeout
        pairs = list(metadata.items() if isinstance(metadata, Mapping) else metadata or ())
        if api_key is not None:
            pairs.append(("authorization", f"Bearer {api_key}"))
        self._metadata = tuple(pairs)
        self._credentials: Any = None
        if tls or root_certificates or private_key or certificate_chain:
            self._credentials = grpc.ssl_channel_credentials(
                root_certificates, private_key, certificate_chain
            )
        self._options = list(options)
        self._wait_for_ready = wait_for_ready
        self._closed = False

    def _new_channel(self, module: Any) -> Any:
        """A channel from ``grpc`` or ``grpc.aio``, which share these two factories."""
        if self._closed:
            raise RuntimeError(f"{type(self).__name__} is closed")
        if self._credentials is None:
            return module.insecure_channel(self.target, options=self._options)
        return module.secure_channel(self.target, self._credentials, options=self._options)

    def _call_options(self, timeout: float | None) -> dict[str, Any]:
        """Keyword arguments of one stub call; `timeout` None means the client's default."""
        return {
            "timeout": self.timeout if timeout is None else timeout,
            "metadata": self._metadata,
            "wait_for_ready": self._wait_for_ready,
        }

    def __repr__(self) -> str:
        return f"<{type(self).__name__} target={self.target!r}>"
