"""The load generator's throughput and latency scenarios, run inside the worker process.

Every loop here ends by count or by clock; a stream that fails is counted and
replaced (closed loop), so one error does not silently lower the load.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from functools import partial

import aiohttp
import grpc
import psutil

from .clients import Client
from .records import LatencySample, SaturationSample, StreamSpec, Target

STOP_GRACE_S = 10.0  # bound on tearing down a point's streams
# Bound on waiting for every stream of a point to deliver its first token: within
# STOP_GRACE_S, which the closed loops run past the window anyway.
FLOWING_BOUND_S = 5.0


class Counters:
    """A saturation sink: tokens and token-carrying messages delivered."""

    __slots__ = ("errors", "first_error", "messages", "tokens")

    def __init__(self) -> None:
        self.tokens = 0
        self.messages = 0
        self.errors = 0
        self.first_error: str | None = None

    def message(self, at: float, tokens: int) -> None:
        self.messages += 1
        self.tokens += tokens

    def failed(self, error: BaseException) -> None:
        self.errors += 1
        if self.first_error is None:
            self.first_error = f"{type(error).__name__}: {error}"[:300]


async def _closed_loop(
    run: Callable[[], Awaitable[None]], until: float, counters: Counters
) -> None:
    """Run streams back to back until the clock says stop (or 10,000 failures)."""
    while time.perf_counter() < until and counters.errors < 10_000:
        try:
            await run()
        except (
            OSError,
            EOFError,
            ValueError,  # a malformed event
            TimeoutError,
            aiohttp.ClientError,
            grpc.aio.AioRpcError,
        ) as error:
            counters.failed(error)
            await asyncio.sleep(0.01)  # a refusing server must not spin us


async def stop_tasks(tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    if tasks:
        await asyncio.wait(tasks, timeout=STOP_GRACE_S)


class CpuClock:
    """CPU seconds used so far by the server, by this process, and by the whole machine."""

    def __init__(self, server_pid: int) -> None:
        self.server = psutil.Process(server_pid)
        self.me = psutil.Process()

    def read(self) -> tuple[float, float, float]:
        system = psutil.cpu_times()
        busy = sum(system) - system.idle - getattr(system, "iowait", 0.0)
        server, me = self.server.cpu_times(), self.me.cpu_times()
        return server.user + server.system, me.user + me.system, busy


class _Flowing:
    """Set once every slot of a point has had a token."""

    __slots__ = ("event", "waiting")

    def __init__(self, slots: int) -> None:
        self.waiting = slots
        self.event = asyncio.Event()

    def one(self) -> None:
        self.waiting -= 1
        if self.waiting == 0:
            self.event.set()


class Slot:
    """One closed-loop task's sink: its own token count (its delivered rate), forwarded to
    the point's shared Counters."""

    __slots__ = ("flowing", "shared", "tokens")

    def __init__(self, shared: Counters, flowing: _Flowing) -> None:
        self.shared = shared
        self.flowing = flowing
        self.tokens = 0

    def message(self, at: float, tokens: int) -> None:
        if tokens and not self.tokens:
            self.flowing.one()
        self.tokens += tokens
        self.shared.message(at, tokens)


