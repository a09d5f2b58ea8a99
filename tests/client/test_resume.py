"""The Python client's resumable streams: a broken connection (a proxy restarted, a
client process killed) is not a lost answer, and the loop that reads never sees it."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from tests.helpers import (
    BIN,
    ServerProcess,
    free_port,
    metric_value,
    start_server_process,
    wait_for,
)
from tests.proxies import haproxy
from tokenwire.client import AsyncClient, Client, GenerateOptions, NotResumable, Unavailable

__all__ = ["haproxy"]  # the fixture, used here

STORY: GenerateOptions = {"max_tokens": 40, "ignore_eos": True, "seed": 3, "temperature": 1.0}
IN_FLIGHT = "tokenwire_engine_requests_in_flight"


@pytest.fixture
def server() -> Iterator[ServerProcess]:
    """A token every 20 ms: a 40-token stream lasts about 0.8 s."""
    process = start_server_process(["--sim-ttft-ms", "5", "--sim-itl-ms", "20"])
    yield process
    process.stop()


def whole_text(server: ServerProcess) -> str:
    with Client(server.target, timeout=30) as client:
        return client.complete("tell me a story", **STORY).text


def test_the_sync_client_survives_a_proxy_restart_mid_stream(server, haproxy):
    proxy = haproxy(server.port, server.http_port)
    texts = []
    with Client(proxy.grpc_target, timeout=30) as client:
        stream = client.generate("tell me a story", resumable=True, **STORY)
        for i, chunk in enumerate(stream):
            texts.append(chunk.text)
            if i == 4:
                proxy.restart()  # every connection through it is cut; same port again
        assert stream.finish_reason == "length" and stream.usage is not None
    # Each message once, none missing: as many chunks as the server numbered.
    assert len(texts) == stream.last_sequence
    assert "".join(texts) == whole_text(server)
    assert metric_value(server.metrics_url, "tokenwire_resumes_total", {"outcome": "resumed"}) >= 1


async def test_the_async_client_survives_a_proxy_restart_mid_stream(server, haproxy):
    proxy = haproxy(server.port, server.http_port)
    texts = []
    async with AsyncClient(proxy.grpc_target, timeout=30) as client:
        stream = client.generate("tell me a story", resume_grace_s=10, **STORY)
        async for chunk in stream:
            texts.append(chunk.text)
            if len(texts) == 5:
                await asyncio.to_thread(proxy.restart)
        assert stream.usage is not None and stream.usage.completion_tokens == 40
    assert len(texts) == stream.last_sequence
    assert "".join(texts) == await asyncio.to_thread(whole_text, server)


CHILD = """
import json, sys
from tokenwire.client import Client
with Client(sys.argv[1], timeout=30) as client:
    stream = client.generate("tell me a story", request_id="killed", resumable=True,
                             max_tokens=40, ignore_eos=True, seed=3, temperature=1.0)
    for chunk in stream:
        print(json.dumps([stream.last_sequence, chunk.text]), flush=True)
"""


def test_a_client_process_killed_with_sigkill_is_resumed_by_another(server):
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, server.target], stdout=subprocess.PIPE, text=True
    )
    assert child.stdout is not None
    got = [json.loads(child.stdout.readline()) for _ in range(5)]
    child.send_signal(signal.SIGKILL)  # no cancel, no Abort: the connection just ends
    assert child.wait(10) == -signal.SIGKILL
    child.stdout.close()
    last = got[-1][0]
    assert [seq for seq, _ in got] == list(range(1, last + 1))
    with Client(server.target, timeout=30) as client:
        rest = client.resume("killed", after_sequence=last)
        texts = [chunk.text for chunk in rest]
        assert rest.last_sequence == last + len(texts)
    assert "".join(text for _, text in got) + "".join(texts) == whole_text(server)


def test_cancel_aborts_a_resumable_stream_at_once_and_resume_is_then_refused(server):
    with Client(server.target, timeout=30) as client:
        stream = client.generate(
            "tell me a story", resumable=True, max_tokens=1000, ignore_eos=True
        )
        next(iter(stream))
        stream.cancel()  # not a detach: the generation ends now, not at the grace
        wait_for(lambda: metric_value(server.metrics_url, IN_FLIGHT) == 0)
        assert metric_value(server.metrics_url, "tokenwire_aborts_total", {"reason": "aborted"})
        assert client.abort(stream.request_id) == []  # nothing live any more
        with pytest.raises(NotResumable):
            list(client.resume("nobody-started-this"))


def test_the_cli_resumes_with_resumable(server, haproxy):
    proxy = haproxy(server.port, server.http_port)
    cli = subprocess.Popen(
        [
            str(BIN / "tokenwire"),
            *("--target", proxy.grpc_target, "generate", "tell me a story", "--resumable"),
            *("--max-tokens", "40", "--ignore-eos", "--seed", "3", "--temperature", "1.0"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert cli.stdout is not None
    # Unbuffered: what the CLI printed before the cut, then the rest (communicate).
    first = os.read(cli.stdout.fileno(), 3)  # it is streaming: cut the connection under it
    proxy.restart()
    rest, err = cli.communicate(timeout=30)
    assert cli.returncode == 0, err
    assert (first + rest).decode().rstrip("\n") == whole_text(server)
    assert metric_value(server.metrics_url, "tokenwire_resumes_total", {"outcome": "resumed"}) >= 1


def test_a_resumable_stream_to_nowhere_gives_up_within_its_grace_as_unavailable():
    started = time.monotonic()
    with Client(f"127.0.0.1:{free_port()}", timeout=5) as client:
        stream = client.generate("hi", resume_grace_s=0.5, max_tokens=4)
        with pytest.raises(Unavailable):
            list(stream)
    assert time.monotonic() - started < 5  # the grace bounded the retries, not the timeout
