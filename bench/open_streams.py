"""Streams opened and left open, in the worker process: cancelled in rounds, or held.

Every wait here is bounded; /metrics is read with a regular expression rather
than a parser, so that a poll costs the load generator little.
"""

from __future__ import annotations

import asyncio
import re
import time

import aiohttp

from .clients import Cancel, Client
from .load import stop_tasks
from .records import CancelSample, HoldResult, StreamSpec, Target

_IN_FLIGHT = re.compile(rb"^tokenwire_engine_requests_in_flight(?:\{[^}]*\})? (\S+)$", re.M)
_STREAMS_ACTIVE = re.compile(rb"^tokenwire_streams_active(?:\{[^}]*\})? (\S+)$", re.M)


async def _scrape(session: aiohttp.ClientSession, url: str, pattern: re.Pattern[bytes]) -> float:
    async with session.get(url) as response:
        match = pattern.search(await response.read())
    return float(match.group(1)) if match else float("nan")


async def cancel_rounds(
    client: Client, target: Target, spec: StreamSpec, rounds: int, streams: int
) -> CancelSample:
    """Open ``streams`` streams, wait for a token on each, cancel them all at once (a gRPC
    cancel, or the HTTP connection closed), then poll /metrics as fast as it answers until
    the engine has nothing in flight."""
    assert target.metrics_url is not None
    sample = CancelSample()
    connector = aiohttp.TCPConnector(force_close=True)  # the metrics server closes anyway
    async with aiohttp.ClientSession(connector=connector) as session:
        for _ in range(rounds):
            sample.cancelled += await _open_then_cancel(client, spec, streams)
            last_cancel = time.perf_counter()
            idle = None
            while time.perf_counter() - last_cancel < 2.0:
                asked = time.perf_counter()
                in_flight = await _scrape(session, target.metrics_url, _IN_FLIGHT)
                now = time.perf_counter()
                sample.scrape_s.append(now - asked)
                if in_flight == 0:
                    idle = now - last_cancel
                    break
            if idle is None:
                sample.timeouts += 1
            else:
                sample.idle_s.append(idle)
            await asyncio.sleep(0.05)  # let the server finish the cancelled calls' endings
    return sample


async def _open_then_cancel(client: Client, spec: StreamSpec, streams: int) -> int:
    """One round: ``streams`` streams each read up to a token, then all cancelled at once."""
    cancels: list[Cancel] = []

    async def open_one() -> None:
        cancels.append(await client.first_token(spec))

    try:
        # A failure or the timeout cancels the openings still under way, and each of
        # those ends its own stream; the streams already open are ended here.
        async with asyncio.timeout(10.0), asyncio.TaskGroup() as group:
            for _ in range(streams):
                group.create_task(open_one())
    finally:
        for cancel in cancels:
            cancel()
    return len(cancels)


class Holder:
    """Streams held open (idle, or stopped after their first token) until released."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.tasks: list[asyncio.Task[None]] = []
        self.tokens_read = 0

    async def open(
        self, client: Client, target: Target, spec: StreamSpec, n: int, read_first: bool
    ) -> HoldResult:
        opened = 0
        done = asyncio.Event()

        def on_open(tokens: int) -> None:
            nonlocal opened
            opened += 1
            self.tokens_read += tokens
            if opened == n:
                done.set()

        for _ in range(n):
            self.tasks.append(
                asyncio.create_task(client.hold(spec, read_first, on_open, self.release))
            )
        await asyncio.wait_for(done.wait(), 60.0)
        if target.metrics_url is not None and not read_first:
            # tokenwire's gRPC door sends headers with the first token, and an open HTTP
            # answer is not yet a stream in the engine's books: ask its metrics instead.
            await _wait_metric(target, _STREAMS_ACTIVE, n)
        return HoldResult(opened=opened, tokens_read=self.tokens_read)

    async def close(self) -> None:
        self.release.set()
        await stop_tasks(self.tasks)
        self.tasks.clear()
        self.release = asyncio.Event()  # for the next group
        self.tokens_read = 0


async def _wait_metric(target: Target, pattern: re.Pattern[bytes], at_least: int) -> None:
    assert target.metrics_url is not None
    deadline = time.perf_counter() + 60.0
    async with aiohttp.ClientSession() as session:
        while time.perf_counter() < deadline:
            if await _scrape(session, target.metrics_url, pattern) >= at_least:
                return
            await asyncio.sleep(0.05)
    raise TimeoutError(f"fewer than {at_least} streams open after 60 s")
