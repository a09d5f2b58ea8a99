"""The constraints scenario's requests: one conversation, asked under each constraint.

    request(StreamSpec(64, workload="json_schema"), seed=7)   # a GenerateRequest
    schema_request(64, nonce="...")                            # the same schema, text changed

Every workload asks the same conversation with the same token budget, so that the
server's CPU per token differs by what the constraint adds and nothing else. Where
the grammar lets the answer end (every constrained workload ends where its
grammar does: the server refuses ``ignore_eos`` with them), the budget is chosen
so that most answers reach it (docs/performance.md, "What a constraint costs").
"""

from __future__ import annotations

import json
from typing import Any

from tokenwire.v1 import generation_pb2 as pb

from .records import StreamSpec

CONVERSATION = (pb.ChatMessage(role="user", content="Tell me about rivers"),)

# A realistic record: strings, a bounded integer, an enum and an array, all required,
# nothing else allowed (what OpenAI's strict mode asks of a schema).
PERSON_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
        "status": {"type": "string", "enum": ["active", "inactive", "pending"]},
        "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 8},
        "city": {"type": "string"},
    },
    "required": ["name", "age", "status", "tags", "city"],
    "additionalProperties": False,
}

# A few CSV-like records: long enough that the answers run to the budget.
RECORDS_REGEX = r"([A-Z][a-z]+ [A-Z][a-z]+, [0-9]{2}, (active|inactive|pending)\n){3,6}"

TOOLS = (
    pb.Tool(
        name="get_weather",
        description="The current weather in a city",
        parameters_json=json.dumps(
            {
                "type": "object",
                "properties": {
                    "city": {"type": "string"},
                    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                },
                "required": ["city", "unit"],
            }
        ),
    ),
    pb.Tool(
        name="search_web",
        description="Search the web and return the top results",
        parameters_json=json.dumps(
            {
                "type": "object",
                "properties": {
                    "query": {"type": "string"},
                    "limit": {"type": "integer", "minimum": 1, "maximum": 10},
                },
                "required": ["query"],
            }
        ),
    ),
)

WORKLOADS: dict[str, str] = {
    "plain": "plain text (the baseline)",
    "json_schema": "JSON schema: an object of strings, an integer, an enum and an array",
    "regex": "regex: CSV-like records",
    "tools_none": 'tools in the prompt, tool_choice "none": no grammar, no parser',
    "tools_auto_text": 'tools offered, tool_choice "auto", answered as text: the parser only',
    "tools_required": 'tools, tool_choice "required": a forced call (grammar and parser)',
}
"""Each workload's name and what it asks, in the order the report lists them."""

# The server refuses ignore_eos under a grammar; these run to the budget without one.
_TO_THE_BUDGET = frozenset({"plain", "tools_none", "tools_auto_text"})


def schema_text(nonce: str = "") -> str:
    """PERSON_SCHEMA as JSON text; a ``nonce`` in its description makes the text (and so
    the compiled grammar) new to the server's caches without changing what it allows."""
    schema = dict(PERSON_SCHEMA, description=f"benchmark {nonce}") if nonce else PERSON_SCHEMA
    return json.dumps(schema)


def request(spec: StreamSpec, seed: int | None = None) -> pb.GenerateRequest:
    """The workload's request for one stream."""
    name = spec.workload
    if name not in WORKLOADS:
        raise ValueError(f"unknown workload {name!r}")
    req = pb.GenerateRequest(
        messages=pb.ChatMessages(messages=CONVERSATION),
        stopping=pb.StoppingOptions(max_tokens=spec.max_tokens),
        stream=pb.StreamOptions(streaming_step=spec.step),
    )
    if seed is not None:
        req.sampling.seed = seed
    if name in _TO_THE_BUDGET:
        req.stopping.ignore_eos = True
    if name == "json_schema":
        req.structured_output.json_schema = schema_text()
    elif name == "regex":
        req.structured_output.regex = RECORDS_REGEX
    elif name.startswith("tools_"):
        req.tools.extend(TOOLS)
        req.tool_choice = name.split("_")[1]  # none, auto, required
    return req


def schema_request(max_tokens: int, nonce: str = "") -> pb.GenerateRequest:
    """A JSON-schema request whose schema is cached (no nonce) or new (a fresh nonce)."""
    req = request(StreamSpec(max_tokens, workload="json_schema"))
    req.structured_output.json_schema = schema_text(nonce)
    return req
