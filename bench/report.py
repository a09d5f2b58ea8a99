"""The run's outputs: ``<stem>.json`` (everything), ``<stem>.md`` (the report), plots, and
the figures block of docs/performance.md.

The stem is the date for a run of every scenario, and the date followed by the
scenarios' names for a run of some: a partial run never overwrites a full one.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from . import plots
from .constraints import ConstraintsSummary
from .constraints_report import constraints_section
from .method import method
from .records import ServerKind
from .sizes import Sizes
from .summary import (
    SATURATION_SERIES,
    THROUGHPUT_SERIES,
    CancelSummary,
    LatencySummary,
    MemorySummary,
    SaturationPoint,
    Sweep,
    point,
)
from .targets import TargetRow

DOCS_BEGIN = "<!-- bench:begin (written by make bench) -->"
DOCS_END = "<!-- bench:end -->"
PLOTS = ("throughput", "saturation", "latency")  # each drawn when its scenario ran


@dataclass(slots=True)
class Results:
    date: str
    stem: str  # the files' name: the date, or the date and the scenarios run
    scenarios: tuple[str, ...]
    command: str  # what ran: make bench, or python -m bench and the scenarios' names
    started: str
    duration_s: float
    sizes: Sizes
    machine: dict[str, Any]
    throughput: Sweep
    saturation: Sweep
    latency: dict[ServerKind, LatencySummary]
    cancel: dict[ServerKind, CancelSummary]
    memory: dict[ServerKind, MemorySummary]
    constraints: ConstraintsSummary | None  # run by name only
    targets: list[TargetRow]


def _clean(value: Any) -> Any:
    """NaN is not JSON: write null."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def write(results: Results, out: Path) -> dict[str, Path]:
    """Write the JSON, the plots and the Markdown report into ``out``; return their paths."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / f"{results.stem}.json", "markdown": out / f"{results.stem}.md"}
    paths |= {
        name: out / f"{results.stem}-{name}.png" for name in PLOTS if name in results.scenarios
    }
    sections: dict[str, Any] = {
        "throughput": asdict(results.throughput),
        "saturation": asdict(results.saturation),
        "latency": {k: asdict(v) for k, v in results.latency.items()},
        "cancel": {k: asdict(v) for k, v in results.cancel.items()},
        "memory": {k: asdict(v) for k, v in results.memory.items()},
        "constraints": asdict(results.constraints) if results.constraints else None,
    }
    data = {
        "date": results.date,
        "scenarios": list(results.scenarios),
        "started": results.started,
        "duration_s": results.duration_s,
        "sizes": asdict(results.sizes),
        "machine": results.machine,
        **{name: sections[name] for name in results.scenarios},
        "targets": [asdict(t) for t in results.targets],
    }
    paths["json"].write_text(json.dumps(_clean(data), indent=1) + "\n")
    if "throughput" in paths:
        plots.throughput(results.throughput.points, paths["throughput"])
    if "saturation" in paths:
        ceiling = point(results.saturation.points, "bare", 1, results.sizes.ceiling_streams)
        plots.saturation(
            results.saturation.points,
            ceiling.messages_per_s if ceiling else math.nan,
            paths["saturation"],
        )
    if "latency" in paths:
        plots.latency_cdf(results.latency, paths["latency"])
    paths["markdown"].write_text(markdown(results, paths))
    return paths


def targets_table(rows: Sequence[TargetRow]) -> str:
    """The verdicts: what each target is judged on, and the result."""
    lines = ["| target | goal | measured | result |", "|---|---|---|---|"]
    for row in rows:
        verdict = {True: "pass", False: "**fail**", None: "n/a"}[row.passed]
        lines.append(f"| {row.name} | {row.target} | {row.measured} | {verdict} |")
    return "\n".join(lines)


def _f(value: float, spec: str = ",.0f") -> str:
    return "n/a" if math.isnan(value) else format(value, spec)


def _repetitions(sizes: Sizes) -> str:
    n = sizes.repetitions
    return f"{n} repetition{'s' if n != 1 else ''}"


def _pct(share: float) -> str:
    return f"{_f(share * 100, '.0f')}%"


def machine_text(r: Results) -> str:
    """The machine the figures came from, and how busy it was with other work."""
    m = r.machine
    others = ", ".join(
        f"{name} {_pct(share)}" for name, share in m.get("other_cpu_share", {}).items()
    )
    return (
        f"{m['cpus']} cores ({m['platform']}), Python {m['python']}, grpcio {m['grpcio']}. "
        f"Load average {m['loadavg_start']} at the start and {m['loadavg_end']} at the end"
        + (
            f"; other processes' share of one core, median of the windows: {others}"
            if others
            else ""
        )
        + "."
    )


def figures(r: Results) -> list[str]:
    """The absolute figures behind each verdict, with the machine they came from."""
    lines = [machine_text(r), ""]
    lines += [f"- {row.name}: {row.figures}" for row in r.targets if row.passed is not None]
    skipped = sum(row.passed is None for row in r.targets)
    if skipped:
        lines.append(f"- {skipped} targets not measured in this run (n/a).")
    return lines


def markdown(r: Results, paths: Mapping[str, Path]) -> str:
    s = r.sizes
    parts = [
        f"# tokenwire benchmark, {r.date}",
        "",
        f"`{r.command}` ({s.name} sizes), started {r.started}, took {r.duration_s:.0f} s.",
        "",
        "## Targets",
        "",
        targets_table(r.targets),
        "",
        "## Figures of this run",
        "",
        *figures(r),
        "",
        "## Method",
        "",
        method(s, r.scenarios),
    ]
    if "throughput" in r.scenarios:
        parts += [
            "",
            "## Throughput (engine on demand)",
            "",
            f"![throughput]({paths['throughput'].name})",
            "",
            _throughput_table(r.throughput.points),
        ]
    if "saturation" in r.scenarios:
        parts += [
            "",
            "## Saturation (engine on its own clock)",
            "",
            f"![saturation]({paths['saturation'].name})",
            "",
            _saturation_table(r.saturation.points, s.ceiling_streams),
        ]
    if "latency" in r.scenarios:
        parts += ["", "## Latency", "", f"![latency]({paths['latency'].name})", "", *_latency(r)]
    if "cancel" in r.scenarios:
        parts += ["", "## Cancellation", ""]
        for c in r.cancel.values():
            parts += _cancellation(c)
    if "memory" in r.scenarios:
        parts += ["", "## Memory", "", *_memory(r)]
    if r.constraints is not None:
        parts += ["", "## Constraints", "", *constraints_section(r.constraints)]
    parts += ["", f"Raw figures: [{paths['json'].name}]({paths['json'].name}).", ""]
    return "\n".join(parts)


def _latency(r: Results) -> list[str]:
    lines = [
        "| server | added per token p50 | p99 | added TTFT p50 | p99 "
        "| per token from the first p50 | p99 | token samples | server CPU | others' CPU "
        "| errors |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for kind, lat in r.latency.items():
        lines.append(
            f"| {kind} | {_f(lat.token_p50_ms, '.2f')} ms | {_f(lat.token_p99_ms, '.2f')} ms "
            f"| {_f(lat.ttft_p50_ms, '.2f')} ms | {_f(lat.ttft_p99_ms, '.2f')} ms "
            f"| {_f(lat.stream_p50_ms, '.2f')} ms | {_f(lat.stream_p99_ms, '.2f')} ms "
            f"| {lat.token_samples:,} | {_pct(lat.server_cpu_share)} "
            f"| {_pct(lat.other_cpu_share)} | {lat.errors} |"
        )
    lines += [
        "",
        "Added delays run from the client's send: a stream that starts late is late by as "
        'much on every token, so the per-token figure includes the start-up delay. "Per '
        "token from the first\" measures the same tokens against the first token's arrival "
        "instead (first + i x itl): the stream path alone. CPU shares are of one core over "
        "the window; others' CPU is everything else the machine ran meanwhile (other work on "
        "a shared machine shows up here first).",
    ]
    return lines


def _memory(r: Results) -> list[str]:
    lines = [
        "| server | RSS per idle stream | RSS before | stopped readers: RSS slope | growth "
        "| tokens generated | tokens read before the stop |",
        "|---|---|---|---|---|---|---|",
    ]
    for kind, mem in r.memory.items():
        lines.append(
            f"| {kind} | {_f(mem.idle_kb_per_stream, '.1f')} KB | {_f(mem.idle_base_mb, '.1f')} MB "
            f"| {_f(mem.slow_slope_kb_per_s, '.1f')} KB/s | {_f(mem.slow_growth_kb, '.0f')} KB "
            f"| {_f(mem.slow_tokens_generated)} | {mem.slow_tokens_read:,} |"
        )
    return lines


_CANCEL_HOW: dict[ServerKind, tuple[str, str]] = {
    "tokenwire": ("gRPC", "cancels"),
    "http": ("HTTP SSE", "closed connections"),
}


def _cancellation(c: CancelSummary) -> list[str]:
    door, how = _CANCEL_HOW.get(c.server, (c.server, "cancels"))
    abort = (
        f"p50 {_f(c.abort_p50_ms, '.2f')} ms, p99 {_f(c.abort_p99_ms, '.2f')} ms over "
        f"{c.abort_count:.0f} aborts (interpolated within the histogram's buckets)"
        if c.abort_histogram
        else "n/a: this server does not export `tokenwire_abort_latency_seconds` yet"
    )
    return [
        f"- {door}: {c.rounds} rounds of {c.streams_per_round} streams, {c.cancelled} {how}; "
        f'`tokenwire_aborts_total{{reason="cancelled"}}` rose by {c.aborts_counted:.0f}.',
        f"  - Server, from learning of the cancel to `abort()` returning: {abort}.",
        f"  - Client, from its last cancel of a round to `tokenwire_engine_requests_in_flight` "
        f"read as 0: p50 {_f(c.idle_p50_ms, '.1f')} ms, p99 {_f(c.idle_p99_ms, '.1f')} ms, "
        f"worst {_f(c.idle_max_ms, '.1f')} ms; {c.idle_timeouts} rounds not idle within 2 s. "
        f"Each poll of /metrics took {_f(c.scrape_p50_ms, '.1f')} ms (median): the resolution.",
    ]


Column = tuple[str, Callable[[SaturationPoint], str]]
# Every rate with the CPU it cost beside it, per token and per message.
_RATES: tuple[Column, ...] = (
    ("tokens/s", lambda p: _f(p.tokens_per_s)),
    ("msgs/s", lambda p: _f(p.messages_per_s)),
    ("tokens/msg", lambda p: _f(p.tokens_per_message, ".1f")),
    ("server us/token", lambda p: _f(p.server_us_per_token, ".2f")),
    ("server us/msg", lambda p: _f(p.server_us_per_message, ".1f")),
    ("tokens per server CPU-s", lambda p: _f(p.tokens_per_server_cpu_s)),
    ("client us/msg", lambda p: _f(p.client_us_per_message, ".1f")),
)
_NOISE: tuple[Column, ...] = (
    ("others' CPU", lambda p: _pct(p.other_cpu_share)),
    ("errors", lambda p: str(p.errors)),
)


def _table(
    points: Sequence[SaturationPoint],
    series: Sequence[tuple[ServerKind, int]],
    columns: Sequence[Column],
) -> str:
    """One row per point, by concurrency, then in ``series``'s order."""
    lines = [
        "| " + " | ".join(name for name, _ in columns) + " |",
        "|" + "---|" * len(columns),
    ]
    for streams in sorted({p.streams for p in points}):
        for server, step in series:
            p = point(points, server, step, streams)
            if p is not None:
                lines.append("| " + " | ".join(cell(p) for _, cell in columns) + " |")
    return "\n".join(lines)


