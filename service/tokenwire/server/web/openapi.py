"""GET /openapi.json: the HTTP door's routes as an OpenAPI 3.0 document.

For clients and tools that read one (Schemathesis fuzzes the door against it in
tests/hardening). The bodies list the fields the door reads (openai_request.py);
unknown fields are ignored, as OpenAI does, so no schema forbids extra ones. Every
refusal is an OpenAI error object with the parameter it names.
"""

from __future__ import annotations

from typing import Any

import orjson

_NUM = {"type": "number"}
_INT = {"type": "integer"}
_BOOL = {"type": "boolean"}
_STR = {"type": "string"}
_STOP = {"oneOf": [_STR, {"type": "array", "items": _STR}], "nullable": True}

_COMMON: dict[str, Any] = {
    "model": _STR,
    "max_tokens": {**_INT, "nullable": True},
    "n": _INT,
    "temperature": _NUM,
    "top_p": _NUM,
    "top_k": _INT,
    "min_p": _NUM,
    "seed": {**_INT, "nullable": True},
    "stop": _STOP,
    "stop_token_ids": {"type": "array", "items": _INT},
    "presence_penalty": _NUM,
    "frequency_penalty": _NUM,
    "repetition_penalty": _NUM,
    "min_tokens": _INT,
    "ignore_eos": _BOOL,
    "skip_special_tokens": _BOOL,
    "include_stop_str_in_output": _BOOL,
    "logprobs": {},
    "top_logprobs": _INT,
    "priority": _NUM,
    "stream": _BOOL,
    "stream_options": {
        "type": "object",
        "nullable": True,
        "properties": {"include_usage": _BOOL},
    },
    "return_token_ids": _BOOL,
    "user": _STR,
    # Structured output (docs/structured-output.md): one of them per request.
    "response_format": {
        "type": "object",
        "nullable": True,
        "properties": {
            "type": {"type": "string", "enum": ["text", "json_object", "json_schema"]},
            "json_schema": {
                "type": "object",
                "properties": {"name": _STR, "schema": {"type": "object"}, "strict": _BOOL},
            },
        },
    },
    "guided_json": {"oneOf": [_STR, {"type": "object"}], "nullable": True},
    "guided_regex": {**_STR, "nullable": True},
    "guided_choice": {"type": "array", "items": _STR, "nullable": True},
    "guided_grammar": {**_STR, "nullable": True},
}

_FUNCTION = {
    "type": "object",
    "required": ["name"],
    "properties": {"name": _STR, "description": _STR, "parameters": {"type": "object"}},
}
_CALL = {
    "type": "object",
    "properties": {
        "id": _STR,
        "type": {"type": "string", "enum": ["function"]},
        "function": {
            "type": "object",
            "required": ["name"],
            "properties": {"name": _STR, "arguments": _STR},
        },
    },
}
# Tool calls (docs/tools.md): chat only.
_TOOLS: dict[str, Any] = {
    "tools": {
        "type": "array",
        "nullable": True,
        "items": {
            "type": "object",
            "required": ["function"],
            "properties": {"type": {"type": "string", "enum": ["function"]}, "function": _FUNCTION},
        },
    },
    "tool_choice": {
        "oneOf": [
            {"type": "string", "enum": ["none", "auto", "required"]},
            {
                "type": "object",
                "properties": {
                    "type": {"type": "string", "enum": ["function"]},
                    "function": {"type": "object", "properties": {"name": _STR}},
                },
            },
        ],
        "nullable": True,
    },
    "parallel_tool_calls": {**_BOOL, "nullable": True},
}

_MESSAGE = {
    "type": "object",
    "required": ["role"],
    "properties": {
        "role": {"type": "string", "enum": ["system", "developer", "user", "assistant", "tool"]},
        "content": {
            "oneOf": [
                _STR,
                {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {"type": _STR, "text": _STR},
                    },
                },
            ],
            "nullable": True,
        },
        "name": _STR,
        "tool_calls": {"type": "array", "items": _CALL, "nullable": True},
        "tool_call_id": _STR,
    },
}

_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type"],
            "properties": {
                "message": _STR,
                "type": _STR,
                "param": {**_STR, "nullable": True},
                "code": {"nullable": True},
            },
        }
    },
}

_REFUSALS = {
    "400": "A field is refused; error.param names it.",
    "401": "Missing or invalid API key.",
    "404": "No such model.",
    "408": "The body did not arrive in time.",
    "409": "A live request has this X-Request-Id.",
    "413": "The body, or the whole answer, is too large.",
    "429": "The admission queue is full.",
    "503": "The server is shutting down or not ready.",
    "504": "The client's deadline (X-Request-Timeout) passed.",
}


def _responses(ok: str, content_type: str = "application/json") -> dict[str, Any]:
    answers: dict[str, Any] = {"200": {"description": ok, "content": {content_type: {}}}}
    for code, description in _REFUSALS.items():
        answers[code] = {
            "description": description,
            "content": {"application/json": {"schema": _ERROR}},
        }
    return answers


def _post(summary: str, body: dict[str, Any]) -> dict[str, Any]:
    return {
        "post": {
            "summary": summary,
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": body}},
            },
            "responses": _responses("The answer, or its stream (text/event-stream)."),
        }
    }


def _get(summary: str, content_type: str = "application/json") -> dict[str, Any]:
    return {
        "get": {
            "summary": summary,
            "responses": {"200": {"description": summary, "content": {content_type: {}}}},
        }
    }


DOCUMENT: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {"title": "tokenwire HTTP door", "version": "1"},
    "paths": {
        "/v1/chat/completions": _post(
            "OpenAI chat completion",
            {
                "type": "object",
                "required": ["messages"],
                "properties": {
                    **_COMMON,
                    **_TOOLS,
                    "messages": {"type": "array", "items": _MESSAGE},
                    "max_completion_tokens": {**_INT, "nullable": True},
                },
            },
        ),
        "/v1/completions": _post(
            "OpenAI completion",
            {
                "type": "object",
                "required": ["prompt"],
                "properties": {
                    **_COMMON,
                    "prompt": {
                        "oneOf": [
                            _STR,
                            {"type": "array", "items": _STR},
                            {"type": "array", "items": _INT},
                        ]
                    },
                },
            },
        ),
        "/v1/generate": _post(
            "The native contract's GenerateRequest as JSON; NDJSON responses",
            {"type": "object", "properties": {"prompt": _STR, "request_id": _STR}},
        ),
        "/v1/models": _get("The served model and its adapters"),
        "/health": _get("Serving or not (200 or 503)"),
        "/metrics": _get("Prometheus metrics", "text/plain"),
        "/openapi.json": _get("This document"),
    },
}

BODY = orjson.dumps(DOCUMENT)