async def saturate(
    client: Client,
    target: Target,
    spec: StreamSpec,
    streams: int,
    warmup_s: float,
    window_s: float,
    per_stream: bool = False,
) -> SaturationSample:
    """``streams`` closed-loop streams; count what arrives in a window after a warmup (and
    once every stream is flowing). ``per_stream``: record each slot's rate as well."""
    counters, flowing = Counters(), _Flowing(streams)
    slots = [Slot(counters, flowing) for _ in range(streams)]
    until = time.perf_counter() + warmup_s + window_s + STOP_GRACE_S
    tasks = [
        asyncio.create_task(_closed_loop(partial(client.run_stream, spec, slot), until, counters))
        for slot in slots
    ]
    clock = CpuClock(target.pid)
    try:
        await asyncio.sleep(warmup_s)
        # A window that opened while some streams were still queued to start would
        # charge their start to the fairness figures: wait (bounded) for the last.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(flowing.event.wait(), FLOWING_BOUND_S)
        t0, tok0, msg0, cpu0 = time.perf_counter(), counters.tokens, counters.messages, clock.read()
        start = [slot.tokens for slot in slots]
        await asyncio.sleep(window_s)
        t1, tok1, msg1, cpu1 = time.perf_counter(), counters.tokens, counters.messages, clock.read()
        end = [slot.tokens for slot in slots]
    finally:
        await stop_tasks(tasks)
    server_s, client_s = cpu1[0] - cpu0[0], cpu1[1] - cpu0[1]
    rates = [round((b - a) / (t1 - t0), 1) for a, b in zip(start, end, strict=True)]
    return SaturationSample(
        server=target.kind,
        step=spec.step,
        streams=streams,
        window_s=t1 - t0,
        tokens=tok1 - tok0,
        messages=msg1 - msg0,
        server_cpu_s=server_s,
        client_cpu_s=client_s,
        other_cpu_s=max(0.0, cpu1[2] - cpu0[2] - server_s - client_s),
        errors=counters.errors,
        first_error=counters.first_error,
        stream_rates=rates if per_stream else [],
    )


class _Schedule:
    """A latency sink for one stream: each token's arrival against the simulator's schedule.

    Token i is due at ``sent + ttft + i * itl`` on the client's clock (CLOCK_MONOTONIC).
    The same tokens are also measured against the first token's arrival (``first + i *
    itl``): that leaves out whatever delayed the stream's start, which the schedule from
    ``sent`` charges to every token of the stream. Samples are kept only when they
    arrive inside the measured window.
    """

    __slots__ = ("first", "itl", "record", "seen", "sent", "ttft", "window")

    def __init__(
        self, record: LatencySample, ttft: float, itl: float, window: tuple[float, float]
    ) -> None:
        self.record = record
        self.ttft = ttft
        self.itl = itl
        self.window = window
        self.sent = time.perf_counter()
        self.first = 0.0
        self.seen = 0

    def message(self, at: float, tokens: int) -> None:
        if self.seen == 0:
            self.first = at
        start, end = self.window
        if start <= at <= end:
            due = self.sent + self.ttft
            if self.seen == 0:
                self.record.ttft_delays.append(at - due)
            delays, stream = self.record.token_delays, self.record.stream_delays
            for i in range(max(self.seen, 1), self.seen + tokens):
                delays.append(at - (due + i * self.itl))
                stream.append(at - (self.first + i * self.itl))
        self.seen += tokens


async def latency(
    client: Client,
    target: Target,
    spec: StreamSpec,
    streams: int,
    ttft_s: float,
    itl_s: float,
    warmup_s: float,
    window_s: float,
) -> LatencySample:
    """``streams`` closed-loop streams on the simulator's schedule, their starts spread
    over one inter-token interval (independent clients, not one lock-step batch)."""
    record = LatencySample(server=target.kind)
    counters = Counters()
    start = time.perf_counter()
    window = (start + warmup_s, start + warmup_s + window_s)

    async def run() -> None:
        record.streams_started += 1
        await client.run_stream(spec, _Schedule(record, ttft_s, itl_s, window))

    async def one(i: int) -> None:
        await asyncio.sleep(i * itl_s / streams)
        await _closed_loop(run, window[1], counters)

    tasks = [asyncio.create_task(one(i)) for i in range(streams)]
    clock = CpuClock(target.pid)
    try:
        await asyncio.sleep(warmup_s)
        t0, cpu0 = time.perf_counter(), clock.read()
        await asyncio.sleep(window_s)
        t1, cpu1 = time.perf_counter(), clock.read()
    finally:
        await stop_tasks(tasks)
    record.window_s = t1 - t0
    record.server_cpu_s, record.client_cpu_s = cpu1[0] - cpu0[0], cpu1[1] - cpu0[1]
    record.other_cpu_s = max(0.0, cpu1[2] - cpu0[2] - record.server_cpu_s - record.client_cpu_s)
    record.errors, record.first_error = counters.errors, counters.first_error
    return record
