"""``python -m bench``: run every scenario, write the report, update docs/performance.md.

python -m bench                      # full sizes -> bench/results/<date>.{json,md,png}
python -m bench --smoke --out DIR    # tiny sizes, for the smoke test; docs untouched
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import platform
import time
from datetime import datetime
from pathlib import Path

from . import memory, report, scenarios
from .procs import ROOT, Worker
from .sizes import FULL, SMOKE, Sizes
from .stats import median
from .summary import saturation_points
from .targets import evaluate


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "absent"


def _loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def run(sizes: Sizes, out: Path, docs: Path | None) -> dict[str, Path]:
    started = datetime.now()
    t0 = time.monotonic()
    load_start = _loadavg()
    with Worker() as worker:
        samples = scenarios.saturation(sizes, worker)
        latency, cancel = scenarios.latency_and_cancellation(sizes, worker)
        mem = memory.memory(sizes, worker)
    points = saturation_points(samples)
    machine = {
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
        "other_cpu_share_median": median([s.other_cpu_s / s.window_s for s in samples]),
    }
    results = report.Results(
        date=started.strftime("%Y-%m-%d"),
        started=started.isoformat(timespec="seconds"),
        duration_s=time.monotonic() - t0,
        sizes=sizes,
        machine=machine,
        samples=samples,
        points=points,
        latency=latency,
        cancel=cancel,
        memory=mem,
        targets=evaluate(points, latency, cancel, mem),
    )
    paths = report.write(results, out)
    if docs is not None:
        report.update_docs(docs, results, paths)
    print(report.targets_table(results.targets))
    print(f"\nreport: {paths['markdown']} ({results.duration_s:.0f} s)")
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, one repetition")
    parser.add_argument("--out", type=Path, help="output folder (default: bench/results)")
    parser.add_argument(
        "--docs",
        type=Path,
        help="the docs page whose figures block to update "
        "(default: docs/performance.md for a full run, none for --smoke)",
    )
    args = parser.parse_args(argv)
    sizes = SMOKE if args.smoke else FULL
    out = (args.out or ROOT / "bench" / "results").resolve()
    docs = args.docs or (None if args.smoke else ROOT / "docs" / "performance.md")
    run(sizes, out, docs)
    return 0
