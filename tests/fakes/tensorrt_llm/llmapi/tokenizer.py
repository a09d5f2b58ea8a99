"""``TransformersTokenizer`` around a Hugging Face-like tokenizer (llmapi/tokenizer.py).

The HF-like tokenizer is tokenwire's simulated vocabulary: common words are
single tokens, anything else is spelt in byte tokens, so accented letters, CJK
and emoji span several tokens, as with byte-level BPE.

Its chat template is written in Python, in the manner of Hermes and Qwen templates:
tools in a system turn, an assistant's calls as ``<tool_call>`` JSON, a tool's
result in a ``<tool_response>``; it reads what Hugging Face templates read
(``tools=[{"type": "function", "function": {...}}]``, ``tool_calls`` with the
arguments as an object, ``tool_call_id``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, overload

from tokenwire.server.engines.simtok import BOS_ID, EOS_ID, SPECIAL_TOKENS, SimTokenizer


class FakeHFTokenizer:
    """The slice of ``PreTrainedTokenizerFast`` that TensorRT-LLM and its users touch."""

    name_or_path = "fake-model"
    model_max_length = 4096  # what a model's tokenizer_config.json would say
    eos_token_id = EOS_ID
    bos_token_id = BOS_ID
    pad_token_id = 0
    all_special_tokens: ClassVar[list[str]] = list(SPECIAL_TOKENS)
    # Its text is never read (the template is render_chat below); tests set it to None
    # for a model without one.
    chat_template: str | None = "fake-hermes"

    def __init__(self) -> None:
        self._sim = SimTokenizer()

    def __len__(self) -> int:
        return self._sim.vocab_size

    @property
    def vocab_size(self) -> int:
        return self._sim.vocab_size

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self._sim.encode(text, add_special_tokens=add_special_tokens)

    def decode(self, token_ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        # As HF's byte-level decode does: a character cut off at the end reads as U+FFFD.
        return self._sim.decode(token_ids, skip_special_tokens=skip_special_tokens)

    @overload
    def convert_ids_to_tokens(self, ids: int, skip_special_tokens: bool = False) -> str | None: ...
    @overload
    def convert_ids_to_tokens(
        self, ids: Sequence[int], skip_special_tokens: bool = False
    ) -> list[str | None]: ...
    def convert_ids_to_tokens(
        self, ids: int | Sequence[int], skip_special_tokens: bool = False
    ) -> str | list[str | None] | None:
        if isinstance(ids, int):
            return self._token(ids)
        return [
            self._token(i) for i in ids if not (skip_special_tokens and self._sim.is_special(i))
        ]

    def apply_chat_template(
        self,
        conversation: Sequence[Mapping[str, Any]],
        tools: Sequence[Mapping[str, Any]] | None = None,
        tokenize: bool = True,  # HF's default: token ids, unless asked for text
        add_generation_prompt: bool = False,
    ) -> str | list[int]:
        if not self.chat_template:  # as transformers says it
            raise ValueError(
                "Cannot use chat template functions because tokenizer.chat_template is not "
                "set and no template argument was passed!"
            )
        text = render_chat(conversation, tools or ())
        if add_generation_prompt:
            text += "<|assistant|>\n"
        return self.encode(text, add_special_tokens=False) if tokenize else text

    def _token(self, token_id: int) -> str | None:
        if not 0 <= token_id < self._sim.vocab_size:
            return None  # HF fast tokenizers answer None for an unknown id
        return self._sim.token_string(token_id)


def render_chat(
    conversation: Sequence[Mapping[str, Any]], tools: Sequence[Mapping[str, Any]]
) -> str:
    """The template: like most HF templates, it starts with the BOS token itself."""
    text = "<|bos|>"
    if tools:
        listed = "\n".join(json.dumps(tool["function"]) for tool in tools)
        text += f"<|system|>\n# Tools\n<tools>\n{listed}\n</tools><|end|>\n"
    for turn in conversation:
        body = str(turn["content"])
        for call in turn.get("tool_calls") or ():
            function = call["function"]
            # Templates write the arguments with tojson: an object, not a string.
            payload = {"name": function["name"], "arguments": function["arguments"]}
            body += f"\n<tool_call>\n{json.dumps(payload)}\n</tool_call>"
        if turn["role"] == "tool":
            call_id = turn.get("tool_call_id", "")
            body = f'<tool_response id="{call_id}">\n{body}\n</tool_response>'
        text += f"<|{turn['role']}|>\n{body}<|end|>\n"
    return text


class TransformersTokenizer:
    """``llm.tokenizer``: forwards to the HF tokenizer in ``.tokenizer``."""

    def __init__(self, tokenizer: FakeHFTokenizer) -> None:
        self.tokenizer = tokenizer

    @property
    def eos_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    @property
    def pad_token_id(self) -> int | None:
        return self.tokenizer.pad_token_id

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=add_special_tokens)

    def decode(self, token_ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        return self.tokenizer.decode(token_ids, skip_special_tokens=skip_special_tokens)

    def convert_ids_to_tokens(
        self, ids: Sequence[int], skip_special_tokens: bool = False
    ) -> list[str | None]:
        return self.tokenizer.convert_ids_to_tokens(ids, skip_special_tokens=skip_special_tokens)

    def apply_chat_template(
        self,
        conversation: Sequence[Mapping[str, Any]],
        tools: Sequence[Mapping[str, Any]] | None = None,
        tokenize: bool = True,
        add_generation_prompt: bool = False,
    ) -> str | list[int]:
        return self.tokenizer.apply_chat_template(
            conversation, tools, tokenize=tokenize, add_generation_prompt=add_generation_prompt
        )
