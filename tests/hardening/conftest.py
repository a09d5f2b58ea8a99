"""Fixtures for the hardening tests: a real proxy (tests/proxies.py), and the HTTP
door's in-process servers (tests/http/conftest.py)."""

from __future__ import annotations

from ..http.conftest import make_http_server
from ..proxies import haproxy

__all__ = ["haproxy", "make_http_server"]
