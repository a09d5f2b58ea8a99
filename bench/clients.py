"""The load generator's two clients, gRPC and SSE, behind one small interface.

Both run one stream to its end and hand every token-carrying message to a
``Sink`` with its arrival time; both parse what they receive (protobuf, JSON),
as real clients must. The per-message work on the client side is the same: a
clock read and a call. The SSE client serves both SSE servers, the FastAPI peer
and tokenwire's HTTP door, with the same request body.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Protocol

import aiohttp
import grpc

from tokenwire.v1 import generation_pb2 as pb
from tokenwire.v1 import generation_pb2_grpc as pb_grpc

from .records import StreamSpec, Target

PROMPT = "Tell me about rivers"
STREAM_TIMEOUT_S = 120.0  # a safety bound on every stream: none should last this long


class Sink(Protocol):
    def message(self, at: float, tokens: int) -> None: ...


GenerateCall = grpc.aio.UnaryStreamCall[pb.GenerateRequest, pb.GenerateResponse]
Opened = Callable[[int], None]  # told the tokens read once a held stream is open
Cancel = Callable[[], object]  # ends an open stream from the client's side, at once


class Client(Protocol):
    async def run_stream(self, spec: StreamSpec, sink: Sink) -> None:
        """One stream, from request to its last message."""
        ...

    async def hold(
        self, spec: StreamSpec, read_first: bool, opened: Opened, release: asyncio.Event
    ) -> None:
        """Open a stream, read its first tokens if asked, tell ``opened`` how many, then
        read nothing more until ``release``; the stream is cancelled on the way out."""
        ...

    async def first_token(self, spec: StreamSpec) -> Cancel:
        """Open a stream and read up to its first token; return what cancels it (a gRPC
        cancel, or closing the HTTP connection). Cancelled or failed, it cleans up."""
        ...

    async def close(self) -> None: ...


def grpc_request(spec: StreamSpec) -> pb.GenerateRequest:
    return pb.GenerateRequest(
        prompt=PROMPT,
        stopping=pb.StoppingOptions(max_tokens=spec.max_tokens, ignore_eos=True),
        stream=pb.StreamOptions(streaming_step=spec.step),
    )


class GrpcClient:
    """tokenwire and the bare baseline: one channel (one HTTP/2 connection) for all streams."""

    def __init__(self, target: Target) -> None:
        self.channel = grpc.aio.insecure_channel(target.address)
        self.stub = pb_grpc.GenerationServiceStub(self.channel)
        self.wait_headers = target.kind == "bare"  # tokenwire sends them with the first token

    async def run_stream(self, spec: StreamSpec, sink: Sink) -> None:
        call = self.open(spec)
        clock = time.perf_counter
        try:
            async for msg in call:
                sink.message(clock(), len(msg.token_ids))
        finally:
            call.cancel()  # no-op once the call is done; ends it when our task is cancelled

    def open(self, spec: StreamSpec) -> GenerateCall:
        return self.stub.Generate(grpc_request(spec), timeout=STREAM_TIMEOUT_S)

    async def first_token(self, spec: StreamSpec) -> Cancel:
        call = self.open(spec)
        try:
            await call.read()
        except BaseException:
            call.cancel()
            raise
        return call.cancel

    async def hold(
        self, spec: StreamSpec, read_first: bool, opened: Opened, release: asyncio.Event
    ) -> None:
        call = self.open(spec)
        try:
            tokens = 0
            if read_first:
                msg = await call.read()
                if isinstance(msg, pb.GenerateResponse):
                    tokens = len(msg.token_ids)
            elif self.wait_headers:
                await call.initial_metadata()
            opened(tokens)
            await release.wait()
        finally:
            call.cancel()

    async def close(self) -> None:
        await self.channel.close()


class SseClient:
    """The SSE peer and tokenwire's HTTP door: aiohttp, one HTTP/1.1 connection per live
    stream (as browsers and SDKs do)."""

    def __init__(self, target: Target) -> None:
        self.url = f"http://{target.address}/v1/chat/completions"
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0),
            timeout=aiohttp.ClientTimeout(total=STREAM_TIMEOUT_S),
        )

    @staticmethod
    def body(spec: StreamSpec) -> dict[str, object]:
        # return_token_ids: tokenwire's door then puts each chunk's ids beside its text,
        # as the peer always does (its request model ignores the field), so that both
        # events carry what a gRPC message carries and the client counts tokens alike.
        options: dict[str, object] = {"include_usage": True}
        if spec.step != 1:
            options["streaming_step"] = spec.step  # the peer streams at step 1 only
        return {
            "model": "tokenwire-sim",
            "messages": [{"role": "user", "content": PROMPT}],
            "max_tokens": spec.max_tokens,
            "stream": True,
            "stream_options": options,
            "ignore_eos": True,
            "return_token_ids": True,
        }

    async def run_stream(self, spec: StreamSpec, sink: Sink) -> None:
        clock = time.perf_counter
        async with self.session.post(self.url, json=self.body(spec)) as response:
            response.raise_for_status()
            content = response.content
            while True:
                event = await content.readuntil(b"\n\n")
                if not event or event.startswith(b"data: [DONE]"):
                    return
                tokens = _event_tokens(event)
                if tokens:
                    sink.message(clock(), tokens)

    async def hold(
        self, spec: StreamSpec, read_first: bool, opened: Opened, release: asyncio.Event
    ) -> None:
        # The response starts (headers) as soon as the handler returns its
        # StreamingResponse: from then on the stream is open on the server.
        response = await self.session.post(self.url, json=self.body(spec))
        try:
            tokens = 0
            while read_first and not tokens:
                event = await response.content.readuntil(b"\n\n")
                if not event:
                    break
                tokens = _event_tokens(event)
            opened(tokens)
            await release.wait()
        finally:
            response.close()

    async def first_token(self, spec: StreamSpec) -> Cancel:
        response = await self.session.post(self.url, json=self.body(spec))
        try:
            response.raise_for_status()
            while not _event_tokens(await response.content.readuntil(b"\n\n")):
                pass
        except BaseException:
            response.close()
            raise
        return response.close  # the connection closes: the server sees the client leave

    async def close(self) -> None:
        await self.session.close()


def _event_tokens(event: bytes) -> int:
    """Tokens in one ``data: {chunk}`` event (0 for the role and usage chunks).

    Comment lines (tokenwire's ``: keepalive``) may come before the data; an error event
    or the end of the stream is a ValueError or an EOFError, which the load counts."""
    if not event:
        raise EOFError("the stream ended before [DONE]")
    start = event.find(b"data: ")
    if start < 0:
        return 0
    chunk = json.loads(event[start + 6 :])
    if "error" in chunk:
        raise ValueError(f"error event: {chunk['error']}")
    choices = chunk["choices"]
    if not choices:
        return 0
    return len(choices[0].get("token_ids") or ())


def make_client(target: Target) -> Client:
    return SseClient(target) if target.kind in ("sse", "http") else GrpcClient(target)
