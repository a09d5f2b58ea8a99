"""The benchmark harness end to end at tiny sizes: every scenario runs and reports, and
one scenario runs by name.

Part of ``make test``. It checks the instrument, not tokenwire's speed: figures on
a shared 2-core machine are noise at these sizes.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
SECTIONS = (
    "## Targets",
    "## Figures of this run",
    "## Method",
    "## Throughput (engine on demand)",
    "## Saturation (engine on its own clock)",
    "## Latency",
    "## Cancellation",
    "## Memory",
)
SCENARIOS = ["throughput", "saturation", "latency", "cancel", "memory"]
SERVERS = {"tokenwire", "http", "bare", "sse"}
TOKENWIRE = {"tokenwire", "http"}  # tokenwire's gRPC door, and its HTTP door (SSE)


def _bench(*args: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=100,
    )
    assert done.returncode == 0, done.stderr[-4000:]


def _check_saturation(data: dict[str, Any]) -> None:
    """The engine on its own clock: every window delivered, with a rate for every stream,
    and the bare ceiling measured beside it as the calibration."""
    sizes, saturation = data["sizes"], data["saturation"]
    series = {(p["server"], p["step"]) for p in saturation["points"]}
    assert series == {("tokenwire", 1), ("http", 1), ("sse", 1), ("bare", 1)}
    for sample in saturation["samples"]:
        assert sample["errors"] == 0, sample
        assert sample["tokens"] > 0 and sample["server_cpu_s"] > 0, sample
        assert len(sample["stream_rates"]) == sample["streams"], sample
    calibration = [s for s in saturation["samples"] if s["server"] == "bare"]
    assert [s["streams"] for s in calibration] == [sizes["ceiling_streams"]] * sizes["repetitions"]
    assert {s["streams"] for s in saturation["samples"] if s["server"] != "bare"} == set(
        sizes["saturation_streams"]
    )


def test_every_scenario_reports(tmp_path: Path) -> None:
    docs = tmp_path / "docs" / "performance.md"
    docs.parent.mkdir()
    shutil.copy(ROOT / "docs" / "performance.md", docs)
    out = tmp_path / "results"
    _bench("--out", str(out), "--docs", str(docs))

    [report] = out.glob("*.md")
    date = report.stem
    plots = [f"{date}-{name}.png" for name in ("throughput", "saturation", "latency")]
    for name in (f"{date}.json", *plots):
        assert (out / name).stat().st_size > 0, name
    text = report.read_text()
    for section in SECTIONS:
        assert section in text, section
    for name in plots:
        assert f"]({name})" in text, name

    data = json.loads((out / f"{date}.json").read_text())
    assert data["scenarios"] == SCENARIOS
    series = {(p["server"], p["step"]) for p in data["throughput"]["points"]}
    assert series == {
        ("tokenwire", 1),
        ("tokenwire", 4),
        ("http", 1),
        ("http", 4),
        ("bare", 1),
        ("bare", 4),
        ("sse", 1),
    }
    for sample in data["throughput"]["samples"]:
        assert sample["errors"] == 0, sample
        assert sample["tokens"] > 0 and sample["server_cpu_s"] > 0, sample
    _check_saturation(data)
    assert set(data["latency"]) == SERVERS
    for summary in data["latency"].values():
        assert summary["token_samples"] > 0 and summary["ttft_samples"] > 0, summary
        assert summary["errors"] == 0, summary
    assert set(data["cancel"]) == TOKENWIRE
    for cancel in data["cancel"].values():
        assert cancel["cancelled"] > 0 and cancel["idle_timeouts"] == 0, cancel
        # Every cancel, a gRPC one or a closed connection, aborted its engine request.
        assert cancel["aborts_counted"] == cancel["cancelled"], cancel
        assert cancel["abort_count"] == cancel["cancelled"], cancel
    assert set(data["memory"]) == SERVERS
    for summary in data["memory"].values():
        assert summary["idle_kb_per_stream"] is not None, summary
        assert len(summary["slow_rss_mb"]) >= 3, summary
    for kind in TOKENWIRE:
        assert data["memory"][kind]["slow_tokens_generated"] > 0
    assert len(data["targets"]) >= 22
    names = " ".join(t["name"] for t in data["targets"])
    assert "HTTP SSE, on demand" in names and "client disconnect" in names
    assert "Own clock" in names and "slowest stream" in names
    # The smoke sizes keep the full run's shape: every target is judged, on figures.
    for t in data["targets"]:
        assert t["passed"] is not None and "n/a" not in (t["measured"], t["figures"]), t

    # The docs page's figures block now holds this run's verdicts, figures and plots.
    page = docs.read_text()
    assert "| target | goal | measured | result |" in page and "Figures of this run" in page
    for name in plots:
        assert name in page, name


def test_one_scenario_by_name(tmp_path: Path) -> None:
    docs = ROOT / "docs" / "performance.md"
    before = docs.read_text()
    _bench("saturation", "--out", str(tmp_path))

    [data_file] = tmp_path.glob("*.json")
    date = data_file.stem.removesuffix("-saturation")
    assert data_file.name == f"{date}-saturation.json"  # never a full run's name
    assert (tmp_path / f"{date}-saturation-saturation.png").stat().st_size > 0
    assert sorted(p.name for p in tmp_path.glob("*.png")) == [f"{date}-saturation-saturation.png"]
    data = json.loads(data_file.read_text())
    assert data["scenarios"] == ["saturation"]
    assert not set(data) & (set(SCENARIOS) - {"saturation"})
    _check_saturation(data)
    # Judged on what ran: the saturation targets have verdicts, every other is n/a.
    for t in data["targets"]:
        assert (t["passed"] is not None) == ("own clock" in t["name"].lower()), t
        assert (t["measured"] == "n/a") == (t["passed"] is None), t
    text = (tmp_path / f"{date}-saturation.md").read_text()
    assert "## Saturation (engine on its own clock)" in text and "## Latency" not in text
    assert docs.read_text() == before


def test_startup_probe_reports_every_transport() -> None:
    probe = ["--workers", "2", "--seconds", "0.3", "--tokens", "3", "--itl-ms", "5"]
    done = subprocess.run(
        [sys.executable, "-m", "bench.startup", *probe],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    rows = [line.split("|") for line in done.stdout.splitlines()[3:]]
    assert [row[1].strip() for row in rows] == ["grpc-call", "grpc-session", "tcp"]
    for row in rows:
        assert int(row[2]) >= 2  # every worker finished at least one request


def test_constraints_by_name(tmp_path: Path) -> None:
    """Every workload delivers on one server, against plain text; the "auto" workload's
    seeds really are answered as text; the first-token probe ran every kind."""
    _bench("constraints", "--out", str(tmp_path))

    [data_file] = tmp_path.glob("*.json")
    assert data_file.name.endswith("-constraints.json")
    assert not list(tmp_path.glob("*.png"))
    data = json.loads(data_file.read_text())
    assert data["scenarios"] == ["constraints"]
    constraints = data["constraints"]
    assert constraints["seeds"]
    workloads = {w["workload"]: w for w in constraints["workloads"]}
    assert list(workloads) == [
        "plain",
        "json_schema",
        "regex",
        "tools_none",
        "tools_auto_text",
        "tools_required",
    ]
    for w in workloads.values():
        assert w["errors"] == 0 and w["streams_finished"] > 0, w
        assert w["tokens_per_s"] > 0 and w["server_us_per_token"] > 0, w
        assert w["cpu_vs_plain"] is not None, w
    assert workloads["plain"]["cpu_vs_plain"] == 1.0
    assert workloads["tools_auto_text"]["tool_call_share"] == 0.0
    assert constraints["parser_us_per_token"] is not None
    rounds = data["sizes"]["compile_rounds"]
    for kind in ("plain_s", "cached_s", "fresh_s"):
        assert len(constraints["first_raw"][kind]) == rounds, kind
    assert constraints["first"]["compile_ms"] is not None
    text = (tmp_path / f"{data_file.stem}.md").read_text()
    assert "## Constraints" in text and "CPU per token vs plain" in text
    assert "## Throughput" not in text
