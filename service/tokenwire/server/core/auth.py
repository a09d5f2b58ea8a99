"""API keys, for both doors, and files that are read again when they change.

``--api-key`` and/or ``--api-keys-file`` (one key per line, ``#`` comments;
re-read when it changes, so a rotated Kubernetes secret takes effect). Clients
send ``authorization: Bearer <key>`` (gRPC metadata or an HTTP header);
comparison is constant-time, against every key. Keys never reach the logs.
"""

from __future__ import annotations

import hmac
import logging
import os
from collections.abc import Sequence
from pathlib import Path

from ..settings import BadSettings, option

log = logging.getLogger("tokenwire.server")


class WatchedFiles:
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


class ApiKeys:
    """The keys in force; ``authorized`` checks what a client offered."""

    def __init__(
        self,
        key: str | None,
        keys_file: Path | None,
    ) -> None:
        self._static = [key.encode()] if key else []
        self._file = keys_file
        self._files = WatchedFiles([keys_file]) if keys_file else None
        self._from_file: list[bytes] = []
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
        """Whether the ``authorization`` entry of these headers holds a valid key."""
        for name, value in metadata or ():
            if name == "authorization":
                return self.valid(value.decode() if isinstance(value, bytes) else value)
        return False

    def valid(self, authorization: str | None) -> bool:
        """Whether an ``authorization`` value (``Bearer <key>``) holds a valid key."""
        self._reload()
        offered = b""
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() == "bearer":
            offered = token.strip().encode()
        # Compare with every key, whatever matches, so timing tells nothing.
        ok = False
        for key in self._keys():
            ok |= hmac.compare_digest(offered, key)
        return ok and bool(offered)
