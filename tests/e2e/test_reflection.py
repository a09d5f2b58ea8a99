"""Reflection answers under v1alpha and v1, and can be turned off."""

from __future__ import annotations

import grpc
import pytest
from grpc_reflection.v1alpha import reflection_pb2 as pb


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
