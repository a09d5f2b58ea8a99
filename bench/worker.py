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

from . import constrained_load, load, open_streams
from .clients import Client, make_client
from .constrained_load import WorkloadClient
from .records import StreamSpec, Target

IDLE_EXIT_S = 900.0  # no command for this long: the orchestrator is gone


class Worker:
    def __init__(self) -> None:
        self.clients: dict[Target, Client] = {}
        self.workload_clients: dict[Target, WorkloadClient] = {}
        self.holder = open_streams.Holder()

    def client(self, target: Target, spec: StreamSpec) -> Client:
        if spec.workload:  # the constraints scenario's requests
            return self.workload_client(target)
        if target not in self.clients:
            self.clients[target] = make_client(target)
        return self.clients[target]

    def workload_client(self, target: Target) -> WorkloadClient:
        if target not in self.workload_clients:
            self.workload_clients[target] = WorkloadClient(target)
        return self.workload_clients[target]

    async def handle(self, op: str, args: dict[str, Any]) -> object:
        if op == "close":
            await self.holder.close()
            for client in [*self.clients.values(), *self.workload_clients.values()]:
                await client.close()
            self.clients.clear()
            self.workload_clients.clear()
            return None
        if op == "release":
            await self.holder.close()
            return None
        target = Target(**args.pop("target"))
        if op == "tally":
            tallies = self.workload_client(target).take_tallies()
            return {name: asdict(tally) for name, tally in tallies.items()}
        if op == "first_tokens":
            return asdict(await constrained_load.first_tokens(self.workload_client(target), **args))
        spec = StreamSpec.of(args.pop("spec"))
        if op == "text_seeds":
            return await constrained_load.text_seeds(self.workload_client(target), spec, **args)
        client = self.client(target, spec)
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
