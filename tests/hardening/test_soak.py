"""A short soak (bench/soak.py; `make soak` runs it for 10 minutes): mixed traffic on
both doors of one server and on a second one restarted under load, then no error
outside the expected ones, nothing in flight, no traceback, no growth past bounds."""

from __future__ import annotations

from bench.soak import soak


async def test_a_short_soak_holds() -> None:
    summary = await soak(15)
    assert summary["failures"] == [], summary
    assert summary["server_b_restarts"] >= 2
    # Every kind of call ran, and ended as it should.
    assert summary["ok"]["grpc_stream"] and summary["ok"]["http_stream"]
    for kind in ("grpc_cancel: CANCELLED", "grpc_bad: INVALID_ARGUMENT", "http_bad: 400"):
        assert summary["expected"][kind], kind
    assert summary["idle_after"]["in_flight"] == 0
    assert summary["aborts_a"]["error"] == 0
