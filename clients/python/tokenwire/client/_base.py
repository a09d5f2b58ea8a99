"""Connection settings shared by `Client` and `AsyncClient`: target, credentials, deadline."""

from __future__ import annotations

import abc
import threading
from collections.abc import Mapping
from typing import Any, Generic, TypeVar

import grpc

from tokenwire.client._types import ChannelOptions, MetadataLike

DEFAULT_TARGET = "127.0.0.1:50051"

_Channel = TypeVar("_Channel")
_Stub = TypeVar("_Stub")


class BaseClient(Generic[_Channel, _Stub], abc.ABC):
    """Holds what every call of a client needs; subclasses make the channel and stub.

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
        self._credentials: grpc.ChannelCredentials | None = None
        if tls or root_certificates or private_key or certificate_chain:
            self._credentials = grpc.ssl_channel_credentials(
                root_certificates, private_key, certificate_chain
            )
        self._options = list(options)
        self._wait_for_ready = wait_for_ready
        # The channel opens on first use: a grpc.aio channel binds to the event loop
        # running when it is made, which __init__ may not have.
        self._lock = threading.Lock()
        self._channel: _Channel | None = None
        self._stub: _Stub | None = None
        self._closed = False
        self._aborts: set[Any] = set()  # Abort calls under way for cancelled streams

    @abc.abstractmethod
    def _connect(self) -> tuple[_Channel, _Stub]:
        """A new channel (``grpc`` or ``grpc.aio``) to `target`, and the stub over it."""

    @property
    def _rpc(self) -> _Stub:
        """The stub, over a channel opened on first use."""
        with self._lock:
            if self._closed:
                raise RuntimeError(f"{type(self).__name__} is closed")
            if self._stub is None:
                self._channel, self._stub = self._connect()
            return self._stub

    def _take_channel(self) -> _Channel | None:
        """Mark the client closed and hand over its channel (None if it never opened)."""
        with self._lock:
            self._closed = True
            channel, self._channel, self._stub = self._channel, None, None
            return channel

    def _call_options(self, timeout: float | None) -> dict[str, Any]:
        """Keyword arguments of one stub call; `timeout` None means the client's default."""
        return {
            "timeout": self.timeout if timeout is None else timeout,
            "metadata": self._metadata,
            "wait_for_ready": self._wait_for_ready,
        }

    def __repr__(self) -> str:
        return f"<{type(self).__name__} target={self.target!r}>"
