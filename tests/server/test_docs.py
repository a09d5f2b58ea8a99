"""The operations guide keeps up with the code: every setting and metric is documented."""

from __future__ import annotations

from pathlib import Path

from tokenwire.server.settings import Settings

from ..e2e.test_server_process import CONTRACT_METRICS

ROOT = Path(__file__).resolve().parents[2]


def test_every_setting_is_in_the_operations_guide():
    text = (ROOT / "docs" / "operations.md").read_text()
    missing = [name for name in Settings.model_fields if f"--{name.replace('_', '-')}" not in text]
    assert not missing, f"document these settings in docs/operations.md: {missing}"


def test_every_metric_is_in_the_operations_guide():
    text = (ROOT / "docs" / "operations.md").read_text()
    assert [m for m in CONTRACT_METRICS if m not in text] == []
