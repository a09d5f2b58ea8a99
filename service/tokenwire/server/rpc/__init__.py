"""Door 1, gRPC: protobuf in and out; status codes, details and trailers."""
