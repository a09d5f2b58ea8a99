"""Door 2, HTTP: the OpenAI-compatible API, the native contract as NDJSON, and the playground.

    POST /v1/chat/completions, /v1/completions   OpenAI JSON; SSE when "stream": true
    POST /v1/generate                            GenerateRequest (JSON mapping) -> NDJSON
    GET  /v1/requests/{id}/events                a resumable stream again (docs/resume.md)
    GET  /v1/models, /health, /metrics, /        model list, health, Prometheus, playground

Each generation route is a few lines on ``core.lifecycle``, as each RPC is: the
door's own part is the HTTP ending of a call. Before the answer starts, an error
is the HTTP status with OpenAI's error object; after, one more event (SSE) or
line (NDJSON) carrying the error, then the stream's end. A client that goes away
cancels the handler at once (``asgi.cancel_on_disconnect``), which aborts the
engine request in ``core.generation``; a reader that stops reading backs the
writes up until the watchdog aborts it (``stalled``). Every ending is counted in
``tokenwire_http_requests_total{route,status}`` (``status``: the outcome, also
for an error sent after the stream began) and logged with its usage.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any

import orjson
from google.protobuf import json_format

from tokenwire.v1 import generation_pb2 as pb

from ..core import coalescing, errors, messages, sizes
from ..core.auth import ApiKeys
from ..core.lifecycle import Call, Core, Generation
from ..core.requests import MAX_REQUEST_ID_LENGTH
from ..core.resume import KeptStream
from ..core.watchdog import Watched
from . import asgi, framing, openai_request, openapi, resume
from .asgi import Receive, Scope, Send
from .openai_request import OpenAIRequest
from .openai_response import Answer, usage_body

log = logging.getLogger("tokenwire.server")

Handler = Callable[[Scope, Receive, Send], Awaitable[int]]

_PLAYGROUND = resources.files(__package__).joinpath("playground.html").read_bytes()
# No key needed: probes and scrapers send none, and the schema is no secret.
_OPEN = ("/health", "/metrics", "/", "/openapi.json")


class HttpDoor:
    """The ASGI app; one per server, sharing its core, keys and metrics."""

    def __init__(
        self,
        core: Core,
        keys: ApiKeys | None,
        serving: Callable[[], tuple[bool, str]],
        body_limit: int,
        keepalive_s: float,
    ) -> None:
        self._core = core
        self._keys = keys
        self._serving = serving
        self._body_limit = body_limit
        self._keepalive_s = keepalive_s
        self.tasks: set[asyncio.Task[Any]] = set()  # live generation handlers, for the drain
        self._routes: dict[tuple[str, str], Handler] = {
            ("POST", "/v1/chat/completions"): self._chat,
            ("POST", "/v1/completions"): self._completions,
            ("POST", "/v1/generate"): self._generate,
            ("GET", "/v1/models"): self._models,
            ("GET", "/health"): self._health,
            ("GET", "/metrics"): self._metrics,
            ("GET", "/"): self._playground,
            ("GET", "/openapi.json"): self._openapi,
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        path, method = scope["path"], scope["method"]
        handler = self._routes.get((method, path))
        route = path if handler is not None else "unknown"
        if handler is None and method == "GET" and resume.events_id(path) is not None:
            handler, route = self._events, resume.EVENTS_ROUTE
        status = 500
        try:
            if handler is None:
                raise errors.NotFound(f"no route {method} {path}")
            keys = self._keys
            if keys is not None and path not in _OPEN:  # noqa: SIM102
                if not keys.valid(asgi.header(scope, b"authorization")):
                    raise errors.Unauthenticated(
                        "missing or invalid API key: send 'Authorization: Bearer <key>'"
                    )
            status = await handler(scope, receive, send)
        except errors.ServiceError as error:
            status = await _refuse(send, error, [])
        finally:
            self._core.metrics.http_request_done(route, status)

    # --- generation routes -------------------------------------------------------

    async def _chat(self, scope: Scope, receive: Receive, send: Send) -> int:
        return await self._openai("chat", scope, receive, send)

    async def _completions(self, scope: Scope, receive: Receive, send: Send) -> int:
        return await self._openai("completion", scope, receive, send)

    async def _openai(self, kind: openai_request.Kind, scope: Scope, r: Receive, s: Send) -> int:
        async def run(call: Call, body: bytes, state: _State) -> None:
            try:
                parsed = openai_request.parse(kind, orjson.loads(body))
            except orjson.JSONDecodeError as error:
                raise errors.InvalidArgument("body", f"is not valid JSON: {error}") from None
            state.parsed = parsed
            parsed.request.request_id = state.request_id
            # A whole answer is built in memory: bound it as gRPC's Complete is.
            limit = None if parsed.stream else self._body_limit
            if parsed.stream and parsed.request.stream.resume_grace_ms:
                await self._resumable(scope, s, call, parsed.request, state, parsed)
                return
            async with self._core.generation(parsed.request, call, whole_limit=limit) as gen:
                # The model the client asked for: an adapter answers under its own name.
                model = gen.plan.template.adapter or self._core.engine.description.name
                answer = Answer(parsed, state.request_id, model, len(gen.progress.counts))
                if parsed.stream:
                    await self._sse(s, gen, parsed, answer, state)
                else:
                    await self._whole(s, gen, answer, state.echo(), limit or 0)

        return await self._generation(scope, r, s, run, framing.SSE_CONTENT_TYPE)

    async def _generate(self, scope: Scope, receive: Receive, send: Send) -> int:
        async def run(call: Call, body: bytes, state: _State) -> None:
            request = pb.GenerateRequest()
            try:
                json_format.Parse(body, request)
            except (json_format.ParseError, UnicodeDecodeError) as error:  # bad UTF-8 too
                raise errors.InvalidArgument("body", f"not a GenerateRequest: {error}") from None
            if not request.request_id:
                request.request_id = state.request_id
            if _echoable(request.request_id):  # the core refuses the others (400)
                state.request_id = request.request_id
            if request.stream.resume_grace_ms:
                await self._resumable(scope, send, call, request, state, None)
                return
            async with self._core.generation(request, call) as gen:
                await asgi.start_stream(send, framing.NDJSON_CONTENT_TYPE, state.echo())
                state.started = True
                await self._ndjson(send, gen)

        return await self._generation(scope, receive, send, run, framing.NDJSON_CONTENT_TYPE)

    async def _events(self, scope: Scope, receive: Receive, send: Send) -> int:
        """``GET /v1/requests/{id}/events``: a resumable stream's kept messages after
        the client's ``Last-Event-ID`` (or ``?starting_after``), then the live ones."""
        request_id = resume.events_id(scope["path"]) or ""

        async def run(call: Call, body: bytes, state: _State) -> None:
            state.request_id = request_id
            after, param = resume.after_of(scope)
            who = resume.identity_of(scope)
            try:
                kept = self._core.resumes.find(request_id, who, after)
            except errors.InvalidArgument as error:
                raise errors.InvalidArgument(param, error.description) from None
            await self._follow(send, call, kept, after, state, sse=True)

        # One route label (and span name) for every id.
        labelled = {**scope, "path": resume.EVENTS_ROUTE}
        return await self._generation(labelled, receive, send, run, framing.SSE_CONTENT_TYPE)

    async def _resumable(
        self,
        scope: Scope,
        send: Send,
        call: Call,
        request: pb.GenerateRequest,
        state: _State,
        parsed: OpenAIRequest | None,
    ) -> None:
        """A resumable stream (docs/resume.md): generated in a task of the core's own,
        sent as SSE events with ids, kept for the grace should the connection end."""
        core = self._core
        grace_s = core.resumes.grace_of(request)
        request.request_id = state.request_id
        who = resume.identity_of(scope)
        kept = core.resumable(request, call, who, grace_s)
        model = request.model or core.engine.description.name
        kept.origin = resume.Origin(parsed, model, int(time.time()))
        await self._follow(send, call, kept, 0, state, sse=parsed is not None)

    async def _follow(
        self, send: Send, call: Call, kept: KeptStream, after: int, state: _State, sse: bool
    ) -> None:
        """Send ``kept``'s messages after ``after``: SSE events with ids, or (for
        /v1/generate) NDJSON lines, each carrying its ``sequence``."""
        origin = kept.origin
        if not isinstance(origin, resume.Origin):
            origin = resume.Origin(None, self._core.engine.description.name)  # came by gRPC
        async with self._core.following(kept, after, call) as follow:
            await follow.submitted()  # a refusal is still an HTTP status
            progress = kept.progress
            n = 1 if progress is None else len(progress.counts)
            render = resume.Renderer(origin, kept.request_id, n)
            out = _Writer(send, follow.watched)
            if not sse:
                await asgi.start_stream(send, framing.NDJSON_CONTENT_TYPE, state.echo())
                state.started = True
                async for msg in follow.messages:
                    data = json_format.MessageToJson(msg, indent=None).encode()
                    await out.part(framing.ndjson_line(data))
                await out.end()
                return
            await asgi.start_stream(send, framing.SSE_CONTENT_TYPE, state.echo())
            state.started = True
            keepalive = _Keepalive(out, self._keepalive_s)
            try:
                opening = render.opening(after)
                if opening:
                    await out.part(opening)
                async for msg in follow.messages:
                    data = render.message(msg)
                    if data:
                        await out.part(data)
            finally:
                keepalive.stop()
        await out.part(framing.SSE_DONE)
        await out.end()

    async def _generation(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        run: Callable[[Call, bytes, _State], Awaitable[None]],
        stream_type: bytes,
    ) -> int:
        """One generation request's life on this door: its ending, status and receipt."""
        core = self._core
        route = scope["path"]
        state = _State(_request_id(scope))
        task = asyncio.current_task()
        assert task is not None
        watcher: asyncio.Task[None] | None = None
        deadline = _deadline(scope)
        expiry = (
            None
            if deadline is None
            else asyncio.get_running_loop().call_later(
                max(deadline - time.monotonic(), 0), task.cancel
            )
        )

        def time_remaining() -> float | None:
            return None if deadline is None else deadline - time.monotonic()

        # A traceparent header continues the caller's trace, as its metadata does on gRPC.
        headers = [
            (bytes(k).decode("latin-1"), bytes(v).decode("latin-1")) for k, v in scope["headers"]
        ]
        with core.call(route, headers, time_remaining, door="http") as call:
            status = 200
            self.tasks.add(task)
            try:
                try:
                    body = await asgi.read_body(receive, self._body_limit)
                    # From here on, a client that goes away cancels this task at once.
                    watcher = asyncio.create_task(asgi.cancel_on_disconnect(receive, task))
                    await run(call, body, state)
                except asyncio.CancelledError as cancel:
                    cause = core.ending(call, cancel)
                    task.uncancel()  # ours to end, not the server's: uvicorn would log it
                    raise cause from None
            except asgi.ClientGone:
                status = 499
            except Exception as error:
                if isinstance(error, asgi.BodyTooLarge):
                    error = errors.BodyTooLarge(str(error))
                status = errors.answer(error).http
                # The ending is decided: nothing may cancel the error's own write (a
                # drain, a second signal, the client leaving, the deadline).
                self.tasks.discard(task)
                if expiry is not None:
                    expiry.cancel()
                if watcher is not None:
                    watcher.cancel()
                if not isinstance(error, errors.ClientCancelled):  # else nobody is there
                    await _tell(send, error, state, stream_type)
                _log_error(route, error, status)
            finally:
                self.tasks.discard(task)
                if expiry is not None:
                    expiry.cancel()
                if watcher is not None:
                    watcher.cancel()
                while task.cancelling():  # the client left as the answer ended
                    task.uncancel()
                core.trace_end(call, str(status))
                _receipt(route, state.request_id, status, call)
        return status

    async def _sse(
        self, send: Send, gen: Generation, parsed: OpenAIRequest, answer: Answer, state: _State
    ) -> None:
        out = _Writer(send, gen.watched)
        await asgi.start_stream(send, framing.SSE_CONTENT_TYPE, state.echo())
        state.started = True
        flushes = self._core.flushes(gen)
        keepalive = _Keepalive(out, self._keepalive_s)
        try:
            opening = answer.opening()
            if opening:
                await out.part(framing.sse_events(opening))
            async for f in flushes:
                data = b""
                if answer.says_something(f.deltas):
                    data = framing.sse_event(answer.chunk(f.index, f.deltas))
                if f.last and parsed.include_usage:
                    data += framing.sse_event(answer.usage_chunk(_usage(gen)))
                if data:
                    await out.part(data)
        finally:
            keepalive.stop()
            await flushes.aclose()
        await out.part(framing.SSE_DONE)
        await out.end()

    async def _whole(
        self, send: Send, gen: Generation, answer: Answer, echo: asgi.Headers, limit: int
    ) -> None:
        # Raises as soon as the answer cannot fit: the engine request is aborted.
        size = sizes.AnswerSize(limit)
        async for step in coalescing.steps(gen.handle, gen.progress, gen.watched):
            for d in step:
                size.add(d, messages.logprobs(d.logprobs) if d.logprobs else ())
                answer.add(d.index, (d,))
        await _Writer(send, gen.watched).whole(200, answer.whole(_usage(gen)), echo)

    async def _ndjson(self, send: Send, gen: Generation) -> None:
        out = _Writer(send, gen.watched)
        flushes = self._core.flushes(gen)
        try:
            async for f in flushes:
                msg = messages.stream_message(gen.plan.request_id, f, gen.progress, gen.handle)
                await out.part(
                    framing.ndjson_line(json_format.MessageToJson(msg, indent=None).encode())
                )
        finally:
            await flushes.aclose()
        await out.end()

    # --- the rest ------------------------------------------------------------------

    async def _models(self, scope: Scope, receive: Receive, send: Send) -> int:
        model = self._core.engine.description
        base = {
            "id": model.name,
            "object": "model",
            "created": 0,
            "owned_by": "tokenwire",
            "max_model_len": model.max_context_length,
        }
        # Adapters as vLLM lists them: their own id, the base model as root and parent.
        adapters = [
            {**base, "id": name, "root": model.name, "parent": model.name}
            for name in model.adapters
        ]
        body = {"object": "list", "data": [base, *adapters]}
        await asgi.send_bytes(send, 200, orjson.dumps(body))
        return 200

    async def _health(self, scope: Scope, receive: Receive, send: Send) -> int:
        serving, reason = self._serving()
        status = 200 if serving else 503
        body = {"status": "serving" if serving else "not_serving", "reason": reason}
        await asgi.send_bytes(send, status, orjson.dumps(body))
        return status

    async def _metrics(self, scope: Scope, receive: Receive, send: Send) -> int:
        text = self._core.metrics.text()
        await asgi.send_bytes(send, 200, text, b"text/plain; version=0.0.4; charset=utf-8")
        return 200

    async def _playground(self, scope: Scope, receive: Receive, send: Send) -> int:
        await asgi.send_bytes(send, 200, _PLAYGROUND, b"text/html; charset=utf-8")
        return 200

    async def _openapi(self, scope: Scope, receive: Receive, send: Send) -> int:
        await asgi.send_bytes(send, 200, openapi.BODY)
        return 200


