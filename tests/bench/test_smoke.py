"""The benchmark harness end to end at tiny sizes: every scenario runs and reports.

Part of ``make test``. It checks the instrument, not tokenwire's speed: figures on
a shared 2-core machine are noise at these sizes.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SECTIONS = (
    "## Targets",
    "## Method",
    "## Saturation",
    "## Latency",
    "## Cancellation",
    "## Memory",
)
SERVERS = {"tokenwire", "http", "bare", "sse"}
TOKENWIRE = {"tokenwire", "http"}  # tokenwire's gRPC door, and its HTTP door (SSE)


def test_every_scenario_reports(tmp_path: Path) -> None:
    docs = tmp_path / "docs" / "performance.md"
    docs.parent.mkdir()
    shutil.copy(ROOT / "docs" / "performance.md", docs)
    out = tmp_path / "results"
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--out", str(out), "--docs", str(docs)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=100,
    )
    assert done.returncode == 0, done.stderr[-4000:]

    [report] = out.glob("*.md")
    date = report.stem
    for name in (f"{date}.json", f"{date}-throughput.png", f"{date}-latency.png"):
        assert (out / name).stat().st_size > 0, name
    text = report.read_text()
    for section in SECTIONS:
        assert section in text, section
    assert f"]({date}-throughput.png)" in text and f"]({date}-latency.png)" in text

    data = json.loads((out / f"{date}.json").read_text())
    series = {(p["server"], p["step"]) for p in data["saturation"]["points"]}
    assert series == {
        ("tokenwire", 1),
        ("tokenwire", 4),
        ("http", 1),
        ("http", 4),
        ("bare", 1),
        ("bare", 4),
        ("sse", 1),
    }
    for sample in data["saturation"]["samples"]:
        assert sample["errors"] == 0, sample
        assert sample["tokens"] > 0 and sample["server_cpu_s"] > 0, sample
    assert set(data["latency"]) == SERVERS
    for summary in data["latency"].values():
        assert summary["token_samples"] > 0 and summary["ttft_samples"] > 0, summary
        assert summary["errors"] == 0, summary
    assert set(data["cancellation"]) == TOKENWIRE
    for cancel in data["cancellation"].values():
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
    assert len(data["targets"]) >= 15
    names = " ".join(t["name"] for t in data["targets"])
    assert "HTTP SSE, 128 streams, step 1" in names and "client disconnect" in names
    # A target is judged exactly when it was measured: n/a rows carry no verdict.
    for t in data["targets"]:
        assert (t["measured"] == "n/a") == (t["passed"] is None), t

    # The docs page's figures block now holds this run's targets and plots.
    page = docs.read_text()
    assert f"{date}-throughput.png" in page and "| target | goal | measured | result |" in page


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
