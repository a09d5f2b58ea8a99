"""The load generator process: commands in on stdin, results out on stdout, one JSON per line.

    python -m bench.worker      # driven by bench.procs.Worker; runs on uvloop

A process of its own, so that its CPU time is its own and the orchestrator's
bookkeeping never competes with it inside one event loop. It keeps a client per
target (one gRPC channel, or one aiohttp session) across commands.
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import traceback
from dataclasses import asdict
from typing import Any

import uvloop

from . import load, open_streams
from .clients import Client, make_client
from .records import StreamSpec, Target

IDLE_EXIT_S = 900.0  # no command for this long: the orchestrator is gone


class Worker:
    def __init__(self) -> None:
        self.clients: dict[Target, Client] = {}
        self.holder = open_streams.Holder()

    def client(self, target: Target) -> Client:
        if target not in self.clients:
            self.clients[target] = make_client(target)
        return self.clients[target]

    async def handle(self, op: str, args: dict[str, Any]) -> object:
        if op == "close":
            await self.holder.close()
            for client in self.clients.values():
                await client.close()
            self.clients.clear()
            return None
        if op == "release":
            await self.holder.close()
            return None
        target = Target(**args.pop("target"))
        spec = StreamSpec(**args.pop("spec"))
        client = self.client(target)
        if op == "saturate":
            return asdict(await load.saturate(client, target, spec, **args))
        if op == "latency":
            return asdict(await load.latency(client, target, spec, **args))
        if op == "cancel":
            return asdict(await open_streams.cancel_rounds(client, target, spec, **args))
        if op == "hold":
            return asdict(await self.holder.open(client, target, spec, **args))
        raise ValueError(f"unknown op {op!r}")


async def serve() -> None:
    loop = asyncio.get_running_loop()
    lines: asyncio.Queue[str] = asyncio.Queue()

    def read_stdin() -> None:
        # A daemon thread: a blocked readline never keeps the process alive.
        for line in sys.stdin:
            loop.call_soon_threadsafe(lines.put_nowait, line)
        loop.call_soon_threadsafe(lines.put_nowait, "")

    threading.Thread(target=read_stdin, daemon=True).start()
    worker = Worker()
    try:
        while True:
            try:
                line = await asyncio.wait_for(lines.get(), IDLE_EXIT_S)
            except TimeoutError:
                return
            if not line:
                return
            command = json.loads(line)
            try:
                result = await worker.handle(command.pop("op"), command)
                reply: dict[str, object] = {"ok": True, "result": result}
            except Exception as error:
                traceback.print_exc()
                reply = {"ok": False, "error": f"{type(error).__name__}: {error}"}
            sys.stdout.write(json.dumps(reply) + "\n")
            sys.stdout.flush()
    finally:
        await worker.handle("close", {})


def main() -> None:
    uvloop.run(serve())


if __name__ == "__main__":
    main()