class _State:
    """What a generation handler learns as it goes, for its ending."""

    __slots__ = ("parsed", "request_id", "started")

    def __init__(self, request_id: str) -> None:
        self.request_id = request_id
        self.parsed: OpenAIRequest | None = None
        self.started = False  # the answer's head has gone out: errors go in the stream

    def echo(self) -> asgi.Headers:
        return [(b"x-request-id", self.request_id.encode())]


class _Writer:
    """Every body write after submit, with the stalled-reader clock running while
    flow control holds it back (the last ones too: [DONE] and the end)."""

    __slots__ = ("last_write", "send", "watched")

    def __init__(self, send: Send, watched: Watched) -> None:
        self.send = send
        self.watched = watched
        self.last_write = time.monotonic()  # when the latest write began

    async def part(self, data: bytes) -> None:
        await self._timed({"type": "http.response.body", "body": data, "more_body": True})

    async def end(self) -> None:
        await self._timed({"type": "http.response.body", "body": b"", "more_body": False})

    async def whole(self, status: int, body: bytes, headers: asgi.Headers) -> None:
        self.watched.write_since = self.last_write = time.monotonic()
        await asgi.send_bytes(self.send, status, body, headers=headers)
        self.watched.write_since = None

    async def _timed(self, message: asgi.Message) -> None:
        self.watched.write_since = self.last_write = time.monotonic()
        await self.send(message)
        self.watched.write_since = None


