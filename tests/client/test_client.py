"""The sync `Client` against a real server over loopback: streaming, progress,
cancellation, the unary calls and the error tree."""

from __future__ import annotations

import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from tests.helpers import ServerProcess, free_port, metric_value, start_server_process, wait_for
from tokenwire.client import (
    AuthenticationError,
    Chunk,
    Client,
    DeadlineExceeded,
    GenerateOptions,
    InvalidRequest,
    Messages,
    ModelNotFound,
    Overloaded,
    RequestIdInUse,
    ResourceExhausted,
    Unavailable,
)

IN_FLIGHT = "tokenwire_engine_requests_in_flight"
ABORTS = "tokenwire_aborts_total"
# Long enough (1000 tokens at 50 ms) that only a cancel can end it within a test.
ENDLESS: GenerateOptions = {"max_tokens": 1000, "ignore_eos": True}


@pytest.fixture
def client(sim_server: ServerProcess) -> Iterator[Client]:
    with Client(sim_server.target, timeout=30) as client:
        yield client


def aborts(server: ServerProcess, reason: str) -> float:
    return metric_value(server.metrics_url, ABORTS, {"reason": reason})


def wait_until_idle(server: ServerProcess) -> None:
    wait_for(lambda: metric_value(server.metrics_url, IN_FLIGHT) == 0)


def test_for_loop_streams_text_as_it_arrives(client: Client) -> None:
    # Seed 5 spells no multi-byte character in these 16 tokens: the first bytes of
    # one would come as a message with ids and no text, by design.
    chunks = list(client.generate("Tell me about rivers", max_tokens=16, ignore_eos=True, seed=5))
    # One token per message by default; a message may carry more when tokens came
    # faster than they were sent.
    assert len(chunks) > 1
    assert all(chunk.text and chunk.token_ids for chunk in chunks)
    assert sum(len(chunk.token_ids) for chunk in chunks) == 16
    progress = [chunk.completion_tokens for chunk in chunks]
    assert progress == sorted(set(progress)) and progress[-1] == 16
    assert [chunk.finish_reason for chunk in chunks] == [None] * (len(chunks) - 1) + ["length"]
    assert chunks[-1].usage is not None and chunks[-1].timing is not None
    assert all(chunk.usage is None for chunk in chunks[:-1])


def test_stream_exposes_text_so_far_token_count_and_rate(client: Client) -> None:
    stream = client.generate("Tell me about rivers", max_tokens=24, ignore_eos=True, seed=3)
    assert stream.text == "" and stream.token_count == 0 and stream.tokens_per_second == 0.0
    texts = []
    for chunk in stream:
        texts.append(chunk.text)
        assert stream.text == "".join(texts)
        assert stream.token_count == chunk.completion_tokens
    assert stream.done and not stream.cancelled
    assert stream.token_count == 24 and len(stream.token_ids) == 24
    assert stream.tokens_per_second > 0
    assert stream.time_to_first_token is not None and stream.time_to_first_token > 0
    assert stream.finish_reason == "length"
    assert stream.usage is not None
    assert stream.usage.completion_tokens == 24
    assert stream.usage.total_tokens == stream.usage.prompt_tokens + 24
    assert stream.timing is not None and stream.timing.total_ms > 0
    assert len(stream.request_id) > 0  # assigned by the server
    assert "tokens=24 done" in repr(stream)


def test_request_id_is_echoed(client: Client) -> None:
    stream = client.generate("Hi", max_tokens=3, request_id="client-test-echo")
    assert {chunk.request_id for chunk in stream} == {"client-test-echo"}
    assert stream.request_id == "client-test-echo"


def test_on_token_is_called_for_every_chunk_and_returns_the_finished_stream(
    client: Client,
) -> None:
    seen: list[Chunk] = []
    stream = client.generate("Hello", max_tokens=10, ignore_eos=True, on_token=seen.append)
    assert stream.done
    assert sum(len(chunk.token_ids) for chunk in seen) == stream.token_count == 10
    assert "".join(chunk.text for chunk in seen) == stream.text


