"""Memory: server RSS per idle open stream, and RSS under readers that stopped reading.

Each part starts fresh servers: a server that has already served a saturation
run keeps freed arenas that would hide growth.
"""

from __future__ import annotations

import math
import os
import signal
import time

from . import promtext
from .procs import ServerProcess, Worker, servers
from .records import HoldResult, ServerKind, StreamSpec
from .scenarios import KINDS, MANY, log, wait_idle
from .sizes import Sizes
from .stats import median, slope
from .summary import MemorySummary

IDLE_TTFT_MS = 600_000  # streams open, nothing generated
HOLD_TIMEOUT_S = 120.0
SLOW_MAX_TOKENS = 1_000_000


def _rss_mb(server: ServerProcess, samples: int = 5) -> float:
    values = []
    for _ in range(samples):
        values.append(server.rss() / 2**20)
        time.sleep(0.05)
    return median(values)


def _completion_tokens(server: ServerProcess) -> float:
    if server.metrics_url is None:
        return math.nan
    text = promtext.scrape(server.metrics_url)
    return promtext.value(text, "tokenwire_tokens_total", {"kind": "completion"})


def idle_streams(sizes: Sizes, worker: Worker) -> dict[ServerKind, tuple[float, float]]:
    """Per server: (RSS before, in MB; KB per idle open stream)."""
    tokenwire = [f"--sim-ttft-ms={IDLE_TTFT_MS}", *MANY]
    flags: dict[ServerKind, list[str]] = {
        "tokenwire": tokenwire,
        "http": tokenwire,
        "bare": [f"--ttft-ms={IDLE_TTFT_MS}"],
        "sse": [f"--ttft-ms={IDLE_TTFT_MS}"],
    }
    spec = StreamSpec(256, 1)
    out: dict[ServerKind, tuple[float, float]] = {}
    with servers(flags) as running:
        for kind in KINDS:
            server = running[kind]
            # Warm the code paths first: what is allocated once is not per stream.
            worker.call(
                "hold", HOLD_TIMEOUT_S, target=server.target, spec=spec, n=10, read_first=False
            )
            worker.call("release", HOLD_TIMEOUT_S)
            wait_idle(server)
            base = _rss_mb(server)
            worker.call(
                "hold",
                HOLD_TIMEOUT_S,
                target=server.target,
                spec=spec,
                n=sizes.idle_streams,
                read_first=False,
            )
            time.sleep(0.5)
            held = _rss_mb(server)
            worker.call("release", HOLD_TIMEOUT_S)
            kb = (held - base) * 1024 / sizes.idle_streams
            out[kind] = (base, kb)
            log(f"memory: {kind:9} {sizes.idle_streams} idle streams: {kb:.1f} KB each")
        worker.call("close", 30.0)
    return out


def slow_readers(sizes: Sizes) -> dict[ServerKind, MemorySummary]:
    """Readers that take one message and stop (their process SIGSTOPped) on a fast engine."""
    tokenwire = [
        "--sim-ttft-ms=0",
        "--sim-itl-ms=0",
        "--stall-timeout-s=600",
        f"--max-tokens-limit={SLOW_MAX_TOKENS}",
        f"--sim-max-context={2 * SLOW_MAX_TOKENS}",
        *MANY,
    ]
    flags: dict[ServerKind, list[str]] = {
        "tokenwire": tokenwire,
        "http": tokenwire,
        "bare": [],
        "sse": ["--ttft-ms=0", "--itl-ms=0"],
    }
    # Streams far longer than any buffer on the way: if nothing held the engine
    # back, it would go on generating (and something would go on buffering).
    spec = StreamSpec(SLOW_MAX_TOKENS, 1)
    out: dict[ServerKind, MemorySummary] = {}
    with servers(flags) as running, Worker() as readers:
        for kind in KINDS:
            server = running[kind]
            tokens_before = _completion_tokens(server)
            raw = readers.call(
                "hold",
                HOLD_TIMEOUT_S,
                target=server.target,
                spec=spec,
                n=sizes.slow_readers,
                read_first=True,
            )
            held = HoldResult(**raw)
            os.kill(readers.pid, signal.SIGSTOP)
            try:
                time.sleep(0.3)  # the windows and socket buffers fill up: then it is flat
                times, rss = [], []
                start = time.monotonic()
                while (now := time.monotonic()) - start < sizes.slow_sample_s:
                    times.append(now - start)
                    rss.append(server.rss() / 2**20)
                    time.sleep(0.1)
            finally:
                os.kill(readers.pid, signal.SIGCONT)
            readers.call("release", HOLD_TIMEOUT_S)
            wait_idle(server)
            generated = _completion_tokens(server) - tokens_before
            per_s = slope(times, rss) * 1024
            out[kind] = MemorySummary(
                server=kind,
                idle_streams=sizes.idle_streams,
                idle_base_mb=math.nan,
                idle_kb_per_stream=math.nan,
                slow_readers=sizes.slow_readers,
                slow_tokens_read=held.tokens_read,
                slow_tokens_generated=generated,
                slow_sample_s=sizes.slow_sample_s,
                slow_rss_mb=rss,
                slow_slope_kb_per_s=per_s,
                slow_growth_kb=per_s * sizes.slow_sample_s,
            )
            log(
                f"memory: {kind:9} {sizes.slow_readers} stopped readers: RSS slope "
                f"{per_s:.1f} KB/s over {sizes.slow_sample_s:.1f}s"
                + (f", {generated:,.0f} tokens generated" if not math.isnan(generated) else "")
            )
        readers.call("close", 30.0)
    return out


def memory(sizes: Sizes, worker: Worker) -> dict[ServerKind, MemorySummary]:
    idle = idle_streams(sizes, worker)
    slow = slow_readers(sizes)
    for kind, (base, kb) in idle.items():
        slow[kind].idle_base_mb, slow[kind].idle_kb_per_stream = base, kb
    return slow