class _Keepalive:
    """An SSE comment whenever ``interval`` passes without an event (a long prefill),
    so that proxies with idle timeouts keep the connection."""

    __slots__ = ("_interval", "_out", "_task")

    def __init__(self, out: _Writer, interval: float) -> None:
        self._out = out
        self._interval = interval
        self._task = asyncio.create_task(self._run()) if interval > 0 else None

    async def _run(self) -> None:
        out = self._out
        while True:
            await asyncio.sleep(max(out.last_write + self._interval - time.monotonic(), 0))
            # Quiet for the whole interval, and no write under way (or held back)?
            if out.watched.write_since is None and (
                time.monotonic() - out.last_write >= self._interval
            ):
                out.last_write = time.monotonic()
                await asgi.send_part(out.send, framing.SSE_KEEPALIVE)

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()


def _deadline(scope: Scope) -> float | None:
    """The client's deadline, from ``X-Request-Timeout`` or what the official OpenAI
    SDKs send with every request, ``X-Stainless-Timeout`` (seconds, the client's
    own timeout): past it nobody reads the answer, so the engine request is aborted
    (``deadline``) and admission refuses what cannot finish in time."""
    for name in (b"x-request-timeout", b"x-stainless-timeout"):
        value = asgi.header(scope, name)
        if value is None:
            continue
        try:
            seconds = float(value)
        except ValueError:
            continue
        if seconds > 0 and seconds == seconds and seconds != float("inf"):
            return time.monotonic() + seconds
    return None


