"""The blocking client, `Client`, and its `Stream`."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from types import TracebackType
from typing import Protocol, TypeVar, Unpack

import grpc

from tokenwire.client import _convert
from tokenwire.client._base import BaseClient
from tokenwire.client._errors import from_rpc_error
from tokenwire.client._models import Chunk, Completion, ModelInfo, Tokenization
from tokenwire.client._stream import BaseStream, Reconnects, make_resumable
from tokenwire.client._types import GenerateOptions, Messages
from tokenwire.v1 import generation_pb2 as pb
from tokenwire.v1 import generation_pb2_grpc

OnToken = Callable[[Chunk], object]
_Request = TypeVar("_Request")
_Response = TypeVar("_Response")


class _ResponseIterator(Protocol):
    """What `Stream` uses of the call object a server-streaming grpc call returns."""

    def __next__(self) -> pb.GenerateResponse: ...

    def cancel(self) -> bool: ...


class Stream(BaseStream):
    """A running Generate call: iterate it for chunks; read the progress at any time.

        with client.generate("Once upon a time", max_tokens=64) as stream:
            for chunk in stream:
                print(chunk.text, end="", flush=True)
        print(stream.token_count, stream.tokens_per_second, stream.usage)

    Leaving a ``for`` loop before the end (``break``, an exception) cancels the call,
    and so does leaving the ``with`` block: each ``iter(stream)`` owns the call until
    it is exhausted or dropped. To read a first chunk and go on later, keep the
    iterator: ``chunks = iter(stream); first = next(chunks)``.

    A resumable stream (``resumable=True``) that breaks resumes on its own, within
    its grace; its ``cancel()`` also aborts the generation on the server.
    """

    def __init__(
        self,
        call: _ResponseIterator,
        request_id: str,
        on_token: OnToken | None = None,
        resume: Callable[[int], _ResponseIterator] | None = None,
        abort: Callable[[], object] | None = None,
        grace_s: float = 0.0,
    ) -> None:
        super().__init__(request_id)
        self._call = call
        self._on_token = on_token
        self._resume = resume  # Resume after a sequence: a new call
        self._abort = abort
        self._reconnects = Reconnects(grace_s)

    def __iter__(self) -> Iterator[Chunk]:
        try:
            while not self._done:
                try:
                    response = next(self._call)
                except StopIteration:
                    self._end()
                    return
                except grpc.RpcError as exc:
                    if self._cancelled:
                        # cancel() was called, maybe from another thread: end quietly.
                        return
                    if self._reconnect(exc):
                        continue
                    self._end()
                    raise self._error(exc) from exc
                if self._seen(response):
                    continue
                self._reconnects.ok()
                chunk = self._record(response)
                if self._on_token is not None:
                    self._on_token(chunk)
                yield chunk
        finally:
            # Reached with the call still live only when the loop was left early.
            self.cancel()

    def _reconnect(self, error: grpc.RpcError) -> bool:
        """Resume a broken resumable call after a pause; False: give up on it."""
        if self._resume is None:
            return False
        pause = self._reconnects.delay(error)
        if pause is None:
            return False
        time.sleep(pause)  # backoff: the server or the path to it is coming back
        if self._cancelled:
            return False
        self._broken = self._broken or error
        self._call = self._resume(self._last_sequence)
        self._resuming = True
        return True

    def cancel(self) -> None:
        """Cancel the call (the server aborts the generation); a no-op once it ended.

        Safe from another thread or a signal handler: a loop reading the stream then
        ends quietly, and unfinished sequences get finish_reason "cancelled". On a
        resumable stream a cancel alone would only detach it: it is aborted too.
        """
        if self._done:
            return
        self._end(cancelled=True)
        self._call.cancel()
        if self._abort is not None:
            self._abort()

    def collect(self) -> Completion:
        """Read the rest of the stream and return the whole generation."""
        for _ in self:
            pass
        return self._completion()

    def __enter__(self) -> Stream:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.cancel()


class Client(BaseClient[grpc.Channel, generation_pb2_grpc.GenerationServiceStub]):
    """A blocking tokenwire client; thread-safe, one channel per client.

        from tokenwire.client import Client

        with Client("127.0.0.1:50051", timeout=30) as client:
            for chunk in client.generate("The capital of France is", max_tokens=16):
                print(chunk.text, end="", flush=True)
            print(client.complete("2 + 2 =", max_tokens=4, temperature=0).text)

    See `BaseClient` for the connection arguments.
    """

    def _connect(self) -> tuple[grpc.Channel, generation_pb2_grpc.GenerationServiceStub]:
        if self._credentials is None:
            channel = grpc.insecure_channel(self.target, self._options)
        else:
            channel = grpc.secure_channel(self.target, self._credentials, self._options)
        return channel, generation_pb2_grpc.GenerationServiceStub(channel)

    def generate(
        self,
        prompt: str | None = None,
        *,
        messages: Messages | None = None,
        token_ids: Sequence[int] | None = None,
        timeout: float | None = None,
        on_token: OnToken | None = None,
        resumable: bool = False,
        resume_grace_s: float | None = None,
        **options: Unpack[GenerateOptions],
    ) -> Stream:
        """Start generating from one of `prompt`, `messages` or `token_ids`.

        Returns a `Stream` at once; iterate it for `Chunk`s. With ``on_token=``, reads
        the whole stream first, calling ``on_token(chunk)`` for each chunk, and returns
        it finished. Options: see `GenerateOptions`; those left out keep the server's
        defaults. `timeout` (seconds) bounds the whole call.

        ``resumable=True`` (or ``resume_grace_s=``, default 30 s): the server keeps the
        stream for that long after a broken connection, and the stream resumes on its
        own when its call breaks (docs/resume.md); `timeout` bounds each call.
        """
        request = _convert.generate_request(prompt, messages, token_ids, options)
        grace_s = make_resumable(request, resumable, resume_grace_s)
        call = self._rpc.Generate(request, **self._call_options(timeout))
        request_id = request.request_id
        stream = Stream(
            call,
            request_id,
            on_token,
            resume=(lambda after: self._resume_call(request_id, after, timeout))
            if grace_s
            else None,
            abort=(lambda: self._abort_quietly(request_id)) if grace_s else None,
            grace_s=grace_s,
        )
        if on_token is not None:
            stream.collect()
        return stream

    def chat(
        self,
        messages: Messages,
        *,
        timeout: float | None = None,
        on_token: OnToken | None = None,
        resumable: bool = False,
        resume_grace_s: float | None = None,
        **options: Unpack[GenerateOptions],
    ) -> Stream:
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
    ) -> Stream:
        """Attach to a resumable request another stream (or process) started: its
        messages after `after_sequence`, then the live ones. With `resume_grace_s`
        this stream too resumes on its own when it breaks."""
        call = self._resume_call(request_id, after_sequence, timeout)
        stream = Stream(
            call,
            request_id,
            resume=(lambda after: self._resume_call(request_id, after, timeout))
            if resume_grace_s
            else None,
            abort=(lambda: self._abort_quietly(request_id)) if resume_grace_s else None,
            grace_s=resume_grace_s,
        )
        stream._last_sequence = after_sequence
        stream._resuming = True
        return stream

    def abort(self, *request_ids: str, timeout: float | None = None) -> list[str]:
        """End the named live requests at once; returns the ids that were live."""
        request = pb.AbortRequest(request_ids=request_ids)
        return list(self._unary(self._rpc.Abort, request, timeout).aborted)

    def _resume_call(self, request_id: str, after: int, timeout: float | None) -> _ResponseIterator:
        request = pb.ResumeRequest(request_id=request_id, after_sequence=after)
        return self._rpc.Resume(request, **self._call_options(timeout))

    def _abort_quietly(self, request_id: str) -> None:
        """Best effort: the grace frees it anyway if the server cannot be reached."""
        # Unreachable, or the client is closed: nothing more to do.
        with contextlib.suppress(grpc.RpcError, RuntimeError):
            self._rpc.Abort(pb.AbortRequest(request_ids=[request_id]), **self._call_options(1.0))

    def complete(
        self,
        prompt: str | None = None,
        *,
        messages: Messages | None = None,
        token_ids: Sequence[int] | None = None,
        timeout: float | None = None,
        **options: Unpack[GenerateOptions],
    ) -> Completion:
        """Generate and return the whole result in one response (unary `Complete`)."""
        request = _convert.generate_request(prompt, messages, token_ids, options)
        return _convert.completion(self._unary(self._rpc.Complete, request, timeout))

    def model_info(self, *, timeout: float | None = None) -> ModelInfo:
        """The served model, its engine, context length, vocabulary and limits."""
        request = pb.GetModelInfoRequest()
        return _convert.model_info(self._unary(self._rpc.GetModelInfo, request, timeout))

    def tokenize(
        self,
        prompt: str | None = None,
        *,
        messages: Messages | None = None,
        add_special_tokens: bool | None = None,
        timeout: float | None = None,
    ) -> Tokenization:
        """Token ids (and their text) of a prompt or conversation, as the engine sees it."""
        request = _convert.tokenize_request(prompt, messages, add_special_tokens)
        return _convert.tokenization(self._unary(self._rpc.Tokenize, request, timeout))

    def close(self) -> None:
        """Close the channel, cancelling any call still running."""
        channel = self._take_channel()
        if channel is not None:
            channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _unary(
        self,
        method: grpc.UnaryUnaryMultiCallable[_Request, _Response],
        request: _Request,
        timeout: float | None,
    ) -> _Response:
        try:
            return method(request, **self._call_options(timeout))
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from exc
