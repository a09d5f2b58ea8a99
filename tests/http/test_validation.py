"""The bad-input matrix over HTTP: a 400 naming the parameter as the client sent it,
the server unharmed, and no engine request left behind."""

from __future__ import annotations

import asyncio
import json

import pytest

from tokenwire.server.app import Server

from ..helpers import http_request

CHAT: dict[str, object] = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
COMPLETION: dict[str, object] = {"prompt": "hi", "max_tokens": 4}

# A schema nested past what orjson writes back (254 levels): refused, not a 500.
DEEP: dict[str, object] = {"type": "object"}
_inner = DEEP
for _ in range(300):
    _inner["not"] = {}
    _inner = _inner["not"]  # type: ignore[assignment]

CASES = [
    ("/v1/chat/completions", {"messages": "hi"}, "messages"),
    ("/v1/chat/completions", {"messages": []}, "messages"),
    ("/v1/chat/completions", {"messages": [{"content": "x"}]}, "messages[0].role"),
    ("/v1/chat/completions", {"messages": [{"role": ""}]}, "messages[0].role"),
    (
        "/v1/chat/completions",
        {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
        "messages[0].content[0].type",
    ),
    ("/v1/chat/completions", {**CHAT, "temperature": "hot"}, "temperature"),
    ("/v1/chat/completions", {**CHAT, "temperature": -1}, "temperature"),
    ("/v1/chat/completions", {**CHAT, "max_tokens": 1.5}, "max_tokens"),
    ("/v1/chat/completions", {**CHAT, "max_tokens": True}, "max_tokens"),
    ("/v1/chat/completions", {**CHAT, "stop": [1]}, "stop"),
    ("/v1/chat/completions", {**CHAT, "stop": ""}, "stop"),
    ("/v1/chat/completions", {**CHAT, "stream_options": {"include_usage": True}}, "stream_options"),
    ("/v1/chat/completions", {**CHAT, "top_k": -5}, "top_k"),
    ("/v1/chat/completions", {**CHAT, "n": 0}, "n"),
    ("/v1/chat/completions", {**CHAT, "min_tokens": 10}, "min_tokens"),
    ("/v1/chat/completions", {**CHAT, "response_format": {"type": "xml"}}, "response_format.type"),
    (
        "/v1/chat/completions",
        {
            **CHAT,
            "response_format": {"type": "json_schema", "json_schema": {"schema": {"type": 1}}},
        },
        "response_format.json_schema.schema",
    ),
    ("/v1/chat/completions", {**CHAT, "guided_regex": "[a-"}, "guided_regex"),
    ("/v1/chat/completions", {**CHAT, "guided_choice": []}, "guided_choice"),
    ("/v1/chat/completions", {**CHAT, "guided_choice": ["a", ""]}, "guided_choice[1]"),
    ("/v1/chat/completions", {**CHAT, "guided_grammar": "root ::= ("}, "guided_grammar"),
    ("/v1/chat/completions", {**CHAT, "guided_json": "{not json"}, "guided_json"),
    (
        "/v1/chat/completions",
        {**CHAT, "guided_regex": "a+", "response_format": {"type": "json_object"}},
        "guided_regex",
    ),
    (
        "/v1/chat/completions",
        {**CHAT, "guided_regex": "a+", "ignore_eos": True},
        "ignore_eos",
    ),
    ("/v1/chat/completions", {**CHAT, "tools": [{"type": "web_search"}]}, "tools[0].type"),
    (
        "/v1/chat/completions",
        {**CHAT, "tools": [{"type": "function", "function": {"name": "no spaces"}}]},
        "tools[0].function.name",
    ),
    (
        "/v1/chat/completions",
        {
            **CHAT,
            "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": 5}}}],
        },
        "tools[0].function.parameters",
    ),
    (
        "/v1/chat/completions",
        {
            **CHAT,
            "tools": [
                {"type": "function", "function": {"name": "f"}},
                {"type": "function", "function": {"name": "f"}},
            ],
        },
        "tools[1].function.name",
    ),
    (
        "/v1/chat/completions",
        {**CHAT, "tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": "g"},
        "tool_choice",
    ),
    ("/v1/chat/completions", {**CHAT, "tool_choice": "required"}, "tool_choice"),
    (
        "/v1/chat/completions",
        {
            **CHAT,
            "tools": [{"type": "function", "function": {"name": "f"}}],
            "response_format": {"type": "json_object"},
        },
        "response_format",
    ),
    (
        "/v1/chat/completions",
        {
            "messages": [
                {"role": "user", "content": "hi"},
                {
                    "role": "assistant",
                    "tool_calls": [
                        {
                            "id": "c1",
                            "type": "function",
                            "function": {"name": "f", "arguments": "x"},
                        }
                    ],
                },
            ]
        },
        "messages[1].tool_calls[0].function.arguments",
    ),
    ("/v1/completions", {**COMPLETION, "tools": [{"type": "function"}]}, "tools"),
    (
        "/v1/chat/completions",
        {**CHAT, "tools": [{"type": "function", "function": {"name": "required"}}]},
        "tools[0].function.name",
    ),
    (
        "/v1/chat/completions",
        {
            **CHAT,
            "tools": [
                {"type": "function", "function": {"name": "f", "parameters": {"type": "string"}}}
            ],
        },
        "tools[0].function.parameters",
    ),
    ("/v1/chat/completions", {**CHAT, "guided_json": DEEP}, "guided_json"),
    (
        "/v1/chat/completions",
        {**CHAT, "tools": [{"type": "function", "function": {"name": "f", "parameters": DEEP}}]},
        "tools[0].function.parameters",
    ),
    (
        "/v1/chat/completions",
        {
            "messages": [
                {"role": "user", "content": "hi"},
                {
                    "role": "assistant",
                    "tool_calls": [
                        {
                            "id": "c1",
                            "type": "function",
                            "function": {"name": "f", "arguments": "[" * 5000 + "]" * 5000},
                        }
                    ],
                },
            ]
        },
        "messages[1].tool_calls[0].function.arguments",
    ),
    ("/v1/completions", {**COMPLETION, "guided_regex": "("}, "guided_regex"),
    ("/v1/chat/completions", {**CHAT, "seed": "7"}, "seed"),
    ("/v1/chat/completions", {**CHAT, "priority": 2}, "priority"),
    ("/v1/chat/completions", {**CHAT, "priority": "high"}, "priority"),
    ("/v1/completions", {"prompt": ["a", "b"]}, "prompt"),
    ("/v1/completions", {"prompt": 5}, "prompt"),
    ("/v1/completions", {"prompt": [1, -2]}, "prompt"),
    ("/v1/completions", {"prompt": [10**9]}, "prompt[0]"),
    ("/v1/completions", {"prompt": [[1, 10**9]]}, "prompt[0][1]"),
    ("/v1/completions", {"prompt": ""}, "prompt"),
    ("/v1/completions", {**COMPLETION, "echo": True}, "echo"),
    ("/v1/completions", {**COMPLETION, "logprobs": 1000}, "logprobs"),
    ("/v1/completions", {**COMPLETION, "max_tokens": 10**7}, "max_tokens"),
    ("/v1/completions", {**COMPLETION, "prompt": "x" * 10, "max_tokens": 40_000}, "max_tokens"),
    ("/v1/generate", {"stopping": {"maxTokens": 0}, "prompt": "hi"}, "stopping.max_tokens"),
    ("/v1/generate", {"prompt": "hi", "sampling": {"temperature": "x"}}, "body"),
    ("/v1/generate", {"prompt": "hi", "nope": 1}, "body"),
]


@pytest.mark.parametrize(("path", "body", "param"), CASES)
async def test_bad_input_is_400_naming_the_param(
    http_server: Server, path: str, body: dict[str, object], param: str
) -> None:
    status, _, raw = await http_request(http_server.http_port, path, body)
    assert status == 400, raw
    error = json.loads(raw)["error"]
    assert error["param"] == param
    assert error["type"] == "invalid_request_error"
    assert error["message"].startswith(param)
    assert http_server.engine.in_flight() == 0
    assert not http_server.core.live


async def test_the_server_goes_on_after_garbage(http_server: Server) -> None:
    for junk in (b"\xff\xfe", b"[1, 2]", b"null", b'{"messages": [null]}'):
        answer = await _request_bytes(http_server.http_port, junk)
        assert answer.startswith(b"HTTP/1.1 400"), answer
    status, _, _ = await http_request(http_server.http_port, "/v1/chat/completions", CHAT)
    assert status == 200


async def _request_bytes(port: int, body: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    data = await asyncio.wait_for(reader.read(), 20)
    writer.close()
    return data
