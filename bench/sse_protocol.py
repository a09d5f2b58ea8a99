"""The OpenAI chat-completions streaming shapes, as vLLM's protocol models build them.

Field for field what vLLM's ``ChatCompletionStreamResponse`` carries for a
plain text stream (``vllm/entrypoints/openai/protocol.py``), plus the
``token_ids`` vLLM adds per choice on request, so that an event holds what a
tokenwire message holds (text and token ids) and the client can count tokens.
"""

from __future__ import annotations

import time
import uuid
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class OpenAIBaseModel(BaseModel):
    # vLLM's base: unknown request fields are accepted (and ignored here).
    model_config = ConfigDict(extra="allow")


class ChatMessageParam(OpenAIBaseModel):
    role: str
    content: str


class StreamOptions(OpenAIBaseModel):
    include_usage: bool = False


class ChatCompletionRequest(OpenAIBaseModel):
    model: str
    messages: list[ChatMessageParam]
    max_tokens: int = 256
    stream: bool = False
    stream_options: StreamOptions | None = None
    ignore_eos: bool = False
    seed: int | None = None


class DeltaMessage(OpenAIBaseModel):
    role: str | None = None
    content: str | None = None


class ChatCompletionResponseStreamChoice(OpenAIBaseModel):
    index: int
    delta: DeltaMessage
    logprobs: None = None
    finish_reason: str | None = None
    token_ids: list[int] | None = None


class UsageInfo(OpenAIBaseModel):
    prompt_tokens: int = 0
    total_tokens: int = 0
    completion_tokens: int | None = 0


def random_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


class ChatCompletionStreamResponse(OpenAIBaseModel):
    id: str = Field(default_factory=random_id)
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[ChatCompletionResponseStreamChoice]
    usage: UsageInfo | None = Field(default=None)
