"""The process: one engine, one request core, two front doors, on one event loop.

The server's modules (arrows point down only: a door imports ``core/``, never the
other door; ``core/`` imports the engines' seam and the process's settings and
logs, never a door, grpc or the HTTP stack; of ``engines/`` only the seam and its
llguidance helpers, ``grammar.py``)::

    cli.py, flags.py, settings.py     flags and environment -> Settings; exit codes
    listeners.py                      every port checked before anything loads
    logs.py, native_logs.py           text or JSON logs, native (C-core) lines too
    app.py                            this module: build, listen, drain, stop
    core/                             transport-neutral: neither grpc nor HTTP
      requests.py                     GenerateRequest -> engine request, validated once
      lifecycle.py                    admit, submit, abort once with its reason
      progress.py                     counts, finishes, timing: the account of a request
      coalescing.py                   engine steps -> flushes (streaming_step, delay)
      errors.py                       the domain's errors; one table answers them per door
      admission.py, watchdog.py       slots and queue; stalled readers and engines
      sizes.py, auth.py               whole-answer size bound; API keys
      messages.py                     engine types -> the contract's messages
      constraints.py                  structured output -> a compiled, validated grammar
      toolcalls.py                    tools and tool_choice validated; forced-call grammars
      toolparse.py, jsonscan.py       tool calls read out of a streamed text
      parsedcalls.py                  an engine handle whose deltas carry those calls
      telemetry.py, tracing.py        Prometheus metrics; OpenTelemetry spans
    rpc/                              door 1, gRPC: protobuf in, protobuf out
      servicer.py                     the RPCs, a few lines each on core.lifecycle
      status.py                       errors -> status codes, details, trailers
      interceptors.py, security.py    malformed bodies; TLS and API keys
      reflection.py                   reflection with the proto's doc comments
    web/                              door 2, HTTP: OpenAI JSON, NDJSON, the playground
      app.py                          routes, keys, errors as OpenAI error objects
      openai_request.py               OpenAI bodies -> GenerateRequest (params named back)
      openai_tools.py, jsonargs.py    response_format, guided_*, tools; JSON type checks
      openai_response.py              flushes -> chunks and whole answers
      framing.py, asgi.py             SSE and NDJSON framing; the bare ASGI pieces
      listener.py                     uvicorn's protocol on this loop; TLS; the drain
    engines/                          the engine seam (base.py) and the engines

The server here: both doors, health, reflection, metrics, graceful stop.

server = Server(Settings(port=0))
await server.start()          # engine loaded, port bound, health SERVING
...                           # server.port is the bound port
await server.stop()           # NOT_SERVING, drain up to the grace, abort the rest

``serve(settings)`` is what ``tokenwire-server`` runs: every listener is checked
before anything loads, and SIGTERM or Ctrl-C stops the server gracefully (a second
one cuts the grace short).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import time
from collections.abc import Callable

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import SERVICE_NAME as HEALTH_SERVICE
from grpc_health.v1.health import aio as health_aio

from tokenwire.v1 import generation_pb2_grpc as pb_grpc

from . import connections, listeners
from .core.admission import Admission
from .core.auth import ApiKeys
from .core.lifecycle import SERVICE, Core
from .core.requests import Limits
from .core.resume import Resumes
from .core.telemetry import Metrics
from .core.tracing import Tracing
from .core.watchdog import Watchdog
from .engines import Engine, create_engine
from .listeners import Listener, ListenerError
from .rpc import reflection
from .rpc.interceptors import MalformedRequests
from .rpc.security import RequireKeys, server_credentials
from .rpc.servicer import GenerationServicer
from .settings import Settings
from .web.app import HttpDoor
from .web.listener import HttpListener, cancel

log = logging.getLogger("tokenwire.server")


# grpc turns SO_REUSEPORT on by default: a second server on a port already taken
# would then bind it too, and the kernel would split new connections between the
# two. Off, the second bind fails, as a port clash should.
_EVERY_SERVER: tuple[tuple[str, int], ...] = (("grpc.so_reuseport", 0),)

# Long prefills keep a stream silent for a while: let clients ping every 10 s
# without data (the grpc default answers such pings with GOAWAY after 300 s).
_CHANNEL_OPTIONS: tuple[tuple[str, int], ...] = (
    *_EVERY_SERVER,
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
)


def _channel_options(settings: Settings) -> tuple[tuple[str, int], ...]:
    # Sending is left unbounded here: the servicer holds a Complete answer (one
    # message) to max_message_bytes itself, with a status that says so, and a grpc
    # cap would fail a large Generate message with an opaque error instead.
    options = (*_CHANNEL_OPTIONS, ("grpc.max_receive_message_length", settings.max_message_bytes))
    return (*options, *connections.grpc_options(settings))


def limits_from(settings: Settings) -> Limits:
    return Limits(
        max_tokens=settings.max_tokens_limit,
        default_max_tokens=settings.default_max_tokens,
        max_prompt_tokens=settings.max_prompt_tokens,
        max_n=settings.max_n,
        max_stop_strings=settings.max_stop_strings,
        max_stop_string_length=settings.max_stop_string_length,
        max_top_logprobs=settings.max_top_logprobs,
        max_concurrent_requests=settings.max_concurrent_requests,
        max_message_bytes=settings.max_message_bytes,
        max_grammar_bytes=settings.max_grammar_bytes,
        tool_call_parser=settings.tool_call_parser,
    )


class Server:
    """One tokenwire server and the engine behind it."""

    def __init__(self, settings: Settings, engine: Engine | None = None) -> None:
        self.settings = settings
        self.engine = engine if engine is not None else create_engine(settings)
        model = self.engine.description
        self.admission = Admission(settings.max_concurrent_requests, settings.max_queue)
        self.metrics = Metrics(
            model.name,
            model.engine,
            in_flight=self.engine.in_flight,
            queue_depth=lambda: self.admission.queue_depth,
            load=self.engine.load,
            max_lora=len(settings.lora_adapters()),
        )
        self.watchdog = Watchdog(settings.stall_timeout_s, settings.engine_stall_timeout_s)
        self.tracing = Tracing(model.name, model.engine, settings.otlp_endpoint)
        self.core = Core(
            self.engine,
            self.metrics,
            limits_from(settings),
            self.admission,
            self.watchdog,
            self.tracing,
            max_pause_s=settings.max_pacing_ms / 1000.0,
            resumes=Resumes(
                self.metrics,
                settings.max_resume_grace_ms,
                settings.resume_request_bytes,
                settings.resume_total_bytes,
            ),
        )
        self.servicer = GenerationServicer(self.core)
        self.health = health_aio.HealthServicer()
        interceptors: list[grpc.aio.ServerInterceptor] = []
        self.keys: ApiKeys | None = None
        if settings.api_key is not None or settings.api_keys_file is not None:
            key = settings.api_key.get_secret_value() if settings.api_key else None
            self.keys = ApiKeys(key, settings.api_keys_file)
            unauthenticated = lambda method: self.metrics.request_done(method, "UNAUTHENTICATED")  # noqa: E731
            interceptors.append(RequireKeys(self.keys, unauthenticated))
        malformed = lambda method: self.metrics.request_done(method, "INVALID_ARGUMENT")  # noqa: E731
        interceptors.append(MalformedRequests(malformed))
        self._server = grpc.aio.server(
            interceptors=interceptors, options=_channel_options(settings)
        )
        # Kubernetes gRPC probes speak neither TLS nor API keys: health alone,
        # in plaintext, on a port of its own (reflection too, for grpcurl).
        self._health_server = (
            grpc.aio.server(options=_EVERY_SERVER) if settings.health_port else None
        )
        self.http: HttpDoor | None = None
        self._http_listener: HttpListener | None = None
        if settings.http:
            self.http = HttpDoor(
                self.core,
                self.keys,
                self._serving,
                settings.max_message_bytes,
                settings.http_keepalive_s,
            )
            self._http_listener = HttpListener(self.http, settings)
        self._monitor: asyncio.Task[None] | None = None
        self._stopping: asyncio.Future[None] | None = None
        self.port = 0
        self.http_port = 0
        self.health_port = 0
        self.metrics_port = 0

    async def start(self) -> None:
        """Load the engine, then listen; ListenerError if a port cannot be had."""
        s = self.settings
        await self.engine.start()
        try:
            self._listen()
            if self._http_listener is not None:
                self.http_port = await self._bind_http()
            await self._server.start()
            if self._health_server is not None:
                await self._health_server.start()
            if self._http_listener is not None:
                await self._http_listener.serve()
        except BaseException:
            await self._abandon()
            raise
        self.watchdog.start()
        self.core.pacer.start()
        await self._set_health(serving=True)
        self._monitor = asyncio.create_task(self._watch_engine(), name="tokenwire-engine-health")
        log.info(
            "tokenwire serving %s (%s engine, %s%s) on %s, metrics on %s%s",
            self.engine.description.name,
            self.engine.description.engine,
            "mutual TLS" if s.tls_client_ca else "TLS" if s.tls_cert else "plaintext",
            ", API keys" if s.api_key or s.api_keys_file else "",
            listeners.join(s.host, self.port),
            f"{listeners.join(s.metrics_host or s.host, self.metrics_port)}/metrics"
            if self.metrics_port
            else "off",
            f", health on {listeners.join(s.host, self.health_port)}" if self.health_port else "",
        )
        if self.http_port:
            # Its own line: scripts find the gRPC port in the one above.
            log.info("tokenwire HTTP on %s", listeners.join(s.host, self.http_port))

    async def _bind_http(self) -> int:
        s = self.settings
        assert self._http_listener is not None
        listener = listeners.planned_one(s, "--http-port")
        tls = (s.tls_cert, s.tls_key, s.tls_client_ca) if s.tls_cert and s.tls_key else None
        try:
            return await self._http_listener.bind(listener.host, listener.port, tls)
        except OSError as error:
            raise listeners.failure(listener, error) from None

    def _listen(self) -> None:
        """Bind every port before serving any, so that no clash shows up after SERVING.

        Metrics first: a grpc port, once bound, is only let go by a server that ran."""
        s = self.settings
        planned = {listener.flag: listener for listener in listeners.planned(s)}
        metrics = planned.get("--metrics-port")
        if metrics is not None:
            try:
                self.metrics_port = self.metrics.serve(metrics.host, metrics.port)
            except OSError as error:
                raise listeners.failure(metrics, error) from None
        pb_grpc.add_GenerationServiceServicer_to_server(self.servicer, self._server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._server)
        if s.reflection:
            reflection.enable((SERVICE, HEALTH_SERVICE), self._server)
        main = planned["--port"]
        if s.tls_cert is not None and s.tls_key is not None:
            credentials = server_credentials(s.tls_cert, s.tls_key, s.tls_client_ca)
            self.port = _bind(main, lambda a: self._server.add_secure_port(a, credentials))
        else:
            self.port = _bind(main, self._server.add_insecure_port)
        if self._health_server is not None:
            health_pb2_grpc.add_HealthServicer_to_server(self.health, self._health_server)
            if s.reflection:
                reflection.enable((HEALTH_SERVICE,), self._health_server)
            health = planned["--health-port"]
            self.health_port = _bind(health, self._health_server.add_insecure_port)

    async def _abandon(self) -> None:
        """Undo a start that failed half-way: nothing may outlive it (a running grpc
        server left to the garbage collector dies noisily on a closed event loop)."""
        await self._server.stop(None)
        if self._health_server is not None:
            await self._health_server.stop(None)
        if self._http_listener is not None:
            await self._http_listener.close()
        self.metrics.close()
        await self.engine.close()
        self.tracing.close()

    async def stop(self, grace: float | None = None) -> None:
        """Drain: NOT_SERVING at once, refuse new calls, let live ones run up to
        ``grace`` seconds (default: settings), abort the rest, close the engine."""
        if self._stopping is None:
            self._stopping = asyncio.ensure_future(self._stop(grace))
        # A second call waits for the first stop to end (hurry() shortens it).
        await asyncio.shield(self._stopping)

    async def _stop(self, grace: float | None) -> None:
        grace = self.settings.shutdown_grace_s if grace is None else grace
        self.core.grace_ends_at = time.monotonic() + grace
        if self._monitor is not None:
            self._monitor.cancel()
        await self.health.enter_graceful_shutdown()
        self.core.resumes.shutdown()  # detached streams end now: nobody reads them
        if self._http_listener is not None and self.http is not None:
            # Both doors drain side by side, for the same grace.
            self._http_listener.stop_accepting()
            await asyncio.gather(
                self._server.stop(grace), self._http_listener.drain(self.http.tasks, grace)
            )
            await self._http_listener.close()
        else:
            await self._server.stop(grace)
        if self._health_server is not None:
            await self._health_server.stop(0)
        await self.core.close_resumable()
        await self.watchdog.stop()
        await self.core.pacer.stop()
        await self.engine.close()
        self.metrics.close()
        self.tracing.close()

    async def hurry(self) -> None:
        """Cut a running ``stop()``'s grace short: abort live calls now (``shutdown``)."""
        self.core.grace_ends_at = time.monotonic()
        if self.http is not None:
            cancel(self.http.tasks)
        # grpc.aio: a second stop() with a smaller grace ends the first one sooner.
        await self._server.stop(0)

    def _serving(self) -> tuple[bool, str]:
        """What gRPC health says now, and why: the HTTP door's /health tells the same."""
        if self.core.grace_ends_at is not None:
            return False, "shutting down"
        if not self.engine.healthy:
            return False, "the engine cannot serve"
        return True, "ok"

    async def _set_health(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for service in ("", SERVICE):
            await self.health.set(service, status)

    async def _watch_engine(self, period_s: float = 0.5) -> None:
        """Health tells the truth: NOT_SERVING while the engine says it cannot serve."""
        serving = True
        while True:
            await asyncio.sleep(period_s)
            if self.engine.healthy != serving:
                serving = self.engine.healthy
                await self._set_health(serving)
                if serving:
                    log.info("engine healthy again: SERVING")
                else:
                    log.error("engine unhealthy: health NOT_SERVING, new calls UNAVAILABLE")

    async def wait_for_termination(self) -> None:
        await self._server.wait_for_termination()


def _bind(listener: Listener, add_port: Callable[[str], int]) -> int:
    """Add a grpc port; its failure (grpc says only "Failed to bind") explained."""
    try:
        port = add_port(listener.address)
    except RuntimeError:
        port = 0
    if port == 0:
        listeners.probe(listener)  # raises with the reason, if it still holds
        raise ListenerError(f"{listener.flag} {listener.port}: cannot listen on {listener.address}")
    return port


async def serve(settings: Settings) -> None:
    """Run until SIGTERM or SIGINT, then stop gracefully; a second signal hurries it."""
    # Before the engine is even imported: a port clash should not wait for a model.
    listeners.check(listeners.planned(settings))
    server = Server(settings)
    await server.start()
    # Everything built so far (modules, engine, grpc, telemetry) lives as long as
    # the process: out of the collector's sight, a full collection no longer walks
    # it, which took the latency scenario's worst stream starts from about 27 ms to 10.
    gc.freeze()
    signals = asyncio.Queue[signal.Signals]()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, signals.put_nowait, sig)
    await signals.get()
    log.info("shutting down: draining live streams for up to %.1fs", settings.shutdown_grace_s)
    stopping = asyncio.create_task(server.stop(), name="tokenwire-stop")
    second = asyncio.create_task(signals.get(), name="tokenwire-second-signal")
    await asyncio.wait((stopping, second), return_when=asyncio.FIRST_COMPLETED)
    if second.done():
        # The person at the terminal (or the operator) will not wait for the grace.
        log.warning("second %s: aborting live streams now", second.result().name)
        await server.hurry()
    else:
        second.cancel()
    await stopping
    log.info("stopped")
