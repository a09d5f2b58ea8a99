"""The constraints scenario's side of the load generator (in the worker process).

    client = WorkloadClient(target)          # load.saturate drives it like any client
    client.take_tallies()                    # how the finished streams ended, by workload
    await text_seeds(client, spec, 16, 200)  # seeds the server answers as text
    await first_tokens(client, 1, 10)        # compile cost: a new schema against a known one

A separate client rather than a change to ``clients.GrpcClient``: the other
scenarios' per-message path stays exactly as it was.
"""

from __future__ import annotations

import time
import uuid

from tokenwire.v1 import generation_pb2 as pb

from . import workloads
from .clients import STREAM_TIMEOUT_S, GenerateCall, GrpcClient, Sink
from .records import FirstTokens, StreamSpec, Tally, Target


class WorkloadClient(GrpcClient):
    """gRPC streams of the constraints workloads, each stream with the next seed."""

    def __init__(self, target: Target) -> None:
        super().__init__(target)
        self._streams = 0
        self._tallies: dict[str, Tally] = {}

    def open(self, spec: StreamSpec) -> GenerateCall:
        seed = None
        if spec.seeds:
            seed = spec.seeds[self._streams % len(spec.seeds)]
        self._streams += 1
        return self.stub.Generate(workloads.request(spec, seed), timeout=STREAM_TIMEOUT_S)

    async def run_stream(self, spec: StreamSpec, sink: Sink) -> None:
        call = self.open(spec)
        clock = time.perf_counter
        tokens, called = 0, False
        try:
            async for msg in call:
                n = len(msg.token_ids)
                tokens += n
                sink.message(clock(), n)
                if msg.tool_calls:
                    called = True
                if msg.finish_reason:
                    self._finished(spec.workload, tokens, called, msg.finish_reason)
        finally:
            call.cancel()  # no-op once the call is done; ends it when our task is cancelled

    def _finished(self, workload: str, tokens: int, called: bool, reason: int) -> None:
        tally = self._tallies.setdefault(workload, Tally())
        tally.streams += 1
        tally.tokens += tokens
        tally.with_tool_calls += int(called)
        name = pb.FinishReason.Name(reason).removeprefix("FINISH_REASON_").lower()
        tally.finish[name] = tally.finish.get(name, 0) + 1

    def take_tallies(self) -> dict[str, Tally]:
        """The tallies since the last call (streams cut short by a window's end are not
        in them: they never finished)."""
        tallies, self._tallies = self._tallies, {}
        return tallies


async def text_seeds(client: WorkloadClient, spec: StreamSpec, want: int, tries: int) -> list[int]:
    """Up to ``want`` seeds (of 0 .. tries-1) whose answer to ``spec`` has no tool call.

    Offered tools with tool_choice "auto", the simulator calls one for about half
    its seeds; asking the server (Complete, the same answer as Generate's) finds the
    others without knowing how it decides."""
    found: list[int] = []
    for seed in range(tries):
        answer = await client.stub.Complete(workloads.request(spec, seed), timeout=STREAM_TIMEOUT_S)
        if not any(choice.tool_calls for choice in answer.choices):
            found.append(seed)
            if len(found) == want:
                break
    return found


async def first_tokens(client: WorkloadClient, max_tokens: int, rounds: int) -> FirstTokens:
    """Each round, one request of each kind in turn (the order rotates), one at a time:
    plain text, the workload's JSON schema (already compiled), and that schema with a new
    nonce in its description, which the server compiles (and binds to its vocabulary)
    before the first token."""
    out = FirstTokens()
    kinds = ("plain", "cached", "fresh")
    for round_ in range(rounds):
        shift = round_ % len(kinds)
        for kind in [*kinds[shift:], *kinds[:shift]]:
            # Built before the clock starts: only the server's time counts.
            if kind == "plain":
                req = workloads.request(StreamSpec(max_tokens, workload="plain"))
            else:
                nonce = uuid.uuid4().hex if kind == "fresh" else ""
                req = workloads.schema_request(max_tokens, nonce)
            times: list[float] = getattr(out, f"{kind}_s")
            sent = time.perf_counter()
            call = client.stub.Generate(req, timeout=STREAM_TIMEOUT_S)
            try:
                first = await call.read()
                times.append(time.perf_counter() - sent)
                if isinstance(first, pb.GenerateResponse) and not first.finish_reason:
                    async for _ in call:  # to its end: nothing left in flight
                        pass
            finally:
                call.cancel()
    return out
