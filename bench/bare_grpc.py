"""Baseline (a): the bare grpc.aio transport ceiling for ``GenerationService/Generate``.

    python -m bench.bare_grpc --ttft-ms 0 --itl-ms 0    # prints "listening on 127.0.0.1:PORT"

No engine, no validation, no metrics: each call yields PRE-BUILT responses of
the same size and shape as tokenwire's (a 36-character request id, one token
id and a word of text per message, or ``streaming_step`` of them; usage and
timing on the last), from an async generator on uvloop: the fastest of the
grpc.aio forms measured on our machines (docs/performance.md, "The transport's
own cost"). With ``--itl-ms`` it follows the simulator's schedule (first
message ``ttft`` after the call starts, then one every ``itl``, on the same
event-loop clock), so latency can be judged against it.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import uuid
from collections.abc import AsyncIterator, Iterator

import grpc
import uvloop

from tokenwire.server.engines.simtok import WORDS, SimTokenizer
from tokenwire.v1 import generation_pb2 as pb

Context = grpc.aio.ServicerContext[pb.GenerateRequest, pb.GenerateResponse]
_REQUEST_ID = str(uuid.uuid4())  # the length of the ids tokenwire assigns


_MAX_BUILT = 8192  # longer streams cycle through the built messages (the memory scenario)


class Prebuilt:
    """One call's stream, ``step`` tokens per message, built once and shared by every call."""

    def __init__(self, step: int, max_tokens: int) -> None:
        tokenizer = SimTokenizer()
        words = [" " + w for w in WORDS]
        ids = [tokenizer.id_of(w) or 0 for w in words]
        self.count = -(-max_tokens // step)  # messages in the stream
        self.body: list[pb.GenerateResponse] = []
        for m in range(min(self.count, _MAX_BUILT)):
            picks = [(m * step + k) % len(words) for k in range(step)]
            self.body.append(
                pb.GenerateResponse(
                    request_id=_REQUEST_ID,
                    text="".join(words[p] for p in picks),
                    token_ids=[ids[p] for p in picks],
                    completion_tokens=min((m + 1) * step, max_tokens),
                )
            )
        self.final = pb.GenerateResponse()
        self.final.CopyFrom(self.body[(self.count - 1) % len(self.body)])
        self.final.completion_tokens = max_tokens
        self.final.finish_reason = pb.FINISH_REASON_LENGTH
        self.final.usage.CopyFrom(
            pb.Usage(prompt_tokens=5, completion_tokens=max_tokens, total_tokens=max_tokens + 5)
        )
        self.final.timing.CopyFrom(
            pb.Timing(queue_ms=0.01, time_to_first_token_ms=1.5, total_ms=250.0)
        )

    def __iter__(self) -> Iterator[pb.GenerateResponse]:
        body, n = self.body, len(self.body)
        for i in range(self.count - 1):
            yield body[i % n]
        yield self.final


class BareServicer:
    def __init__(self, ttft_s: float, itl_s: float) -> None:
        self._ttft = ttft_s
        self._itl = itl_s
        self._streams: dict[tuple[int, int], Prebuilt] = {}

    async def generate(
        self, request: pb.GenerateRequest, context: Context
    ) -> AsyncIterator[pb.GenerateResponse]:
        step = max(request.stream.streaming_step, 1)
        max_tokens = request.stopping.max_tokens or 256
        key = (step, max_tokens)
        stream = self._streams.get(key)
        if stream is None:
            stream = self._streams[key] = Prebuilt(step, max_tokens)
        if self._ttft == 0 and self._itl == 0:
            for msg in stream:
                yield msg
            return
        # Headers first, as soon as the call starts: a load generator holding
        # idle streams learns they are open (tokenwire's metrics tell it there).
        await context.send_initial_metadata(())
        loop = asyncio.get_running_loop()
        due = loop.time() + self._ttft
        for msg in stream:
            await asyncio.sleep(max(due - loop.time(), 0.0))
            due += self._itl * step
            yield msg


async def serve(ttft_s: float, itl_s: float) -> None:
    server = grpc.aio.server()
    # Generate alone, registered the way the generated code registers it.
    generate = grpc.unary_stream_rpc_method_handler(
        BareServicer(ttft_s, itl_s).generate,
        request_deserializer=pb.GenerateRequest.FromString,
        response_serializer=pb.GenerateResponse.SerializeToString,
    )
    service = pb.DESCRIPTOR.services_by_name["GenerationService"].full_name
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(service, {"Generate": generate}),)
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(f"listening on 127.0.0.1:{port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--ttft-ms", type=float, default=0.0)
    parser.add_argument("--itl-ms", type=float, default=0.0)
    args = parser.parse_args()
    uvloop.run(serve(args.ttft_ms / 1000.0, args.itl_ms / 1000.0))


if __name__ == "__main__":
    main()