def _request_id(scope: Scope) -> str:
    given = asgi.header(scope, b"x-request-id")
    return given if given and _echoable(given) else uuid.uuid4().hex


def _echoable(request_id: str) -> bool:
    """An id the X-Request-Id header may carry back (a newline in it would break the
    answer's head)."""
    return len(request_id) <= MAX_REQUEST_ID_LENGTH and request_id.isprintable()


def _usage(gen: Generation) -> dict[str, Any]:
    p = gen.progress
    return usage_body(p.prompt_tokens, p.completion_tokens, gen.handle.cached_prompt_tokens)


def error_body(error: BaseException, parsed: OpenAIRequest | None = None) -> bytes:
    """OpenAI's error object; a field is named as this client sent it (``max_tokens``,
    not the native ``stopping.max_tokens``)."""
    found = errors.answer(error)
    param = errors.field_of(error)
    if isinstance(error, errors.ModelNotFound):
        param = "model"  # OpenAI's word for it; gRPC's NOT_FOUND names no field
    text = errors.message(error)
    if param is not None and parsed is not None:
        param = parsed.param_for(param)
        text = f"{param}: {getattr(error, 'description', text)}"
    return orjson.dumps(
        {"error": {"message": text, "type": found.kind, "param": param, "code": found.code}}
    )


