"""Server reflection under both names clients use: v1alpha and v1.

grpcio-reflection serves only ``grpc.reflection.v1alpha``. The v1 protocol is the
same messages under a new package name, identical on the wire, so the v1alpha
servicer answers v1 callers too (newer grpcurl, Postman and buf curl try v1 first).
"""

from __future__ import annotations

from collections.abc import Iterable

import grpc
from grpc_reflection.v1alpha import reflection
from grpc_reflection.v1alpha import reflection_pb2 as pb

V1 = "grpc.reflection.v1.ServerReflection"
V1ALPHA = reflection.SERVICE_NAME


def enable(service_names: Iterable[str], server: grpc.aio.Server) -> None:
    names = (*service_names, V1ALPHA, V1)
    servicer = reflection.aio.ReflectionServicer(names)
    for service in (V1ALPHA, V1):
        handler = grpc.stream_stream_rpc_method_handler(
            servicer.ServerReflectionInfo,
            request_deserializer=pb.ServerReflectionRequest.FromString,
            response_serializer=pb.ServerReflectionResponse.SerializeToString,
        )
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(service, {"ServerReflectionInfo": handler}),)
        )
