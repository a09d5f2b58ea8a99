"""The asyncio client, `AsyncClient`, and its `AsyncStream`."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar, Unpack

import grpc
import grpc.aio

from tokenwire.client import _convert
from tokenwire.client._base import BaseClient
from tokenwire.client._errors import from_rpc_error
from tokenwire.client._models import Chunk, Completion, ModelInfo, Tokenization
from tokenwire.client._stream import BaseStream, Reconnects, make_resumable
from tokenwire.client._types import GenerateOptions, Messages
from tokenwire.v1 import generation_pb2 as pb
from tokenwire.v1 import generation_pb2_grpc

if TYPE_CHECKING:
    from tokenwire.v1.generation_pb2_grpc import GenerationServiceAsyncStub

_Call = grpc.aio.UnaryStreamCall[Any, pb.GenerateResponse]
AsyncOnToken = Callable[[Chunk], object]
"""Called with each chunk; may be a coroutine function, whose result is awaited."""
_Request = TypeVar("_Request")
_Response = TypeVar("_Response")


class AsyncStream(BaseStream):
    """A running Generate call: ``async for`` chunks; read the progress at any time.

        async with client.generate("Once upon a time", max_tokens=64) as stream:
            async for chunk in stream:
                print(chunk.text, end="", flush=True)
        print(stream.token_count, stream.tokens_per_second)

        stream = await client.generate("Hi", max_tokens=8)   # read to the end
        print(stream.text, stream.usage)

    Leaving an ``async for`` loop before the end (``break``, an exception, the task
    being cancelled) cancels the call, and so does leaving the ``async with`` block:
    each ``aiter(stream)`` owns the call until it is exhausted or dropped.

    A resumable stream (``resumable=True``) that breaks resumes on its own, within
    its grace; its ``cancel()`` also aborts the generation on the server.
    """

    def __init__(
        self,
        call: _Call,
        request_id: str,
        on_token: AsyncOnToken | None = None,
        resume: Callable[[int], _Call] | None = None,
        abort: Callable[[], object] | None = None,
        grace_s: float = 0.0,
    ) -> None:
        super().__init__(request_id)
        self._call = call
        self._on_token = on_token
        self._resume = resume  # Resume after a sequence: a new call
        self._abort = abort
        self._reconnects = Reconnects(grace_s)

    def __aiter__(self) -> AsyncIterator[Chunk]:
        return _Chunks(self)

    async def _next(self) -> Chunk | None:
        """The next chunk, or None once the call ended (or was cancelled here)."""
        while True:
            if self._done:
                return None
            response = await self._read()
            if response is None:
                return None
            if not self._seen(response):
                break
        self._reconnects.ok()
        chunk = self._record(response)
        if self._on_token is not None:
            result = self._on_token(chunk)
            if inspect.isawaitable(result):
                await result
        return chunk

    async def _read(self) -> pb.GenerateResponse | None:
        """The call's next response, resuming a broken resumable call; None at the end."""
        try:
            response = await self._call.read()
        except grpc.RpcError as exc:
            pause = None if self._resume is None else self._reconnects.delay(exc)
            if pause is None or self._resume is None:
                self._end()
                raise self._error(exc) from exc
            await asyncio.sleep(pause)  # backoff: the server or the path to it is coming back
            if self._cancelled:
                return None
            self._broken = self._broken or exc
            self._call = self._resume(self._last_sequence)
            self._resuming = True
            return await self._read()
        except asyncio.CancelledError:
            # grpc.aio raises CancelledError both after our own cancel() and when the
            # task itself is cancelled; only the first ends the stream quietly.
            task = asyncio.current_task()
            if self._cancelled and not (task is not None and task.cancelling()):
                return None
            raise
        if not isinstance(response, pb.GenerateResponse):  # grpc.aio.EOF
            self._end()
            return None
        return response

    def cancel(self) -> None:
        """Cancel the call (the server aborts the generation); a no-op once it ended.

        A loop reading the stream then ends quietly, and unfinished sequences get
        finish_reason "cancelled".
        """
        if self._done:
            return
        self._end(cancelled=True)
        self._call.cancel()
        if self._abort is not None:
            self._abort()  # a cancel alone would only detach a resumable stream

    async def collect(self) -> Completion:
        """Read the rest of the stream and return the whole generation."""
        async for _ in self:
            pass
        return self._completion()

    def __await__(self) -> Generator[Any, None, AsyncStream]:
        return self._finish().__await__()

    async def _finish(self) -> AsyncStream:
        await self.collect()
        return self

    async def __aenter__(self) -> AsyncStream:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.cancel()


