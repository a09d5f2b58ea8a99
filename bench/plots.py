"""The report's plots (matplotlib, Agg: no display needed), drawn from the JSON-able summaries."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on our machines

import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from .records import ServerKind
from .summary import SATURATION_SERIES, THROUGHPUT_SERIES, LatencySummary, SaturationPoint
from .targets import SATURATION_GOAL

_LABELS: dict[ServerKind, str] = {
    "tokenwire": "tokenwire gRPC",
    "http": "tokenwire HTTP SSE",
    "bare": "bare grpc.aio (ceiling)",
    "sse": "FastAPI SSE peer",
}
_COLORS: dict[ServerKind, str] = {"tokenwire": "C0", "http": "C1", "bare": "C2", "sse": "C3"}


def _series(
    points: Sequence[SaturationPoint], server: ServerKind, step: int
) -> list[SaturationPoint]:
    return sorted(
        (p for p in points if (p.server, p.step) == (server, step)), key=lambda p: p.streams
    )


def _by_streams(axes: Sequence[Axes], points: Sequence[SaturationPoint]) -> None:
    """Concurrent streams on a log scale, ticked at the levels measured."""
    levels = sorted({p.streams for p in points})
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.set_xticks(levels, labels=[f"{n:,}" for n in levels])
        ax.set_xlabel("concurrent streams")
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)


def _save(fig: Figure, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def throughput(points: Sequence[SaturationPoint], path: Path) -> None:
    """The engine on demand: tokens/s and server CPU per token against concurrency."""
    fig, (tps, cpu) = plt.subplots(1, 2, figsize=(11, 4.2))
    for server, step in THROUGHPUT_SERIES:
        series = _series(points, server, step)
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
    _by_streams((tps, cpu), points)
    tps.set_ylabel("delivered tokens/s (median)")
    tps.set_title("Throughput, engine on demand")
    cpu.set_ylabel("server CPU per token (us)")
    cpu.set_title("Throughput: server cost")
    tps.legend(fontsize="small")
    _save(fig, path)


def saturation(points: Sequence[SaturationPoint], ceiling_msgs: float, path: Path) -> None:
    """The engine on its own clock: tokens per message and delivered tokens/s against
    concurrency, with the target's line at SATURATION_GOAL x the bare ceiling's msgs/s."""
    fig, (tpm, tps) = plt.subplots(1, 2, figsize=(11, 4.2))
    for server, step in SATURATION_SERIES:
        series = _series(points, server, step)
        xs = [p.streams for p in series]
        color, label = _COLORS[server], _LABELS[server]
        tpm.plot(xs, [p.tokens_per_message for p in series], marker="o", color=color, label=label)
        tps.plot(xs, [p.tokens_per_s for p in series], marker="o", color=color, label=label)
    if not math.isnan(ceiling_msgs):
        tps.axhline(
            SATURATION_GOAL * ceiling_msgs,
            linestyle=":",
            color=_COLORS["bare"],
            label=f"{SATURATION_GOAL:g}x the bare ceiling's msgs/s",
        )
    _by_streams((tpm, tps), [p for p in points if p.server != "bare"])
    tpm.set_ylabel("tokens per message (median)")
    tpm.set_title("Own clock: how far each server groups")
    tps.set_ylabel("delivered tokens/s (median)")
    tps.set_title("Own clock: throughput")
    for ax in (tpm, tps):
        ax.legend(fontsize="small")
    _save(fig, path)


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
    _save(fig, path)
