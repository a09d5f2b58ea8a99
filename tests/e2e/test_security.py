"""TLS, mutual TLS, certificate reload, API keys and the open health port, over real sockets."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

import grpc
import pytest
import trustme
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tokenwire.v1 import generation_pb2 as pb
from tokenwire.v1 import generation_pb2_grpc as pb_grpc

from ..helpers import BIN, free_port, start_server_process
from .test_cancellation import metric
from .test_reflection import list_services

SHORT = pb.GenerateRequest(prompt="x", stopping=pb.StoppingOptions(max_tokens=3))


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Path | trustme.CA]:
    server_ca, client_ca, other_ca = trustme.CA(), trustme.CA(), trustme.CA()
    paths: dict[str, Path | trustme.CA] = {"server_ca_obj": server_ca}
    cert = server_ca.issue_cert("localhost", "127.0.0.1")
    cert.private_key_pem.write_to_path(str(tmp_path / "server.key"))
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "server.pem"))
    server_ca.cert_pem.write_to_path(str(tmp_path / "server-ca.pem"))
    client_ca.cert_pem.write_to_path(str(tmp_path / "client-ca.pem"))
    for name, ca in (("client", client_ca), ("stranger", other_ca)):
        issued = ca.issue_cert(f"{name}@example.com")
        issued.private_key_pem.write_to_path(str(tmp_path / f"{name}.key"))
        issued.cert_chain_pems[0].write_to_path(str(tmp_path / f"{name}.pem"))
    for name in ("server.key", "server.pem", "server-ca.pem", "client-ca.pem"):
        paths[name] = tmp_path / name
    for name in ("client", "stranger"):
        paths[f"{name}.key"] = tmp_path / f"{name}.key"
        paths[f"{name}.pem"] = tmp_path / f"{name}.pem"
    return paths


def tls_channel(port: int, ca: Path, cert: str | None = None, pki=None) -> grpc.aio.Channel:
    key = chain = None
    if cert is not None:
        key, chain = pki[f"{cert}.key"].read_bytes(), pki[f"{cert}.pem"].read_bytes()
    creds = grpc.ssl_channel_credentials(ca.read_bytes(), key, chain)
    return grpc.aio.secure_channel(
        f"127.0.0.1:{port}", creds, options=(("grpc.ssl_target_name_override", "localhost"),)
    )


async def complete(channel: grpc.aio.Channel, **kwargs) -> pb.CompleteResponse:
    async with channel:
        return await pb_grpc.GenerationServiceStub(channel).Complete(SHORT, timeout=5, **kwargs)


async def test_tls(make_server, pki):
    server = await make_server(tls_cert=pki["server.pem"], tls_key=pki["server.key"])
    assert (await complete(tls_channel(server.port, pki["server-ca.pem"]))).choices
    with pytest.raises(grpc.aio.AioRpcError) as info:  # a plaintext client gets nowhere
        await complete(grpc.aio.insecure_channel(f"127.0.0.1:{server.port}"))
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    with pytest.raises(grpc.aio.AioRpcError):  # nor does one that trusts another CA
        await complete(tls_channel(server.port, pki["client-ca.pem"]))


async def test_mutual_tls(make_server, pki):
    server = await make_server(
        tls_cert=pki["server.pem"], tls_key=pki["server.key"], tls_client_ca=pki["client-ca.pem"]
    )
    ok = tls_channel(server.port, pki["server-ca.pem"], cert="client", pki=pki)
    assert (await complete(ok)).choices
    for cert in (None, "stranger"):  # no client certificate, or one from an unknown CA
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await complete(tls_channel(server.port, pki["server-ca.pem"], cert=cert, pki=pki))
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_certificates_reload_without_restart(make_server, pki, tmp_path):
    server = await make_server(tls_cert=pki["server.pem"], tls_key=pki["server.key"])
    assert (await complete(tls_channel(server.port, pki["server-ca.pem"]))).choices
    new_ca = trustme.CA()
    cert = new_ca.issue_cert("localhost", "127.0.0.1")
    cert.private_key_pem.write_to_path(str(pki["server.key"]))
    cert.cert_chain_pems[0].write_to_path(str(pki["server.pem"]))
    stamp = os.stat(pki["server.pem"]).st_mtime_ns + 10**9  # a visibly newer file
    for path in (pki["server.pem"], pki["server.key"]):
        os.utime(path, ns=(stamp, stamp))
    new_ca.cert_pem.write_to_path(str(tmp_path / "new-ca.pem"))
    assert (await complete(tls_channel(server.port, tmp_path / "new-ca.pem"))).choices
    with pytest.raises(grpc.aio.AioRpcError):
        await complete(tls_channel(server.port, pki["server-ca.pem"]))


def bearer(key: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {key}"),)


async def test_api_keys(make_server, tmp_path):
    keys = tmp_path / "keys"
    keys.write_text("# rotated weekly\nfile-key-1\n\n  # retired: old-key\nfile-key-2\n")
    server = await make_server(api_key="flag-key", api_keys_file=keys)
    target = f"127.0.0.1:{server.port}"
    for key in ("flag-key", "file-key-1", "file-key-2"):
        assert (await complete(grpc.aio.insecure_channel(target), metadata=bearer(key))).choices
    refused = (
        (),
        bearer("wrong"),
        bearer(""),
        bearer("# retired: old-key"),
        (("authorization", "flag-key"),),
    )
    for metadata in refused:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await complete(grpc.aio.insecure_channel(target), metadata=metadata)
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "flag-key" not in (info.value.details() or "")
    assert (
        metric(server, "tokenwire_requests_total", method="Complete", code="UNAUTHENTICATED") == 5
    )
    assert server.engine.in_flight() == 0

    # Health stays open for probes; a rotated keys file takes effect without a restart.
    async with grpc.aio.insecure_channel(target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        reply = await health.Check(health_pb2.HealthCheckRequest())  # type: ignore[attr-defined]
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    keys.write_text("file-key-3\n")
    stamp = os.stat(keys).st_mtime_ns + 10**9
    os.utime(keys, ns=(stamp, stamp))
    assert (
        await complete(grpc.aio.insecure_channel(target), metadata=bearer("file-key-3"))
    ).choices
    with pytest.raises(grpc.aio.AioRpcError):
        await complete(grpc.aio.insecure_channel(target), metadata=bearer("file-key-1"))


async def test_streams_need_the_key_and_reflection_does_not(make_server):
    server = await make_server(api_key="k")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = pb_grpc.GenerationServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for _ in stub.Generate(SHORT):
                pass
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        got = [m async for m in stub.Generate(SHORT, metadata=bearer("k"))]
        assert got[-1].finish_reason
    # Reflection tells only the public contract: open, like health (docs/operations.md).
    for package in ("grpc.reflection.v1alpha", "grpc.reflection.v1"):
        assert "tokenwire.v1.GenerationService" in await list_services(server.port, package)


async def test_health_port_is_plaintext_next_to_a_tls_port(make_server, pki):
    server = await make_server(
        tls_cert=pki["server.pem"], tls_key=pki["server.key"], api_key="k", health_port=free_port()
    )
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.health_port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        reply = await health.Check(health_pb2.HealthCheckRequest())  # type: ignore[attr-defined]
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        stub = pb_grpc.GenerationServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as info:  # only health lives there
            await stub.Complete(SHORT, metadata=bearer("k"))
        assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_secrets_stay_out_of_logs(tmp_path):
    server = start_server_process(["--api-key", "s3cret-flag-key", "--log-level", "debug"])
    try:
        channel = grpc.insecure_channel(server.target)
        with pytest.raises(grpc.RpcError):
            pb_grpc.GenerationServiceStub(channel).Complete(SHORT, metadata=bearer("s3cret-guess"))
        channel.close()
    finally:
        assert server.stop() == 0
    log = "".join(server.log)
    assert "API keys" in log
    assert "s3cret" not in log


SECRET = "tw-7f3a9c-never-print-me"


@pytest.mark.parametrize(
    ("args", "env"),
    [
        (["--api-key", SECRET, "--tls-cert", "x"], {}),  # pydantic's dump once echoed it
        (["--api-key", SECRET, "--port", "70000", "--engine", "bogus"], {}),
        (["--api-kee", SECRET], {}),
        (["--no-reflection", SECRET], {}),
        ([], {"TOKENWIRE_API_KEY": SECRET, "TOKENWIRE_MAX_N": "0"}),
        (["--api-key", SECRET, "--metrics-port", "HELD"], {}),  # a listener failure
        (["--api-key", SECRET, "--log-json", "--metrics-port", "HELD"], {}),
    ],
)
def test_secrets_stay_out_of_errors(args, env):
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = str(held.getsockname()[1])
        out = subprocess.run(
            [str(BIN / "tokenwire-server"), "--port", "0"]
            + [port if a == "HELD" else a for a in args],
            capture_output=True,
            text=True,
            timeout=30,
            env={**os.environ, **env},
        )
    assert out.returncode == 2, out.stderr
    assert out.stderr  # it did say what is wrong...
    assert SECRET not in out.stderr + out.stdout  # ...without the secret
