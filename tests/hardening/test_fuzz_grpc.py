"""Hostile input on the gRPC door: property-based requests over every field of every
request message, and raw mutated bytes as the payload of every method.

A client's mistake never answers INTERNAL, UNKNOWN or DATA_LOSS; an
INVALID_ARGUMENT names what it refuses; afterwards the server is healthy, nothing is
in flight and its log holds no traceback. FUZZ_EXAMPLES sets the cases per property
(make soak: 2,000); make test runs the defaults below.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tokenwire.v1 import generation_pb2 as pb
from tokenwire.v1 import generation_pb2_grpc as pb_grpc

from ..helpers import ServerProcess, metric_value, start_server_process, wait_for
from .fuzzing import EXAMPLES, st_message

# A client's mistake must never read as the server's own failure.
SERVER_FAULTS = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.DATA_LOSS}
SERVICE = "/tokenwire.v1.GenerationService/"
METHODS = ("Generate", "Complete", "GetModelInfo", "Tokenize", "GetLoad", "Abort", "Resume")
STREAMING = {"Generate", "Resume"}
CALL_TIMEOUT_S = 5.0
SEEN: Counter[str] = Counter()  # outcomes across the module, for the report


def fuzz_settings(default: int) -> settings:
    return settings(
        max_examples=EXAMPLES or default,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        database=None,
    )


@pytest.fixture(scope="module")
def fuzz_server() -> Iterator[ServerProcess]:
    # An engine with no latency, small limits where a huge valid request would
    # only burn CPU (tokens) and a log at debug level would be a flood.
    server = start_server_process(
        ["--sim-ttft-ms", "0", "--sim-itl-ms", "0", "--max-tokens-limit", "512"]
    )
    yield server
    try:
        wait_for(
            lambda: metric_value(server.metrics_url, "tokenwire_engine_requests_in_flight") == 0,
            timeout=10,
        )
        with grpc.insecure_channel(server.target) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            answer = health.Check(health_pb2.HealthCheckRequest(), timeout=5)  # type: ignore[attr-defined]
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        assert server.stop() == 0
    log = "".join(server.log)
    assert "Traceback" not in log, log[-5000:]
    print(f"\nfigure grpc fuzz outcomes: {dict(sorted(SEEN.items()))}")


@pytest.fixture(scope="module")
def channel(fuzz_server: ServerProcess) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(fuzz_server.target) as ch:
        yield ch


def outcome(method: str, run: object) -> None:
    """Run one call; fail on a server fault, note the outcome."""
    assert callable(run)
    try:
        run()
        SEEN[f"{method} OK"] += 1
    except grpc.RpcError as error:
        code = error.code()
        SEEN[f"{method} {code.name}"] += 1
        assert code not in SERVER_FAULTS, f"{method}: {code} {error.details()}"
        if code == grpc.StatusCode.INVALID_ARGUMENT:
            assert error.details(), method


@fuzz_settings(1500)
@given(request=st_message(pb.GenerateRequest))
def test_fuzz_generate_and_complete(channel: grpc.Channel, request: pb.GenerateRequest) -> None:
    stub = pb_grpc.GenerationServiceStub(channel)
    outcome("Complete", lambda: stub.Complete(request, timeout=CALL_TIMEOUT_S))
    # Most random model names are not served (NOT_FOUND before anything else is
    # looked at): the same request for the served model goes deeper.
    request.ClearField("model")
    outcome("Generate", lambda: list(stub.Generate(request, timeout=CALL_TIMEOUT_S)))


@fuzz_settings(500)
@given(
    tokenize=st_message(pb.TokenizeRequest),
    abort=st_message(pb.AbortRequest),
    resume=st_message(pb.ResumeRequest),
)
def test_fuzz_tokenize_abort_resume(
    channel: grpc.Channel,
    tokenize: pb.TokenizeRequest,
    abort: pb.AbortRequest,
    resume: pb.ResumeRequest,
) -> None:
    stub = pb_grpc.GenerationServiceStub(channel)
    outcome("Tokenize", lambda: stub.Tokenize(tokenize, timeout=CALL_TIMEOUT_S))
    outcome("Abort", lambda: stub.Abort(abort, timeout=CALL_TIMEOUT_S))
    # Resume answers UNIMPLEMENTED until it is built; any client-side code is fine.
    outcome("Resume", lambda: list(stub.Resume(resume, timeout=CALL_TIMEOUT_S)))


VALID = pb.GenerateRequest(
    prompt="hello",
    stopping=pb.StoppingOptions(max_tokens=4, stop=["x"]),
    sampling=pb.SamplingParams(seed=3, temperature=0.5),
).SerializeToString()


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A valid request with bytes flipped, cut, inserted or repeated; or noise."""
    data = bytearray(VALID)
    for _ in range(draw(st.integers(1, 6))):
        action = draw(st.sampled_from(["flip", "cut", "insert", "repeat", "noise"]))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if action == "flip" and data:
            data[at] ^= draw(st.integers(1, 255))
        elif action == "cut":
            del data[at : at + draw(st.integers(1, 8))]
        elif action == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif action == "repeat":
            data += data[at:]
        else:
            data = bytearray(draw(st.binary(max_size=256)))
    return bytes(data)


@fuzz_settings(1500)
@given(payload=mutated(), method=st.sampled_from(METHODS))
def test_fuzz_raw_bytes_on_every_method(channel: grpc.Channel, payload: bytes, method: str) -> None:
    # A generic call: the bytes go out as they are (no serializer).
    path = SERVICE + method
    if method in STREAMING:
        call: grpc.UnaryStreamMultiCallable[bytes, bytes] = channel.unary_stream(path)
        outcome(f"raw {method}", lambda: list(call(payload, timeout=CALL_TIMEOUT_S)))
    else:
        unary: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(path)
        outcome(f"raw {method}", lambda: unary(payload, timeout=CALL_TIMEOUT_S))
