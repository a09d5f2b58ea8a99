"""Fixtures for the hardening tests: a real proxy (tests/proxies.py)."""

from __future__ import annotations

from ..proxies import haproxy

__all__ = ["haproxy"]
