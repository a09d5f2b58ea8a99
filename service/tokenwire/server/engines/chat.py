"""A conversation (and the tools it offers) as Hugging Face chat templates take them.

    text = render_chat(tokenizer, prompt)   # apply_chat_template(..., tools=..., tokenize=False)

Both engines with a Hugging Face tokenizer (transformers, TensorRT-LLM) render
through this, so a conversation with tool calls reads the same to either model:

- an assistant turn's calls go as ``tool_calls: [{"id", "type": "function",
  "function": {"name", "arguments"}}]`` with the arguments as a JSON *object*
  (templates write them with ``tojson``: a string would be quoted twice);
- a tool turn carries its ``tool_call_id``;
- tools go as ``tools=[{"type": "function", "function": {"name", "description",
  "parameters"}}]``, the schema as an object, which is what templates with tool
  support (Qwen, Hermes, Llama 3.1+, Mistral) read.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from .base import ChatMessage, InvalidInput, PromptInput, ToolSpec

_NO_PARAMETERS = {"type": "object", "properties": {}}


def hf_messages(messages: Sequence[ChatMessage]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for m in messages:
        turn: dict[str, Any] = {"role": m.role, "content": m.content}
        if m.tool_calls:
            turn["tool_calls"] = [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {"name": call.name, "arguments": _object(call.arguments)},
                }
                for call in m.tool_calls
            ]
        if m.tool_call_id:
            turn["tool_call_id"] = m.tool_call_id
        out.append(turn)
    return out


def hf_tools(tools: Sequence[ToolSpec]) -> list[dict[str, Any]]:
    return [
        {
            "type": "function",
            "function": {
                "name": tool.name,
                "description": tool.description,
                "parameters": _object(tool.parameters_json or "") or _NO_PARAMETERS,
            },
        }
        for tool in tools
    ]


def render_chat(tokenizer: Any, prompt: PromptInput) -> str:
    """The conversation through ``tokenizer``'s chat template, ready for the
    assistant's turn; InvalidInput when the model has none or the template refuses it."""
    assert prompt.messages is not None
    if not getattr(tokenizer, "chat_template", None):
        raise InvalidInput("messages", "this model has no chat template")
    extra: dict[str, Any] = {"tools": hf_tools(prompt.tools)} if prompt.tools else {}
    try:
        text = tokenizer.apply_chat_template(
            hf_messages(prompt.messages), tokenize=False, add_generation_prompt=True, **extra
        )
    except Exception as error:  # templates raise on what they refuse (role order...)
        raise InvalidInput("messages", f"the chat template refused them: {error}") from error
    return str(text)


def _object(text: str) -> Any:
    """JSON text as the value templates expect; text that is no JSON stays text."""
    try:
        return json.loads(text)
    except ValueError:
        return text