def _throughput_table(points: Sequence[SaturationPoint]) -> str:
    def vs_bare(p: SaturationPoint) -> str:
        bare = point(points, "bare", p.step, p.streams)
        return _f(p.messages_per_s / bare.messages_per_s if bare else math.nan, ".2f") + "x"

    columns: list[Column] = [
        ("streams", lambda p: f"{p.streams:,}"),
        ("server", lambda p: p.server),
        ("step", lambda p: str(p.step)),
        *_RATES,
        ("msgs/s vs bare", vs_bare),
        *_NOISE,
    ]
    return (
        "Medians of the repetitions. msgs/s vs bare: against the bare ceiling at the same step "
        "and concurrency.\n\n" + _table(points, THROUGHPUT_SERIES, columns)
    )


def _saturation_table(points: Sequence[SaturationPoint], ceiling_streams: int) -> str:
    columns: list[Column] = [
        ("streams", lambda p: f"{p.streams:,}"),
        ("server", lambda p: p.server if p.server != "bare" else "bare (on demand: the ceiling)"),
        *_RATES,
        (
            "slowest stream / median (worst repetition)",
            lambda p: f"{_f(p.slowest_vs_median, '.2f')} ({_f(p.slowest_vs_median_worst, '.2f')})",
        ),
        ("p10 stream / median", lambda p: _f(p.p10_vs_median, ".2f")),
        ("median stream tokens/s", lambda p: _f(p.median_stream_tokens_per_s)),
        *_NOISE,
    ]
    return (
        "Medians of the repetitions, step 1. Stream rates: each closed-loop stream's "
        "delivered tokens/s over the window; the slowest and the 10th percentile against the "
        "median stream, per repetition, then the median of the repetitions (the worst "
        f"repetition's slowest in brackets). The bare ceiling at {ceiling_streams:,} streams "
        "runs on demand among these points: the calibration.\n\n"
        + _table(points, [*SATURATION_SERIES, ("bare", 1)], columns)
    )


def update_docs(docs: Path, results: Results, paths: Mapping[str, Path]) -> None:
    """Replace the figures block of docs/performance.md with this run's."""
    rel = Path(os.path.relpath(paths["markdown"].parent, docs.resolve().parent))
    images = [f"![{name}]({rel / paths[name].name})" for name in PLOTS if name in paths]
    block = "\n".join(
        [
            DOCS_BEGIN,
            f"Latest run: {results.date} ([report]({rel / paths['markdown'].name}), "
            f"[raw figures]({rel / paths['json'].name})), {_repetitions(results.sizes)}, "
            f"{results.duration_s:.0f} s, on {results.machine['cpus']} cores "
            "shared by the servers and the load generator.",
            "",
            targets_table(results.targets),
            "",
            "**Figures of this run.** " + "\n".join(figures(results)),
            "",
            "\n\n".join(images),
            DOCS_END,
        ]
    )
    text = docs.read_text()
    pattern = re.compile(re.escape(DOCS_BEGIN) + ".*?" + re.escape(DOCS_END), re.S)
    if not pattern.search(text):
        raise ValueError(f"{docs} has no {DOCS_BEGIN!r} ... {DOCS_END!r} block")
    docs.write_text(pattern.sub(lambda _: block, text))
