"""Reading tokenwire's /metrics: plain samples, and quantiles of a histogram's bucket deltas."""

from __future__ import annotations

import math
import urllib.request
from collections.abc import Mapping

from prometheus_client.parser import text_string_to_metric_families

ABORT_LATENCY = "tokenwire_abort_latency_seconds"

Buckets = dict[float, float]  # upper bound -> cumulative count


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        return str(response.read().decode())


def value(text: str, name: str, labels: Mapping[str, str] | None = None) -> float:
    """Sum of the samples named ``name`` whose labels include ``labels`` (0 if none)."""
    want = set((labels or {}).items())
    total = 0.0
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and want <= set(s.labels.items()):
                total += s.value
    return total


def buckets(text: str, histogram: str) -> Buckets | None:
    """Cumulative bucket counts of ``histogram``, summed over its label sets; None if absent."""
    found: Buckets = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == f"{histogram}_bucket":
                le = float(s.labels["le"])
                found[le] = found.get(le, 0.0) + s.value
    return found or None


def delta(after: Buckets, before: Buckets | None) -> Buckets:
    return {le: n - (before or {}).get(le, 0.0) for le, n in after.items()}


def histogram_quantile(q: float, counts: Buckets) -> float:
    """Prometheus' histogram_quantile: linear within the bucket holding the q-th observation."""
    bounds = sorted(counts)
    if not bounds or counts[bounds[-1]] <= 0:
        return math.nan
    rank = q * counts[bounds[-1]]
    lower, below = 0.0, 0.0
    for le in bounds:
        if counts[le] >= rank:
            if math.isinf(le):
                return lower  # beyond the last finite bound: all we can say
            inside = counts[le] - below
            return lower + (le - lower) * ((rank - below) / inside if inside else 1.0)
        lower, below = le, counts[le]
    return lower