@pytest.mark.parametrize("seed", [1, 42, 2**40])
def test_complete_returns_the_streamed_text_for_the_same_seed(client: Client, seed: int) -> None:
    options: GenerateOptions = {"max_tokens": 40, "seed": seed, "temperature": 0.8}
    # Grouping tokens into fewer messages must not change the text.
    grouped: GenerateOptions = {**options, "streaming_step": 3}
    streamed = client.generate("Write a poem", **grouped).collect()
    completed = client.complete("Write a poem", **options)
    assert completed.text == streamed.text != ""
    assert completed.choices[0].token_ids == streamed.choices[0].token_ids
    assert completed.finish_reason == streamed.finish_reason
    assert completed.usage == streamed.usage


def test_n_sequences_stream_under_their_own_index(client: Client) -> None:
    stream = client.generate("Name a colour", n=3, max_tokens=8, ignore_eos=True, seed=11)
    indexes = {chunk.index for chunk in stream}
    assert indexes == {0, 1, 2}
    assert len(stream.texts) == 3 and stream.texts[0] == stream.text
    assert stream.token_count == 24
    completed = client.complete("Name a colour", n=3, max_tokens=8, ignore_eos=True, seed=11)
    assert [choice.text for choice in completed.choices] == stream.texts


def test_stop_string_ends_the_sequence(client: Client) -> None:
    full = client.complete("Go on", max_tokens=30, ignore_eos=True, seed=5).text
    word = full.split()[3]
    stream = client.generate("Go on", max_tokens=30, ignore_eos=True, seed=5, stop=word)
    result = stream.collect()
    assert result.finish_reason == "stop_sequence"
    assert result.choices[0].stop_match is not None
    assert result.choices[0].stop_match.text == word
    assert word not in result.text and full.startswith(result.text)


def test_logprobs_are_reported_per_token(client: Client) -> None:
    result = client.generate("Hi", max_tokens=5, logprobs=True, top_logprobs=2).collect()
    choice = result.choices[0]
    assert len(choice.logprobs) == len(choice.token_ids)
    assert [entry.token_id for entry in choice.logprobs] == list(choice.token_ids)
    assert all(len(entry.top) == 2 and entry.logprob <= 0 for entry in choice.logprobs)
    assert choice.cumulative_logprob is not None


def test_chat_streams_a_reply_to_messages(client: Client) -> None:
    messages: Messages = [
        {"role": "system", "content": "Be brief."},
        ("user", "What is a river?"),
    ]
    stream = client.chat(messages, max_tokens=12, ignore_eos=True, seed=2)
    assert "".join(chunk.text for chunk in stream) == stream.text != ""
    # The prompt the engine saw is the rendered conversation, as Tokenize shows it.
    assert stream.usage is not None
    assert stream.usage.prompt_tokens == len(client.tokenize(messages=messages))


def test_model_info_describes_the_simulated_engine(client: Client) -> None:
    info = client.model_info()
    assert info.engine == "simulated"
    assert info.model == "tokenwire-sim"
    assert info.vocab_size > 0 and info.max_context_length > 0
    assert 0 < info.limits.default_max_tokens <= info.limits.max_tokens
    # The model name it reports is the one Generate accepts.
    assert client.complete("Hi", max_tokens=2, model=info.model).text


def test_tokenize_matches_the_prompt_the_engine_sees(client: Client) -> None:
    tokens = client.tokenize("Hello wörld")
    assert len(tokens.token_ids) == len(tokens.tokens) == len(tokens) > 0
    without_special = client.tokenize("Hello wörld", add_special_tokens=False)
    assert len(without_special) < len(tokens)
    usage = client.generate("Hello wörld", max_tokens=1).collect().usage
    assert usage is not None and usage.prompt_tokens == len(tokens)


