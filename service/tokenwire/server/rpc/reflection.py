"""Server reflection under both names clients use, v1alpha and v1, with doc comments.

grpcio-reflection serves only ``grpc.reflection.v1alpha``. The v1 protocol is the
same messages under a new package name, identical on the wire, so the v1alpha
servicer answers v1 callers too (newer grpcurl, Postman and buf curl try v1 first).

Python's generated code keeps no comments: grpcio-reflection would describe the
contract without a word of its documentation. ``make proto`` also writes
``generation.binpb`` next to the generated code, the same file descriptors with
their source info (comments), and reflection serves those in place of the bare
ones, so ``grpcurl describe`` shows the proto's comments. The drift check keeps
it in step with the generated code; should the two ever disagree, the bare
descriptor is served (a stale comment is worse than none).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterable, AsyncIterator, Iterable
from pathlib import Path
from typing import cast

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_reflection.v1alpha import reflection
from grpc_reflection.v1alpha import reflection_pb2 as pb

from tokenwire.v1 import generation_pb2

log = logging.getLogger("tokenwire.server")

V1 = "grpc.reflection.v1.ServerReflection"
V1ALPHA = reflection.SERVICE_NAME
DOCUMENTED = Path(generation_pb2.__file__).with_name("generation.binpb")


def enable(service_names: Iterable[str], server: grpc.aio.Server) -> None:
    names = (*service_names, V1ALPHA, V1)
    servicer = _Documented(names, documented_files())
    for service in (V1ALPHA, V1):
        handler = grpc.stream_stream_rpc_method_handler(
            servicer.ServerReflectionInfo,
            request_deserializer=pb.ServerReflectionRequest.FromString,
            response_serializer=pb.ServerReflectionResponse.SerializeToString,
        )
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(service, {"ServerReflectionInfo": handler}),)
        )


def documented_files(path: Path = DOCUMENTED) -> dict[str, bytes]:
    """Our serialized FileDescriptorProtos with comments, by file name; those that
    match the generated code the server runs on."""
    try:
        found = descriptor_pb2.FileDescriptorSet.FromString(path.read_bytes()).file
    except OSError as error:
        log.warning("reflection serves no doc comments: cannot read %s", error.filename)
        return {}
    files = {}
    for documented in found:
        if _same_contract(documented):
            files[documented.name] = documented.SerializeToString()
        else:
            log.warning("reflection serves no doc comments for %s: stale", documented.name)
    return files


def _same_contract(documented: descriptor_pb2.FileDescriptorProto) -> bool:
    """Whether ``documented`` describes what the running code was generated from."""
    try:
        running = descriptor_pool.Default().FindFileByName(documented.name)
    except KeyError:
        return False
    compiled = descriptor_pb2.FileDescriptorProto.FromString(running.serialized_pb)
    return _bare(documented) == _bare(compiled)


def _bare(file: descriptor_pb2.FileDescriptorProto) -> descriptor_pb2.FileDescriptorProto:
    """``file`` without what only the descriptor set carries: comments and json_name."""
    bare = descriptor_pb2.FileDescriptorProto()
    bare.CopyFrom(file)
    bare.ClearField("source_code_info")
    messages = list(bare.message_type)
    for extension in bare.extension:
        extension.ClearField("json_name")
    while messages:
        message = messages.pop()
        for field in (*message.field, *message.extension):
            field.ClearField("json_name")
        messages.extend(message.nested_type)
    return bare


class _Documented(reflection.aio.ReflectionServicer):
    def __init__(self, service_names: Iterable[str], documented: dict[str, bytes]) -> None:
        super().__init__(service_names)
        self._documented = documented

    async def ServerReflectionInfo(  # type: ignore[override]  # noqa: N802 - stubs: a coroutine
        self, request_iterator: AsyncIterable[pb.ServerReflectionRequest], unused_context: object
    ) -> AsyncIterator[pb.ServerReflectionResponse]:
        # An async generator at run time; the stubs type it as a coroutine.
        responses = cast(
            AsyncIterable[pb.ServerReflectionResponse],
            super().ServerReflectionInfo(request_iterator, unused_context),
        )
        async for response in responses:
            if response.HasField("file_descriptor_response"):
                files = response.file_descriptor_response.file_descriptor_proto
                documented = [self._with_comments(serialized) for serialized in files]
                del files[:]
                files.extend(documented)
            yield response

    def _with_comments(self, serialized: bytes) -> bytes:
        name = descriptor_pb2.FileDescriptorProto.FromString(serialized).name
        return self._documented.get(name, serialized)
