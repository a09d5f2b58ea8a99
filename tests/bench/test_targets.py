"""The targets' verdicts on figures made up to sit on either side of a goal."""

from __future__ import annotations

from bench.records import SaturationSample, ServerKind
from bench.sizes import SMOKE
from bench.summary import Sweep
from bench.targets import TargetRow, evaluate

REF = SMOKE.ceiling_streams
BIG = max(SMOKE.saturation_streams)


def _sample(
    server: ServerKind, streams: int, rep: int, messages: int, rates: list[float] | None = None
) -> SaturationSample:
    return SaturationSample(
        server=server,
        step=1,
        streams=streams,
        window_s=1.0,
        tokens=messages * 10,
        messages=messages,
        server_cpu_s=0.5,
        client_cpu_s=0.5,
        other_cpu_s=0.0,
        errors=0,
        repetition=rep,
        stream_rates=rates or [],
    )


def _rows(throughput: Sweep, saturation: Sweep) -> dict[str, TargetRow]:
    rows = evaluate(SMOKE, throughput, saturation, {}, {}, {})
    return {row.name: row for row in rows}


def test_the_ceiling_is_judged_in_every_repetition() -> None:
    # The median repetition passes (0.9x); one repetition does not (0.7x).
    samples = [_sample("bare", REF, rep, 100) for rep in range(3)]
    samples += [_sample("tokenwire", REF, rep, m) for rep, m in enumerate((90, 70, 95))]
    rows = _rows(Sweep.of(samples), Sweep())
    [row] = [r for n, r in rows.items() if "vs the bare grpc.aio ceiling, in every" in n]
    assert row.passed is False
    assert row.measured == "0.70x at the lowest (median 0.90x)"
    assert "by repetition 0.90x, 0.70x, 0.95x" in row.figures


def test_fairness_takes_the_median_repetition_and_shows_the_worst() -> None:
    fair, starved = [100.0] * BIG, [100.0] * (BIG - 1) + [10.0]
    saturation = [
        _sample("tokenwire", BIG, rep, 1000, rates)
        for rep, rates in enumerate((fair, starved, fair))
    ]
    rows = _rows(Sweep(), Sweep.of([*saturation, _sample("bare", REF, 0, 100)]))
    [row] = [r for n, r in rows.items() if "slowest stream" in n and "gRPC" in n]
    assert row.passed is True
    assert row.measured == "1.00x (worst repetition 0.10x)"
    [ceiling] = [r for n, r in rows.items() if "vs the bare ceiling's messages/s" in n]
    assert ceiling.passed is True and ceiling.measured == "100.00x"  # 10,000 tokens/s vs 100


def test_what_did_not_run_is_not_judged() -> None:
    for row in _rows(Sweep(), Sweep()).values():
        assert (row.passed, row.measured, row.figures) == (None, "n/a", "n/a"), row