def test_token_ids_input_generates(client: Client) -> None:
    ids = client.tokenize("Once upon a time").token_ids
    by_ids = client.complete(token_ids=ids, max_tokens=10, seed=9)
    by_text = client.complete("Once upon a time", max_tokens=10, seed=9)
    assert by_ids.text == by_text.text


@pytest.mark.parametrize("leave", ["break", "exception", "with-block"])
def test_leaving_the_loop_early_cancels_the_rpc(slow_sim_server: ServerProcess, leave: str) -> None:
    before = aborts(slow_sim_server, "cancelled")
    with Client(slow_sim_server.target) as client:
        if leave == "break":
            for _chunk in client.generate("Tell me a long story", **ENDLESS):
                break
        elif leave == "exception":
            with pytest.raises(KeyError):
                for _chunk in client.generate("Tell me a long story", **ENDLESS):
                    raise KeyError("the caller's own error")
        else:
            with client.generate("Tell me a long story", **ENDLESS) as stream:
                reader = iter(stream)  # held, so that only the block's exit cancels
                next(reader)
        # The client is still open: only the stream's own cancel can have ended it.
        wait_until_idle(slow_sim_server)
        wait_for(lambda: aborts(slow_sim_server, "cancelled") == before + 1)


def test_cancel_from_another_thread_ends_the_loop_quietly(
    slow_sim_server: ServerProcess,
) -> None:
    first_chunk = threading.Event()
    with Client(slow_sim_server.target) as client:
        stream = client.generate("Tell me a long story", **ENDLESS)

        def cancel_after_first_chunk() -> None:
            if first_chunk.wait(10):
                stream.cancel()

        canceller = threading.Thread(target=cancel_after_first_chunk)
        canceller.start()
        count = 0
        for _chunk in stream:
            count += 1
            first_chunk.set()
        canceller.join(10)
        assert 0 < count < 1000
        assert stream.cancelled and stream.done
        assert stream.finish_reason == "cancelled"
        assert stream.collect().finish_reason == "cancelled"  # nothing left to read
        wait_until_idle(slow_sim_server)


def test_deadline_raises_deadline_exceeded_and_aborts(slow_sim_server: ServerProcess) -> None:
    before = aborts(slow_sim_server, "deadline")
    with Client(slow_sim_server.target) as client:
        stream = client.generate("Tell me a long story", timeout=0.5, **ENDLESS)
        with pytest.raises(DeadlineExceeded) as caught:
            for _chunk in stream:
                pass
    assert caught.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert 0 < stream.token_count < 1000 and stream.done
    wait_until_idle(slow_sim_server)
    wait_for(lambda: aborts(slow_sim_server, "deadline") == before + 1)


def test_client_timeout_is_the_default_deadline(slow_sim_server: ServerProcess) -> None:
    with Client(slow_sim_server.target, timeout=0.3) as client:
        with pytest.raises(DeadlineExceeded):
            client.complete("Tell me a long story", **ENDLESS)
        # A call's own timeout wins over the client's.
        assert client.complete("Hi", max_tokens=8, ignore_eos=True, timeout=10).text


def test_invalid_argument_names_the_field(client: Client) -> None:
    with pytest.raises(InvalidRequest) as caught:
        client.complete("Hi", max_tokens=0)
    error = caught.value
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "stopping.max_tokens" in [violation.field for violation in error.field_violations]
    assert error.details and str(error).startswith("INVALID_ARGUMENT: ")

    stream = client.generate("Hi", temperature=5.0)
    with pytest.raises(InvalidRequest) as caught:
        list(stream)
    assert [v.field for v in caught.value.field_violations] == ["sampling.temperature"]
    assert stream.done


def test_unknown_model_raises_model_not_found(client: Client) -> None:
    with pytest.raises(ModelNotFound) as caught:
        client.complete("Hi", max_tokens=2, model="no-such-model")
    assert caught.value.code == grpc.StatusCode.NOT_FOUND


