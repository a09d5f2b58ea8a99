"""Baseline (b): the peer approach, as OpenAI-compatible servers (vLLM, trtllm-serve) stream.

    python -m bench.sse_peer --ttft-ms 0 --itl-ms 0     # prints "listening on 127.0.0.1:PORT"

FastAPI on uvicorn (uvloop, httptools), ``POST /v1/chat/completions`` with
``"stream": true``: a ``StreamingResponse`` of Server-Sent Events, one
``chat.completion.chunk`` per engine step (one token at a time on the
simulator), each built from pydantic models and dumped with
``model_dump_json(exclude_unset=True)`` the way vLLM's chat stream generator
does (on its own clock too: steps that queued up while it was busy go out one
event each); a role chunk first, a usage chunk when asked, ``data: [DONE]`` last. The
tokens come from tokenwire's own ``SimulatedEngine`` on the same schedule, so
the engine's cost is the same on both sides and only the serving path differs.
A client disconnect cancels the generator, which aborts the engine request.
"""

from __future__ import annotations

import argparse
import socket
from collections.abc import AsyncIterator

import uvicorn
import uvloop
from fastapi import FastAPI
from fastapi.responses import StreamingResponse

from tokenwire.server.engines.base import ChatMessage, GenerationRequest, PromptInput
from tokenwire.server.engines.simulated import SimulatedEngine, SimulatorConfig

from .sse_protocol import (
    ChatCompletionRequest,
    ChatCompletionResponseStreamChoice,
    ChatCompletionStreamResponse,
    DeltaMessage,
    UsageInfo,
    random_id,
)


def create_app(engine: SimulatedEngine) -> FastAPI:
    app = FastAPI()
    model_name = engine.description.name

    @app.post("/v1/chat/completions")
    async def chat_completions(request: ChatCompletionRequest) -> StreamingResponse:
        messages = tuple(ChatMessage(m.role, m.content) for m in request.messages)
        prompt_ids = await engine.tokenize(PromptInput(messages=messages))
        request_id = random_id()
        handle = engine.submit(
            GenerationRequest(
                request_id=request_id,
                prompt_token_ids=tuple(prompt_ids),
                max_tokens=request.max_tokens,
                ignore_eos=request.ignore_eos,
            )
        )
        include_usage = request.stream_options is not None and request.stream_options.include_usage

        async def stream() -> AsyncIterator[str]:
            created = ChatCompletionStreamResponse(model=model_name, choices=[]).created
            completion_tokens = 0
            try:
                role = ChatCompletionResponseStreamChoice(
                    index=0, delta=DeltaMessage(role="assistant", content=""), finish_reason=None
                )
                chunk = ChatCompletionStreamResponse(
                    id=request_id, created=created, model=model_name, choices=[role]
                )
                yield f"data: {chunk.model_dump_json(exclude_unset=True)}\n\n"
                async for step in handle:
                    for delta in step:
                        completion_tokens += len(delta.token_ids)
                        choice = ChatCompletionResponseStreamChoice(
                            index=delta.index,
                            delta=DeltaMessage(content=delta.text),
                            logprobs=None,
                            finish_reason=delta.finish_reason,
                            token_ids=list(delta.token_ids),
                        )
                        chunk = ChatCompletionStreamResponse(
                            id=request_id, created=created, model=model_name, choices=[choice]
                        )
                        yield f"data: {chunk.model_dump_json(exclude_unset=True)}\n\n"
                if include_usage:
                    usage = UsageInfo(
                        prompt_tokens=len(prompt_ids),
                        completion_tokens=completion_tokens,
                        total_tokens=len(prompt_ids) + completion_tokens,
                    )
                    chunk = ChatCompletionStreamResponse(
                        id=request_id, created=created, model=model_name, choices=[], usage=usage
                    )
                    yield f"data: {chunk.model_dump_json(exclude_unset=True)}\n\n"
                yield "data: [DONE]\n\n"
            finally:
                # A disconnect cancels this generator: free the engine slot at once.
                if not handle.finished:
                    handle.abort()

        return StreamingResponse(stream(), media_type="text/event-stream")

    return app


async def serve(ttft_s: float, itl_s: float) -> None:
    # One token per engine step, as an engine iteration makes one per sequence: on its
    # own clock (--itl-ms) a reader that falls behind finds the steps queued and
    # reads them one at a time, one event each, as trtllm-serve does.
    engine = SimulatedEngine(SimulatorConfig(ttft_s=ttft_s, itl_s=itl_s, max_catch_up=1))
    await engine.start()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(4096)  # connections queue from now on, before uvicorn starts accepting
    config = uvicorn.Config(
        create_app(engine),
        loop="uvloop",
        http="httptools",
        log_level="warning",
        access_log=False,
        backlog=4096,
        timeout_graceful_shutdown=1,
    )
    server = uvicorn.Server(config)
    print(f"listening on 127.0.0.1:{sock.getsockname()[1]}", flush=True)
    # uvicorn handles SIGTERM itself: stop accepting, close connections, return.
    await server.serve(sockets=[sock])
    await engine.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--ttft-ms", type=float, default=0.0)
    parser.add_argument("--itl-ms", type=float, default=0.0)
    args = parser.parse_args()
    uvloop.run(serve(args.ttft_ms / 1000.0, args.itl_ms / 1000.0))


if __name__ == "__main__":
    main()
