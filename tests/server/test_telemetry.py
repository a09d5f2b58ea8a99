"""The histograms behind /metrics: Prometheus semantics, read back from the exposition."""

from __future__ import annotations

from tests.helpers import parse_metrics, sample
from tokenwire.server.core.telemetry import ABORT_REASONS, Metrics
from tokenwire.server.engines.base import EngineLoad

MODEL = {"gen_ai_request_model": "m", "gen_ai_system": "simulated"}


def _metrics() -> Metrics:
    return Metrics(
        "m",
        "simulated",
        in_flight=lambda: 0,
        queue_depth=lambda: 0,
        load=lambda: EngineLoad(0, 0, 0.0, 16, 1),
    )


def test_a_value_on_a_bound_counts_in_that_bucket_and_buckets_are_cumulative() -> None:
    metrics = _metrics()
    # 0.025 s to the first token (exactly a bound), 0.2 s in all, 5 tokens.
    metrics.generation_done(3, 5, 5, 0.025, 0.2)
    metrics.generation_done(3, 1, 1, 400.0, 400.0)  # beyond the last bound
    text = metrics.text().decode()
    name = "gen_ai_server_time_to_first_token_seconds"

    def bucket(le: str) -> float:
        return sample(text, f"{name}_bucket", {**MODEL, "le": le})

    assert bucket("0.01") == 0
    assert bucket("0.025") == 1
    assert bucket("0.05") == 1
    assert bucket("300.0") == 1
    assert bucket("+Inf") == 2
    assert sample(text, f"{name}_count", MODEL) == 2
    assert abs(sample(text, f"{name}_sum", MODEL) - 400.025) < 1e-9
    # One token after the first in 0.175 s; the one-token request has no such time.
    tpot = "gen_ai_server_time_per_output_token_seconds"
    assert sample(text, f"{tpot}_count", MODEL) == 1
    assert abs(sample(text, f"{tpot}_sum", MODEL) - 0.175 / 4) < 1e-12
    assert sample(text, "gen_ai_server_request_duration_seconds_count", MODEL) == 2


def test_abort_latency_has_a_series_per_reason_from_the_start() -> None:
    metrics = _metrics()
    metrics.aborted("deadline", 0.00003)
    metrics.aborted("error")  # no latency known: counted, not timed
    text = metrics.text().decode()
    name = "tokenwire_abort_latency_seconds"
    for reason in ABORT_REASONS:
        expected = 1 if reason == "deadline" else 0
        assert sample(text, f"{name}_count", {"reason": reason}) == expected
    assert sample(text, f"{name}_bucket", {"reason": "deadline", "le": "2.5e-05"}) == 0
    assert sample(text, f"{name}_bucket", {"reason": "deadline", "le": "5e-05"}) == 1
    assert sample(text, "tokenwire_aborts_total", {"reason": "error"}) == 1


def test_each_histogram_is_exported_once() -> None:
    text = _metrics().text().decode()
    types = [line for line in text.splitlines() if line.startswith("# TYPE")]
    assert len(types) == len(set(types))
    assert "# TYPE gen_ai_server_request_duration_seconds histogram" in types
    assert parse_metrics(text)  # the whole exposition parses


def test_impossible_durations_are_dropped_not_summed() -> None:
    metrics = _metrics()
    metrics.aborted("cancelled", -0.001)  # a clock oddity must not make the sum go back
    metrics.aborted("cancelled", float("nan"))
    metrics.aborted("cancelled", float("inf"))
    metrics.aborted("cancelled", 0.0)
    text = metrics.text().decode()
    name = "tokenwire_abort_latency_seconds"
    assert sample(text, f"{name}_count", {"reason": "cancelled"}) == 1
    assert sample(text, f"{name}_sum", {"reason": "cancelled"}) == 0.0
    assert sample(text, f"{name}_bucket", {"reason": "cancelled", "le": "1e-05"}) == 1
    assert sample(text, "tokenwire_aborts_total", {"reason": "cancelled"}) == 4
