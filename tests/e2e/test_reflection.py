"""Reflection answers under v1alpha and v1, with the proto's comments, and can be turned off."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import descriptor_pb2
from grpc_reflection.v1alpha import reflection_pb2 as pb

from tokenwire.server.rpc import reflection


async def list_services(port: int, package: str) -> list[str]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.stream_stream(
            f"/{package}.ServerReflection/ServerReflectionInfo",
            request_serializer=pb.ServerReflectionRequest.SerializeToString,
            response_deserializer=pb.ServerReflectionResponse.FromString,
        )
        replies = [r async for r in call(iter([pb.ServerReflectionRequest(list_services="")]))]
    return [s.name for s in replies[0].list_services_response.service]


@pytest.mark.parametrize("package", ["grpc.reflection.v1alpha", "grpc.reflection.v1"])
async def test_reflection_lists_services(server, package):
    names = await list_services(server.port, package)
    assert "tokenwire.v1.GenerationService" in names
    assert "grpc.health.v1.Health" in names


async def test_reflection_can_be_turned_off(make_server):
    server = await make_server(reflection=False)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await list_services(server.port, "grpc.reflection.v1alpha")
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED


async def file_containing(port: int, symbol: str) -> list[descriptor_pb2.FileDescriptorProto]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.stream_stream(
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            request_serializer=pb.ServerReflectionRequest.SerializeToString,
            response_deserializer=pb.ServerReflectionResponse.FromString,
        )
        request = pb.ServerReflectionRequest(file_containing_symbol=symbol)
        replies = [r async for r in call(iter([request]))]
    files = replies[0].file_descriptor_response.file_descriptor_proto
    return [descriptor_pb2.FileDescriptorProto.FromString(f) for f in files]


async def test_reflection_serves_the_contract_with_its_comments(server):
    (file,) = await file_containing(server.port, "tokenwire.v1.GenerateRequest")
    assert file.name == "tokenwire/v1/generation.proto"
    comments = [loc.leading_comments for loc in file.source_code_info.location]
    assert any("GenerateRequest is one generation" in c for c in comments)
    # Other files come as grpcio-reflection builds them.
    (health,) = await file_containing(server.port, "grpc.health.v1.Health")
    assert health.name.endswith("health.proto") and health.service[0].name == "Health"


def test_a_stale_or_missing_descriptor_set_serves_no_comments(tmp_path):
    found = descriptor_pb2.FileDescriptorSet.FromString(reflection.DOCUMENTED.read_bytes())
    assert set(reflection.documented_files()) == {"tokenwire/v1/generation.proto"}
    found.file[0].message_type[0].field[0].name = "renamed_since"  # the proto moved on
    stale = tmp_path / "stale.binpb"
    stale.write_bytes(found.SerializeToString())
    assert reflection.documented_files(stale) == {}
    assert reflection.documented_files(tmp_path / "missing.binpb") == {}
