"""Python client for tokenwire: stream LLM tokens over gRPC.

    from tokenwire.client import Client

    with Client("127.0.0.1:50051") as client:
        for chunk in client.generate("Once upon a time", max_tokens=64):
            print(chunk.text, end="", flush=True)

Structured output (``json_schema=``, ``regex=``, ...) and tools (``tools=``,
``tool_choice=``) are options of the same calls; see `GenerateOptions`.
`AsyncClient` is the same API for asyncio. Errors are `TokenwireError` subclasses;
the tree is drawn in `tokenwire.client._errors`.
"""

from tokenwire.client._async import AsyncClient, AsyncStream
from tokenwire.client._base import DEFAULT_TARGET
from tokenwire.client._errors import (
    AuthenticationError,
    Cancelled,
    DeadlineExceeded,
    FieldViolation,
    InvalidRequest,
    ModelNotFound,
    NotResumable,
    Overloaded,
    RequestIdInUse,
    ResourceExhausted,
    ServerError,
    StreamAttached,
    TokenwireError,
    Unavailable,
)
from tokenwire.client._models import (
    Choice,
    Chunk,
    Completion,
    Limits,
    ModelInfo,
    StopMatch,
    Timing,
    Tokenization,
    TokenLogprob,
    ToolCall,
    ToolCallDelta,
    TopLogprob,
    Usage,
)
from tokenwire.client._sync import Client, Stream
from tokenwire.client._toolcalls import ToolCallAccumulator
from tokenwire.client._types import FinishReason, GenerateOptions, Message, Messages, Tool

__all__ = [
    "DEFAULT_TARGET",
    "AsyncClient",
    "AsyncStream",
    "AuthenticationError",
    "Cancelled",
    "Choice",
    "Chunk",
    "Client",
    "Completion",
    "DeadlineExceeded",
    "FieldViolation",
    "FinishReason",
    "GenerateOptions",
    "InvalidRequest",
    "Limits",
    "Message",
    "Messages",
    "ModelInfo",
    "ModelNotFound",
    "NotResumable",
    "Overloaded",
    "RequestIdInUse",
    "ResourceExhausted",
    "ServerError",
    "StopMatch",
    "Stream",
    "StreamAttached",
    "Timing",
    "TokenLogprob",
    "Tokenization",
    "TokenwireError",
    "Tool",
    "ToolCall",
    "ToolCallAccumulator",
    "ToolCallDelta",
    "TopLogprob",
    "Unavailable",
    "Usage",
]
