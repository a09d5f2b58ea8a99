"""The HTTP listener: uvicorn's httptools protocol on the server's own event loop.

uvicorn's ``Server`` would run its own loop, install its own signal handlers and
poll every 100 ms; the process already has a loop (grpc.aio's), a drain of its
own and signal handling in ``app.serve``. So only uvicorn's protocol is used:
``loop.create_server`` with a protocol factory, as ``uvicorn.Server.startup``
does, and the drain is ours (stop accepting, let live streams run up to the
grace, cancel the rest, close the connections).

TLS uses the same files as gRPC, read again when they change: the context's
certificate is reloaded before the next connection's handshake, as grpc asks
for its certificates at each new connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Collection
from pathlib import Path
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from .. import connections
from ..core.auth import WatchedFiles
from ..settings import Settings

log = logging.getLogger("tokenwire.server")


class HttpListener:
    def __init__(self, app: Any, settings: Settings | None = None) -> None:
        self._settings = settings
        self._config = uvicorn.Config(
            app,
            http="httptools",
            loop="none",
            lifespan="off",
            ws="none",
            log_config=None,
            access_log=False,
            server_header=False,
            date_header=False,
            proxy_headers=False,
            # HTTP/1.1 keep-alive between requests; a stream itself has no timeout.
            timeout_keep_alive=30,
        )
        self._config.load()
        self._state = ServerState()
        self._state.default_headers = list(self._config.encoded_headers)
        self._server: asyncio.Server | None = None
        self._tls: _Tls | None = None

    async def bind(
        self,
        host: str,
        port: int,
        tls: tuple[Path, Path, Path | None] | None = None,
    ) -> int:
        """Bind without serving yet (``serve`` starts); returns the bound port."""
        self._tls = None if tls is None else _Tls(*tls)
        context = None if self._tls is None else self._tls.context
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self._protocol, host=host, port=port, ssl=context, backlog=2048, start_serving=False
        )
        if self._settings is not None:
            for sock in self._server.sockets:
                connections.tcp_keepalive(sock, self._settings)
        return int(self._server.sockets[0].getsockname()[1])

    async def serve(self) -> None:
        if self._server is not None:
            await self._server.start_serving()

    def _protocol(self) -> asyncio.Protocol:
        if self._tls is not None:
            self._tls.refresh()
        return HttpToolsProtocol(config=self._config, server_state=self._state, app_state={})

    def stop_accepting(self) -> None:
        if self._server is not None:
            self._server.close()

    async def drain(self, tasks: Collection[asyncio.Task[Any]], grace: float) -> None:
        """Let live streams finish for up to ``grace`` seconds, then cancel the rest
        (their handlers end them with the shutdown's error event)."""
        live = [t for t in tasks if not t.done()]
        if live and grace > 0:
            await asyncio.wait(live, timeout=grace)
        cancel(tasks)
        live = [t for t in tasks if not t.done()]
        if live:
            await asyncio.wait(live, timeout=5)

    async def close(self) -> None:
        """Close every connection (idle keep-alives too) and the listening socket."""
        for connection in list(self._state.connections):
            connection.shutdown()
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 5)


def cancel(tasks: Collection[asyncio.Task[Any]]) -> None:
    for task in list(tasks):
        task.cancel()


class _Tls:
    """A server TLS context that follows its files on disk."""

    def __init__(self, cert: Path, key: Path, client_ca: Path | None) -> None:
        self._cert, self._key, self._client_ca = cert, key, client_ca
        self._files = WatchedFiles([p for p in (cert, key, client_ca) if p is not None])
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.minimum_version = ssl.TLSVersion.TLSv1_2
        self.context.set_alpn_protocols(["http/1.1"])
        if client_ca is not None:
            self.context.verify_mode = ssl.CERT_REQUIRED
        self._files.changed()
        self._load()

    def _load(self) -> None:
        self.context.load_cert_chain(self._cert, self._key)
        if self._client_ca is not None:
            self.context.load_verify_locations(self._client_ca)

    def refresh(self) -> None:
        if not self._files.changed():
            return
        try:
            self._load()
        except (OSError, ssl.SSLError) as error:
            log.error("new TLS files could not be loaded, keeping the old ones: %s", error)
            return
        log.info("TLS certificates reloaded (HTTP)")