class _Chunks:
    """One ``async for`` over a stream. An async generator would cancel the call only
    when the event loop gets round to closing it; dropping this cancels at once."""

    def __init__(self, stream: AsyncStream) -> None:
        self._stream = stream

    def __aiter__(self) -> _Chunks:
        return self

    async def __anext__(self) -> Chunk:
        chunk = await self._stream._next()
        if chunk is None:
            raise StopAsyncIteration
        return chunk

    def __del__(self) -> None:
        self._stream.cancel()


async def _quietly(call: Awaitable[object]) -> None:
    with contextlib.suppress(grpc.RpcError, asyncio.CancelledError):
        await call


# GenerationServiceAsyncStub exists for type checkers only: at run time the stub class
# is the same for both kinds of channel, hence the string.
class AsyncClient(BaseClient[grpc.aio.Channel, "GenerationServiceAsyncStub"]):
    """An asyncio tokenwire client; use it from one event loop.

        from tokenwire.client import AsyncClient

        async with AsyncClient("127.0.0.1:50051", timeout=30) as client:
            async for chunk in client.generate("The capital of France is", max_tokens=16):
                print(chunk.text, end="", flush=True)
            print((await client.complete("2 + 2 =", max_tokens=4)).text)

    See `BaseClient` for the connection arguments.
    """

    def _connect(self) -> tuple[grpc.aio.Channel, GenerationServiceAsyncStub]:
        if self._credentials is None:
            channel = grpc.aio.insecure_channel(self.target, self._options)
        else:
            channel = grpc.aio.secure_channel(self.target, self._credentials, self._options)
        return channel, generation_pb2_grpc.GenerationServiceStub(channel)

    def generate(
        self,
        prompt: str | None = None,
        *,
        messages: Messages | None = None,
        token_ids: Sequence[int] | None = None,
        timeout: float | None = None,
        on_token: AsyncOnToken | None = None,
        resumable: bool = False,
        resume_grace_s: float | None = None,
        **options: Unpack[GenerateOptions],
    ) -> AsyncStream:
        """Start generating from one of `prompt`, `messages` or `token_ids`.

        Returns an `AsyncStream` at once (no ``await``): ``async for`` it for `Chunk`s,
        or ``await`` it to read it to the end, calling ``on_token(chunk)`` (a function
        or coroutine function) for each chunk. Options: see `GenerateOptions`; those
        left out keep the server's defaults. `timeout` (seconds) bounds the whole call.

        ``resumable=True`` (or ``resume_grace_s=``, default 30 s): the server keeps the
        stream for that long after a broken connection, and the stream resumes on its
        own when its call breaks (docs/resume.md); `timeout` bounds each call.
        """
        request = _convert.generate_request(prompt, messages, token_ids, options)
        grace_s = make_resumable(request, resumable, resume_grace_s)
        call = self._rpc.Generate(request, **self._call_options(timeout))
        return self._stream(call, request.request_id, on_token, grace_s, timeout)

    def chat(
        self,
        messages: Messages,
        *,
        timeout: float | None = None,
        on_token: AsyncOnToken | None = None,
        resumable: bool = False,
        resume_grace_s: float | None = None,
        **options: Unpack[GenerateOptions],
    ) -> AsyncStream:
        """Stream the assistant's reply to a conversation, rendered with the model's
        chat template: ``client.chat([("user", "Hi!")], max_tokens=32)``."""
        return self.generate(
            messages=messages,
            timeout=timeout,
            on_token=on_token,
            resumable=resumable,
            resume_grace_s=resume_grace_s,
            **options,
        )

    def resume(
        self,
        request_id: str,
        after_sequence: int = 0,
        *,
        timeout: float | None = None,
        resume_grace_s: float = 0.0,
    ) -> AsyncStream:
        """Attach to a resumable request another stream (or process) started: its
        messages after `after_sequence`, then the live ones. With `resume_grace_s`
        this stream too resumes on its own when it breaks."""
        call = self._resume_call(request_id, after_sequence, timeout)
        stream = self._stream(call, request_id, None, resume_grace_s, timeout)
        stream._last_sequence = after_sequence
        stream._resuming = True
        return stream

    async def abort(self, *request_ids: str, timeout: float | None = None) -> list[str]:  # noqa: ASYNC109
        """End the named live requests at once; returns the ids that were live."""
        request = pb.AbortRequest(request_ids=request_ids)
        return list((await self._unary(self._rpc.Abort, request, timeout)).aborted)

    def _stream(
        self,
        call: _Call,
        request_id: str,
        on_token: AsyncOnToken | None,
        grace_s: float,
        timeout: float | None,
    ) -> AsyncStream:
        if not grace_s:
            return AsyncStream(call, request_id, on_token)
        return AsyncStream(
            call,
            request_id,
            on_token,
            resume=lambda after: self._resume_call(request_id, after, timeout),
            abort=lambda: self._abort_soon(request_id),
            grace_s=grace_s,
        )

    def _resume_call(self, request_id: str, after: int, timeout: float | None) -> _Call:
        request = pb.ResumeRequest(request_id=request_id, after_sequence=after)
        return self._rpc.Resume(request, **self._call_options(timeout))

    def _abort_soon(self, request_id: str) -> None:
        """Abort from a plain function (``cancel()``): a task, kept until it is done;
        best effort, since the grace frees the request anyway."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        if self._closed:
            return
        call = self._rpc.Abort(pb.AbortRequest(request_ids=[request_id]), **self._call_options(1.0))
        task = loop.create_task(_quietly(call))
        self._aborts.add(task)
        task.add_done_callback(self._aborts.discard)

    async def complete(
        self,
        prompt: str | None = None,
        *,
        messages: Messages | None = None,
        token_ids: Sequence[int] | None = None,
        # A gRPC deadline, not asyncio.timeout(): the server sees it and aborts the
        # generation when it passes, so ruff's ASYNC109 does not apply.
        timeout: float | None = None,  # noqa: ASYNC109
        **options: Unpack[GenerateOptions],
    ) -> Completion:
        """Generate and return the whole result in one response (unary `Complete`)."""
        request = _convert.generate_request(prompt, messages, token_ids, options)
        return _convert.completion(await self._unary(self._rpc.Complete, request, timeout))

    async def model_info(self, *, timeout: float | None = None) -> ModelInfo:  # noqa: ASYNC109
        """The served model, its engine, context length, vocabulary and limits."""
        request = pb.GetModelInfoRequest()
        return _convert.model_info(await self._unary(self._rpc.GetModelInfo, request, timeout))

    async def tokenize(
        self,
        prompt: str | None = None,
        *,
        messages: Messages | None = None,
        add_special_tokens: bool | None = None,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> Tokenization:
        """Token ids (and their text) of a prompt or conversation, as the engine sees it."""
        request = _convert.tokenize_request(prompt, messages, add_special_tokens)
        return _convert.tokenization(await self._unary(self._rpc.Tokenize, request, timeout))

    async def close(self) -> None:
        """Close the channel, cancelling any call still running."""
        channel = self._take_channel()
        if channel is not None:
            await channel.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def _unary(
        self,
        method: grpc.aio.UnaryUnaryMultiCallable[_Request, _Response],
        request: _Request,
        deadline: float | None,
    ) -> _Response:
        try:
            return await method(request, **self._call_options(deadline))
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from exc
