"""Fixtures of the client tests beside the shared ones in tests/conftest.py."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.helpers import ServerProcess, start_server_process


@pytest.fixture(scope="session")
def instant_server() -> Iterator[ServerProcess]:
    """A simulated server with no latency at all, for tests that ask many answers."""
    server = start_server_process(["--sim-ttft-ms", "0", "--sim-itl-ms", "0"])
    yield server
    server.stop()
