"""The router values of docs/deploy.md ("Scale out with llm-d") name only metrics
tokenwire exports: llm-d's endpoint picker reads exactly the names its
``engineConfigs`` entry gives, from ``/metrics`` on the pod's inference port, and a
name that is not there leaves that signal empty without an error anyone sees.

The values live in helm/tokenwire/examples/llmd-router-values.yaml, which the guide
points at and quotes; ``make helm-check`` checks that they fit the chart's
InferencePool (same pods, same port, the engine type of the pods' label)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml  # type: ignore[import-untyped]  # PyYAML, from the lock; no stubs there

from ..helpers import http_request

ROOT = Path(__file__).resolve().parents[2]
ROUTER_VALUES = ROOT / "helm" / "tokenwire" / "examples" / "llmd-router-values.yaml"
DEPLOY = ROOT / "docs" / "deploy.md"
OPERATIONS = ROOT / "docs" / "operations.md"

# The fields of an engineConfigs entry that name metrics, as llm-d-router's
# core-metrics-extractor reads them (extractor/metrics/factories.go), and the
# labels each metric must carry for the picker to read it.
SPEC_LABELS = {
    "queuedRequestsSpec": set(),
    "runningRequestsSpec": set(),
    "kvUsageSpec": set(),
    "loraSpec": {"max_lora", "running_lora_adapters", "waiting_lora_adapters"},
    "cacheInfoSpec": {"block_size", "num_gpu_blocks"},
}


def engine_configs(values: dict[str, Any]) -> list[dict[str, str]]:
    """The core-metrics-extractor's engineConfigs in router chart values."""
    epp = values["router"]["epp"]
    config = yaml.safe_load(epp["pluginsCustomConfig"][epp["pluginsConfigFile"]])
    extractors = [p for p in config["plugins"] if p["type"] == "core-metrics-extractor"]
    assert len(extractors) == 1
    configs: list[dict[str, str]] = extractors[0]["parameters"]["engineConfigs"]
    return configs


def tokenwire_entry() -> dict[str, str]:
    entries = engine_configs(yaml.safe_load(ROUTER_VALUES.read_text()))
    assert [e["name"] for e in entries] == ["tokenwire"]
    return entries[0]


def metric_name(spec: str) -> str:
    """A spec is a family name with an optional label matcher: name{label=value}."""
    match = re.fullmatch(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?", spec)
    assert match, f"not a metric spec: {spec!r}"
    return match.group(1)


def documented_metrics() -> set[str]:
    text = OPERATIONS.read_text()
    return set(re.findall(r"^\| `(tokenwire_[a-z_]+)` \|", text, re.MULTILINE))


def families(text: str) -> dict[str, tuple[str, list[set[str]]]]:
    """Family name -> (type, label names of each sample), read the way the picker's
    Prometheus text parser reads them: by the ``# TYPE`` lines, names as written."""
    types = dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.MULTILINE))
    samples: dict[str, list[set[str]]] = {name: [] for name in types}
    for line in text.splitlines():
        match = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? ", line)
        if match and match.group(1) in samples:
            labels = set(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="', match.group(2) or ""))
            samples[match.group(1)].append(labels)
    return {name: (kind, samples[name]) for name, kind in types.items()}


def test_the_tokenwire_entry_maps_every_signal_the_picker_reads():
    entry = tokenwire_entry()
    assert set(entry) == {"name", *SPEC_LABELS}, "an engineConfigs entry replaces, not merges"
    assert all(entry[field] for field in SPEC_LABELS), "an empty spec turns that signal off"


def test_the_entry_names_only_documented_metrics():
    documented = documented_metrics()
    named = {metric_name(spec) for field, spec in tokenwire_entry().items() if field != "name"}
    assert named - documented == set(), "name only metrics of docs/operations.md's table"


async def test_the_entry_names_only_metrics_the_http_port_exports(make_server):
    """What a real server serves on its HTTP port's /metrics, where the picker scrapes:
    each named family is there, a gauge, with the labels the picker reads."""
    server = await make_server(lora="sql=/adapters/sql")
    status, _, body = await http_request(server.http_port, "/metrics", method="GET")
    assert status == 200
    exported = families(body.decode())
    for field, spec in tokenwire_entry().items():
        if field == "name":
            continue
        name = metric_name(spec)
        assert name in exported, f"{field}: {name} is not on the HTTP port's /metrics"
        kind, samples = exported[name]
        assert kind == "gauge", f"{field}: {name} is a {kind}, the picker reads gauges"
        assert len(samples) == 1, f"{field}: {name} must be one series, not {samples}"
        assert SPEC_LABELS[field] <= samples[0], f"{field}: {name} lacks labels"


def test_the_deploy_guide_quotes_the_router_values():
    """The guide points at the values file, and every engineConfigs entry it shows is
    the file's."""
    text = DEPLOY.read_text()
    assert "## Scale out with llm-d" in text
    section = text.split("## Scale out with llm-d", 1)[1].split("\n## ", 1)[0]
    assert str(ROUTER_VALUES.relative_to(ROOT)) in section
    blocks = re.findall(r"^```yaml\n(.*?)^```", section, re.MULTILINE | re.DOTALL)
    shown = [
        entry
        for block in blocks
        for entry in find_engine_configs(yaml.safe_load(block))
        if "engineConfigs" in block
    ]
    assert shown, "the guide shows the engineConfigs entry"
    assert all(entry == tokenwire_entry() for entry in shown)
    # What is routed how, and the signals, as the guide says them.
    for words in ("openai-parser", "passthrough-parser", "50 ms", "llm-d.ai/engine-type"):
        assert words in section, f"the llm-d section does not say {words!r}"


def find_engine_configs(node: Any) -> list[dict[str, str]]:
    """Every engineConfigs entry in a YAML document, also inside embedded config files."""
    found: list[dict[str, str]] = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "engineConfigs":
                found.extend(value)
            elif isinstance(value, str) and "engineConfigs" in value:
                found.extend(find_engine_configs(yaml.safe_load(value)))
            else:
                found.extend(find_engine_configs(value))
    elif isinstance(node, list):
        for item in node:
            found.extend(find_engine_configs(item))
    return found
