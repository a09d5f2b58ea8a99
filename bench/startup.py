"""Where a stream's start-up time goes: new gRPC calls, an open gRPC stream, raw TCP.

    python -m bench.startup                      # 64 workers, 10 s per transport
    python -m bench.startup --workers 8 --seconds 3

The latency scenario's streams reach the server milliseconds after the client
sent them, on the bare grpc.aio baseline as on tokenwire. This probe repeats
that pattern with no tokenwire code at all, over three transports, each server
in its own process on uvloop:

- ``grpc-call``: every request is a new unary-stream call on one channel (what
  ``Generate`` clients do);
- ``grpc-session``: every worker keeps one bidirectional stream open and sends
  its next request on it;
- ``tcp``: every worker keeps one TCP connection and sends a line per request.

Each worker sends a request, reads ``--tokens`` replies sent ``--itl-ms`` apart,
and sends the next at once (closed loop); workers start spread over one
interval. "arrival" is the server's CLOCK_MONOTONIC reading when the request
reached its handler minus the client's reading when it sent it (one clock for
all processes on Linux); "token" is each reply's delay against the schedule
from the send, as in the latency scenario.
"""

from __future__ import annotations

import argparse
import asyncio
import select
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import grpc
import uvloop

from .stats import quantile

TRANSPORTS = ("grpc-call", "grpc-session", "tcp")
_SERVICE = "tokenwire.bench.Startup"


def _encode(text: str) -> bytes:
    return text.encode()


# The servers name no response serializer: a grpc.aio server turns a str message
# into its UTF-8 bytes before any serializer would see it (a client does not).


def _decode(data: bytes) -> str:
    return data.decode()


# -- servers: each reply schedule starts when the request reaches the handler --


async def _replies(request: str) -> AsyncIterator[str]:
    """The arrival time first, then the remaining replies on the schedule."""
    arrived = time.perf_counter()
    tokens, itl = (float(x) for x in request.split())
    loop = asyncio.get_running_loop()
    due = loop.time() + itl
    for i in range(int(tokens)):
        await asyncio.sleep(max(due - loop.time(), 0.0))
        due += itl
        yield repr(arrived) if i == 0 else "t"


async def _grpc_call(request: str, context: object) -> AsyncIterator[str]:
    async for reply in _replies(request):
        yield reply


async def _grpc_session(requests: AsyncIterator[str], context: object) -> AsyncIterator[str]:
    async for request in requests:
        async for reply in _replies(request):
            yield reply


async def _serve_grpc() -> None:
    server = grpc.aio.server()
    handlers: dict[str, grpc.RpcMethodHandler[str, str]] = {
        "Call": grpc.unary_stream_rpc_method_handler(_grpc_call, _decode),
        "Session": grpc.stream_stream_rpc_method_handler(_grpc_session, _decode),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(_SERVICE, handlers),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(port, flush=True)
    await server.wait_for_termination()


async def _tcp_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while line := await reader.readline():
            async for reply in _replies(line.decode()):
                writer.write(reply.encode() + b"\n")
            writer.write(b"end\n")
    except ConnectionError:
        pass
    finally:
        writer.close()


async def _serve_tcp() -> None:
    server = await asyncio.start_server(_tcp_connection, "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    await server.serve_forever()


# -- the load: one worker per stream, closed loop ------------------------------

Worker = Callable[[], Awaitable[None]]


class Delays:
    def __init__(self, itl: float) -> None:
        self.itl = itl
        self.arrival: list[float] = []
        self.token: list[float] = []

    def reply(self, sent: float, i: int, reply: str) -> None:
        at = time.perf_counter()
        if i == 0:
            self.arrival.append(float(reply) - sent)
        self.token.append(at - sent - (i + 1) * self.itl)


async def _load(transport: str, port: int, args: argparse.Namespace, delays: Delays) -> None:
    request = f"{args.tokens} {args.itl_ms / 1000.0}"
    end = time.perf_counter() + args.seconds
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")

    async def calls() -> None:
        call = channel.unary_stream(f"/{_SERVICE}/Call", _encode, _decode)
        while time.perf_counter() < end:
            sent = time.perf_counter()
            i = 0
            async for reply in call(request):
                delays.reply(sent, i, reply)
                i += 1

    async def session() -> None:
        stream = channel.stream_stream(f"/{_SERVICE}/Session", _encode, _decode)()
        while time.perf_counter() < end:
            sent = time.perf_counter()
            await stream.write(request)
            for i in range(args.tokens):
                reply = await stream.read()
                assert isinstance(reply, str), "the stream ended early"
                delays.reply(sent, i, reply)
        await stream.done_writing()

    async def tcp() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        while time.perf_counter() < end:
            sent = time.perf_counter()
            writer.write(request.encode() + b"\n")
            for i in range(args.tokens + 1):
                line = (await reader.readline()).decode().strip()
                if line != "end":
                    delays.reply(sent, i, line)
        writer.close()

    worker: Worker = {"grpc-call": calls, "grpc-session": session, "tcp": tcp}[transport]

    async def spread(i: int) -> None:
        await asyncio.sleep(i * args.itl_ms / 1000.0 / args.workers)
        await worker()

    try:
        await asyncio.wait_for(
            asyncio.gather(*(spread(i) for i in range(args.workers))), args.seconds + 30.0
        )
    finally:
        await channel.close()


def _probe(transport: str, args: argparse.Namespace) -> Delays:
    kind = "tcp" if transport == "tcp" else "grpc"
    server = subprocess.Popen(
        [sys.executable, "-m", "bench.startup", "--serve", kind],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        # The server prints its port first; a server that never does fails the probe.
        ready, _, _ = select.select([server.stdout], [], [], 30.0)
        if not ready:
            raise RuntimeError(f"the {kind} server did not start within 30 s")
        port = int(server.stdout.readline())
        delays = Delays(args.itl_ms / 1000.0)
        uvloop.run(_load(transport, port, args, delays))
        return delays
    finally:
        server.terminate()
        server.wait(10)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.startup", description=__doc__)
    parser.add_argument("--workers", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--tokens", type=int, default=50)
    parser.add_argument("--itl-ms", type=float, default=20.0)
    parser.add_argument("--transports", default=",".join(TRANSPORTS))
    parser.add_argument("--serve", choices=("grpc", "tcp"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        uvloop.run(_serve_grpc() if args.serve == "grpc" else _serve_tcp())
        return 0
    print(f"{args.workers} workers, {args.tokens} replies {args.itl_ms:g} ms apart, closed loop")
    print("| transport | requests | arrival p50 / p90 / p99 ms | token delay p50 / p99 ms |")
    print("|---|---|---|---|")
    for transport in args.transports.split(","):
        d = _probe(transport, args)
        a = " / ".join(f"{quantile(d.arrival, q) * 1e3:.2f}" for q in (0.5, 0.9, 0.99))
        t = " / ".join(f"{quantile(d.token, q) * 1e3:.2f}" for q in (0.5, 0.99))
        print(f"| {transport} | {len(d.arrival)} | {a} | {t} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