def test_duplicate_live_request_id_raises_request_id_in_use(
    slow_sim_server: ServerProcess,
) -> None:
    with Client(slow_sim_server.target) as client:
        options: GenerateOptions = {**ENDLESS, "request_id": "client-test-duplicate"}
        with client.generate("first", **options) as first:
            reader = iter(first)  # held: dropping a reader early cancels the call
            next(reader)  # the first request is live in the engine now
            with pytest.raises(RequestIdInUse):
                client.complete("second", **options)


def test_full_queue_raises_overloaded_with_retry_delay() -> None:
    server = start_server_process(
        ["--sim-itl-ms", "50", "--max-concurrent-requests", "1", "--max-queue", "0"]
    )
    try:
        with (
            Client(server.target, timeout=30) as client,
            client.generate("first", **ENDLESS) as first,
        ):
            reader = iter(first)  # held: dropping a reader early cancels the call
            next(reader)  # the first request holds the only engine slot now
            with pytest.raises(Overloaded) as caught:
                client.complete("second", max_tokens=2)
        assert caught.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert caught.value.retry_after is not None and caught.value.retry_after > 0
    finally:
        server.stop()


def test_an_answer_over_the_message_limit_is_resource_exhausted_not_overloaded() -> None:
    # No retry hint: the same call would fail again, so it must not read as "retry later".
    server = start_server_process(["--max-message-bytes", "65536", "--sim-itl-ms", "0"])
    try:
        with Client(server.target, timeout=30) as client:
            with pytest.raises(ResourceExhausted) as caught:
                client.complete(
                    "hi", max_tokens=8000, ignore_eos=True, stop=["never said"], top_logprobs=5
                )
            assert not isinstance(caught.value, Overloaded)
    finally:
        server.stop()


def test_api_key_is_sent_as_bearer_metadata() -> None:
    server = start_server_process(["--api-key", "s3cret"])
    try:
        for api_key in (None, "wrong"):
            with (
                Client(server.target, timeout=30, api_key=api_key) as client,
                pytest.raises(AuthenticationError),
            ):
                client.model_info()
        with Client(server.target, timeout=30, api_key="s3cret") as client:
            assert client.model_info().engine == "simulated"
    finally:
        server.stop()


def test_unreachable_server_raises_unavailable() -> None:
    with (
        Client(f"127.0.0.1:{free_port()}", timeout=10) as client,
        pytest.raises(Unavailable) as caught,
    ):
        client.model_info()
    assert caught.value.code == grpc.StatusCode.UNAVAILABLE


def test_unknown_option_and_missing_input_are_type_errors(client: Client) -> None:
    with pytest.raises(TypeError, match="max_token"):
        client.generate("Hi", max_token=5)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="exactly one"):
        client.complete()
    with pytest.raises(TypeError, match="exactly one"):
        client.complete("Hi", token_ids=[1, 2])


def test_closed_client_refuses_calls(sim_server: ServerProcess) -> None:
    client = Client(sim_server.target)
    assert client.model_info().engine == "simulated"
    client.close()
    with pytest.raises(RuntimeError, match="closed"):
        client.model_info()


def test_tls_with_root_certificates(tmp_path: Path) -> None:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("needs the openssl command to make a certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-days", "1", "-subj", "/CN=localhost", "-keyout", str(key), "-out", str(cert),
         "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
        check=True,
        capture_output=True,
        timeout=30,
    )  # fmt: skip
    server = start_server_process(["--tls-cert", str(cert), "--tls-key", str(key)])
    try:
        with Client(server.target, timeout=30, root_certificates=cert.read_bytes()) as client:
            assert client.complete("Hi", max_tokens=3, ignore_eos=True).text
        # A plaintext client cannot talk to a TLS server.
        with Client(server.target, timeout=10) as client, pytest.raises(Unavailable):
            client.model_info()
    finally:
        server.stop()
