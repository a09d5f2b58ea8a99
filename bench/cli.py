"""``python -m bench [SCENARIO ...]``: run scenarios, write the report, update docs/performance.md.

python -m bench                      # every scenario -> bench/results/<date>.{json,md,png},
                                     # and docs/performance.md's figures block
python -m bench saturation latency   # some -> bench/results/<date>-saturation-latency.*
python -m bench constraints          # by name only: what a constraint costs per token
python -m bench --smoke --out DIR    # tiny sizes, for the smoke test; docs untouched

Scenarios: throughput (the engine on demand), saturation (the engine on its own clock,
with the bare ceiling as calibration), latency, cancel (on the latency scenario's
servers), memory; and, when named, constraints (structured output and tool calls
against plain text). Only a run of every scenario at full sizes writes the docs page,
unless --docs names one.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import platform
import time
from datetime import datetime
from pathlib import Path

from . import constraints, memory, report, scenarios
from .constraints import ConstraintsSummary
from .procs import ROOT, Worker
from .records import ServerKind
from .sizes import FULL, SMOKE, Sizes
from .stats import median
from .summary import CancelSummary, LatencySummary, MemorySummary, Sweep
from .targets import evaluate

NAMES = ("throughput", "saturation", "latency", "cancel", "memory")
"""The scenarios of a full run (``make bench``), in the order a run takes them."""
BY_NAME_ONLY = ("constraints",)
"""Scenarios run when named, after the others: a full run stays under 10 minutes."""
ALL = (*NAMES, *BY_NAME_ONLY)


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "absent"


def _loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def _machine(load_start: str, results: report.Results) -> dict[str, object]:
    """Where the figures came from, and how much else the machine did meanwhile."""
    others = {
        name: median([s.other_cpu_s / s.window_s for s in sweep.samples])
        for name, sweep in (("throughput", results.throughput), ("saturation", results.saturation))
        if sweep.samples
    }
    if results.latency:
        others["latency"] = median([lat.other_cpu_share for lat in results.latency.values()])
    if results.constraints is not None:
        windows = [s.window for s in results.constraints.samples]
        others["constraints"] = median([w.other_cpu_s / w.window_s for w in windows])
    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "grpcio": _version("grpcio"),
        "uvloop": _version("uvloop"),
        "fastapi": _version("fastapi"),
        "uvicorn": _version("uvicorn"),
        "aiohttp": _version("aiohttp"),
        "loadavg_start": load_start,
        "loadavg_end": _loadavg(),
        "other_cpu_share": others,  # median of the windows, per scenario
    }


def run(
    sizes: Sizes, out: Path, docs: Path | None, chosen: tuple[str, ...] = NAMES
) -> dict[str, Path]:
    started = datetime.now()
    t0 = time.monotonic()
    load_start = _loadavg()
    throughput, saturation = Sweep(), Sweep()
    latency: dict[ServerKind, LatencySummary] = {}
    cancel: dict[ServerKind, CancelSummary] = {}
    mem: dict[ServerKind, MemorySummary] = {}
    constraint: ConstraintsSummary | None = None
    with Worker() as worker:
        if "throughput" in chosen:
            throughput = Sweep.of(scenarios.throughput(sizes, worker))
        if "saturation" in chosen:
            saturation = Sweep.of(scenarios.saturation(sizes, worker))
        if "latency" in chosen or "cancel" in chosen:
            latency, cancel = scenarios.latency_and_cancellation(
                sizes, worker, latency="latency" in chosen, cancel="cancel" in chosen
            )
        if "memory" in chosen:
            mem = memory.memory(sizes, worker)
        if "constraints" in chosen:
            constraint = constraints.constraints(sizes, worker)
    date = started.strftime("%Y-%m-%d")
    every = chosen == NAMES
    results = report.Results(
        date=date,
        stem=date if every else "-".join((date, *chosen)),
        scenarios=chosen,
        command="make bench" if every else f"python -m bench {' '.join(chosen)}",
        started=started.isoformat(timespec="seconds"),
        duration_s=time.monotonic() - t0,
        sizes=sizes,
        machine={},
        throughput=throughput,
        saturation=saturation,
        latency=latency,
        cancel=cancel,
        memory=mem,
        constraints=constraint,
        targets=evaluate(sizes, throughput, saturation, latency, cancel, mem),
    )
    results.machine = _machine(load_start, results)
    paths = report.write(results, out)
    if docs is not None:
        report.update_docs(docs, results, paths)
    if any(row.passed is not None for row in results.targets):
        print(report.targets_table(results.targets))
    print(f"\nreport: {paths['markdown']} ({results.duration_s:.0f} s)")
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    # No argparse choices: with nargs="*" they reject an empty list (bpo-9625).
    parser.add_argument(
        "scenarios",
        nargs="*",
        metavar="SCENARIO",
        help=f"any of {', '.join(ALL)} (default: {', '.join(NAMES)})",
    )
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, one repetition")
    parser.add_argument("--out", type=Path, help="output folder (default: bench/results)")
    parser.add_argument(
        "--docs",
        type=Path,
        help="the docs page whose figures block to update (default: docs/performance.md "
        "for a full run of every scenario, none otherwise)",
    )
    args = parser.parse_args(argv)
    unknown = sorted(set(args.scenarios) - set(ALL))
    if unknown:
        parser.error(f"unknown scenario {', '.join(unknown)}: choose from {', '.join(ALL)}")
    chosen = tuple(name for name in ALL if name in args.scenarios) or NAMES
    sizes = SMOKE if args.smoke else FULL
    out = (args.out or ROOT / "bench" / "results").resolve()
    default_docs = ROOT / "docs" / "performance.md" if chosen == NAMES and not args.smoke else None
    run(sizes, out, args.docs or default_docs, chosen)
    return 0