async def _refuse(
    send: Send, error: BaseException, echo: asgi.Headers, body: bytes | None = None
) -> int:
    """An error before the answer started: its HTTP status and OpenAI's error object."""
    status = errors.answer(error).http
    headers = list(echo)
    if isinstance(error, errors.Overloaded):
        headers.append((b"retry-after", str(max(1, round(error.retry_after_s))).encode()))
    await asgi.send_bytes(send, status, body or error_body(error), headers=headers)
    return status


_ERROR_WRITE_S = 1.0  # a reader that stopped reading will not take the error either


async def _tell(send: Send, error: BaseException, state: _State, stream_type: bytes) -> None:
    """Tell the client how its request ended badly: before the answer started, the
    HTTP status and OpenAI's error object; after, one more event or line, then the end."""
    body = error_body(error, state.parsed)
    try:
        async with asyncio.timeout(_ERROR_WRITE_S):
            if not state.started:
                await _refuse(send, error, state.echo(), body)
                return
            frame = framing.sse_event(body) + framing.SSE_DONE
            if stream_type != framing.SSE_CONTENT_TYPE:
                frame = framing.ndjson_line(body)
            await asgi.send_part(send, frame)
            await asgi.end_stream(send)
    except TimeoutError:
        pass  # a reader that stopped reading: uvicorn closes the unfinished answer
    except asyncio.CancelledError:
        # Cancelled again while telling (the client left, the server stopped): the
        # ending was decided before, and uvicorn would log a stray cancel.
        task = asyncio.current_task()
        if task is not None:
            task.uncancel()


def _log_error(route: str, error: BaseException, status: int) -> None:
    if status >= 500 and errors.answer(error).grpc == "INTERNAL":
        log.error("%s failed", route, exc_info=error)
    elif status not in (400, 499):
        log.info("%s ended with %d: %s", route, status, errors.message(error))


def _receipt(route: str, request_id: str, status: int, call: Call) -> None:
    """SSE has no trailers: every ending, aborted ones too, is logged with its usage."""
    p = call.progress
    if p is None:
        return
    log.info(
        "%s %d: prompt_tokens=%d completion_tokens=%d finish=%s",
        route,
        status,
        p.prompt_tokens,
        p.completion_tokens,
        f"aborted:{p.abort_reason}" if p.abort_reason else ",".join(map(str, p.finishes)),
        extra={"request_id": request_id},
    )
