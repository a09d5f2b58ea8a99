"""The report's plots (matplotlib, Agg: no display needed), drawn from the JSON-able summaries."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on our machines

import matplotlib.pyplot as plt

from .records import ServerKind
from .summary import SERIES, LatencySummary, SaturationPoint

_LABELS: dict[ServerKind, str] = {
    "tokenwire": "tokenwire gRPC",
    "http": "tokenwire HTTP SSE",
    "bare": "bare grpc.aio (ceiling)",
    "sse": "FastAPI SSE peer",
}
_COLORS: dict[ServerKind, str] = {"tokenwire": "C0", "http": "C1", "bare": "C2", "sse": "C3"}


def throughput(points: Sequence[SaturationPoint], path: Path) -> None:
    """Tokens/s and server CPU per token against concurrency, one line per series."""
    fig, (tps, cpu) = plt.subplots(1, 2, figsize=(11, 4.2))
    for server, step in SERIES:
        series = sorted(
            (p for p in points if (p.server, p.step) == (server, step)), key=lambda p: p.streams
        )
        if not series:
            continue
        xs = [p.streams for p in series]
        style = "-" if step == 1 else "--"
        label = f"{_LABELS[server]}, step {step}"
        color = _COLORS[server]
        tps.plot(xs, [p.tokens_per_s for p in series], style, marker="o", color=color, label=label)
        cpu.plot(
            xs, [p.server_us_per_token for p in series], style, marker="o", color=color, label=label
        )
    levels = sorted({p.streams for p in points})
    for ax in (tps, cpu):
        ax.set_xscale("log", base=2)
        ax.set_xticks(levels, labels=[f"{n:,}" for n in levels])
        ax.set_xlabel("concurrent streams")
        ax.grid(True, alpha=0.3)
    tps.set_ylabel("delivered tokens/s (median)")
    tps.set_ylim(bottom=0)
    tps.set_title("Saturation: throughput")
    cpu.set_ylabel("server CPU per token (us)")
    cpu.set_ylim(bottom=0)
    cpu.set_title("Saturation: server cost")
    tps.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def latency_cdf(latency: Mapping[ServerKind, LatencySummary], path: Path) -> None:
    """CDFs of the added delay per token and of the added time to first token."""
    fig, (tok, first) = plt.subplots(1, 2, figsize=(11, 4.2))
    for kind, summary in latency.items():
        curves = (
            (tok, summary.token_cdf_ms, "-", _LABELS[kind]),
            (tok, summary.stream_cdf_ms, ":", f"{kind}, from the first token"),
            (first, summary.ttft_cdf_ms, "-", _LABELS[kind]),
        )
        for ax, cdf, style, label in curves:
            if cdf:
                ys = [i / (len(cdf) - 1) for i in range(len(cdf))]
                ax.plot(cdf, ys, style, color=_COLORS[kind], label=label)
    tok.set_title("Added delay per token (beyond the schedule)")
    first.set_title("Added time to first token")
    for ax in (tok, first):
        ax.set_xlabel("ms")
        ax.set_ylabel("fraction of samples")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small", loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
