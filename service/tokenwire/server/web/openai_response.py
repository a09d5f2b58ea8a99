"""Engine deltas -> OpenAI's JSON: streamed chunks and whole answers, chat and completions.

One ``Answer`` per request renders every flush of the core into one
``chat.completion.chunk`` (or ``text_completion``) object, and the whole answer
for ``stream: false`` from the same parts, so the two cannot drift apart.
Shapes follow what the official SDKs parse:

- the first chunk of each choice carries ``role`` (chat), and those first chunks
  go out in index order 0, 1, ... before any content: the SDK's stream helper
  indexes its snapshot by ``choice.index`` and fails on any other order;
- ``finish_reason`` in OpenAI's values; a stop string or stop token ends with
  ``stop``, and the match goes in vLLM's ``stop_reason`` extension field;
- tool calls as ``delta.tool_calls`` (a call's first entry has its ``id``,
  ``type`` and ``function.name``; later ones ``function.arguments`` fragments, which
  the SDK appends by ``index``) and, whole, as ``message.tool_calls`` with
  ``content`` null when the answer is only calls;
- logprobs per chunk for that chunk's own tokens, in each API's shape;
- usage in the last chunk (``choices: []``) when ``include_usage`` is set.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import orjson

from ..engines.base import FinishReason, SequenceDelta, TokenLogprob, ToolCallDelta
from .openai_request import OpenAIRequest

FINISH_REASONS: dict[FinishReason, str] = {
    "stop": "stop",
    "length": "length",
    "stop_sequence": "stop",
    # OpenAI has no word for it; vLLM's. Only a whole answer cut by the server shows it.
    "cancelled": "abort",
    "tool_calls": "tool_calls",
}


def dumps(obj: object) -> bytes:
    return orjson.dumps(obj)


class Answer:
    """Renders one request's answer in OpenAI's shape, chunk by chunk or whole."""

    __slots__ = (
        "_calls",
        "_calls_only",
        "_chat",
        "_created",
        "_finishes",
        "_id",
        "_ids",
        "_logprobs",
        "_lps",
        "_model",
        "_n",
        "_object",
        "_offsets",
        "_started",
        "_texts",
        "_token_ids",
        "_tools",
        "_top",
    )

    def __init__(
        self, parsed: OpenAIRequest, request_id: str, model: str, n: int, created: int = 0
    ) -> None:
        self._chat = parsed.kind == "chat"
        self._id = ("chatcmpl-" if self._chat else "cmpl-") + request_id
        self._object = "chat.completion.chunk" if self._chat else "text_completion"
        # A resumed stream's chunks say when the request was made (docs/resume.md).
        self._created = created or int(time.time())
        self._model = model
        self._n = n
        self._logprobs = parsed.logprobs
        self._top = parsed.top_logprobs
        self._started = False
        self._offsets = [0] * n  # token characters so far, for completions' text_offset
        self._texts: list[list[str]] = [[] for _ in range(n)]
        self._finishes: list[dict[str, Any]] = [{} for _ in range(n)]
        self._lps: list[list[TokenLogprob]] = [[] for _ in range(n)]  # whole answers only
        self._token_ids = parsed.token_ids
        self._ids: list[list[int]] = [[] for _ in range(n)]  # whole answers only
        self._calls: list[list[dict[str, Any]]] = [[] for _ in range(n)]  # whole answers only
        # A forced call (tool_choice required or a name) is all the answer: no content.
        req = parsed.request
        self._tools = bool(req.tools)
        self._calls_only = self._tools and req.tool_choice not in ("", "auto", "none")

    # --- streaming ---------------------------------------------------------------

    def opening(self) -> list[bytes]:
        """Chunks that go before the first content: each chat choice's role, in order."""
        if self._started:
            return []
        self._started = True
        if not self._chat:
            return []
        return [
            self._chunk(
                [
                    {
                        "index": i,
                        "delta": {
                            "role": "assistant",
                            "content": None if self._calls_only else "",
                        },
                        "logprobs": None,
                        "finish_reason": None,
                    }
                ]
            )
            for i in range(self._n)
        ]

    def chunk(self, index: int, deltas: Sequence[SequenceDelta]) -> bytes:
        """One streamed chunk for one flush of one choice."""
        return self._chunk([self._choice(index, deltas, streaming=True)])

    def says_something(self, deltas: Sequence[SequenceDelta]) -> bool:
        """Whether a flush has anything for this client: not so for the tokens of a
        tool call's markup, or of a character still incomplete, when it asked for
        neither logprobs nor token ids (vLLM sends no chunk for those either)."""
        if self._logprobs or self._token_ids:
            return True
        if len(deltas) == 1:  # most flushes
            d = deltas[0]
            return bool(d.text or d.tool_calls or d.finish_reason)
        return any(d.text or d.tool_calls or d.finish_reason for d in deltas)

    def usage_chunk(self, usage: dict[str, Any]) -> bytes:
        body = self._base(self._object)
        body["choices"] = []
        body["usage"] = usage
        return dumps(body)

    def _chunk(self, choices: list[dict[str, Any]]) -> bytes:
        body = self._base(self._object)
        body["choices"] = choices
        return dumps(body)

    # --- whole answers -----------------------------------------------------------

    def add(self, index: int, deltas: Sequence[SequenceDelta]) -> None:
        """Collect a flush for the whole answer (``stream: false``)."""
        self._choice(index, deltas, streaming=False)

    def whole(self, usage: dict[str, Any]) -> bytes:
        body = self._base("chat.completion" if self._chat else "text_completion")
        choices = []
        for i in range(self._n):
            text = "".join(self._texts[i])
            choice: dict[str, Any] = {"index": i}
            if self._chat:
                calls = self._calls[i]
                # Only calls: content null, as OpenAI answers them.
                message: dict[str, Any] = {"role": "assistant", "content": text or None}
                if calls:
                    message["tool_calls"] = calls
                else:
                    message["content"] = text
                choice["message"] = message
            else:
                choice["text"] = text
            choice["logprobs"] = self._logprobs_body(self._lps[i], 0) if self._logprobs else None
            if self._token_ids:
                choice["token_ids"] = self._ids[i]
            choice.update(self._finishes[i] or {"finish_reason": None})
            choices.append(choice)
        body["choices"] = choices
        body["usage"] = usage
        return dumps(body)

    # --- parts -------------------------------------------------------------------

    def _base(self, obj: str) -> dict[str, Any]:
        return {"id": self._id, "object": obj, "created": self._created, "model": self._model}

    def _choice(
        self, index: int, deltas: Sequence[SequenceDelta], *, streaming: bool
    ) -> dict[str, Any]:
        last = deltas[-1]
        text = last.text if len(deltas) == 1 else "".join(d.text for d in deltas)
        choice: dict[str, Any] = {"index": index}
        if streaming:
            if self._chat:
                delta: dict[str, Any] = {"content": text} if text else {}
                if self._tools:  # else no delta carries calls: nothing to look for
                    calls = [_call_delta(c) for d in deltas for c in d.tool_calls]
                    if calls:
                        delta["tool_calls"] = calls
                choice["delta"] = delta
            else:
                choice["text"] = text
            if self._token_ids:
                choice["token_ids"] = [t for d in deltas for t in d.token_ids]
            if self._logprobs:
                lps = [lp for d in deltas for lp in d.logprobs]
                choice["logprobs"] = self._logprobs_body(lps, self._offsets[index])
                # Offsets count the tokens' own strings, in chunks as in whole answers.
                self._offsets[index] += sum(len(lp.token) for lp in lps)
            else:
                choice["logprobs"] = None
        else:
            self._texts[index].append(text)
            for c in (c for d in deltas for c in d.tool_calls):
                _add_call(self._calls[index], c)
            if self._token_ids:
                self._ids[index].extend(t for d in deltas for t in d.token_ids)
            if self._logprobs:
                self._lps[index].extend(lp for d in deltas for lp in d.logprobs)
        if last.finish_reason is not None:
            finish: dict[str, Any] = {"finish_reason": FINISH_REASONS[last.finish_reason]}
            finish["stop_reason"] = last.stop_match
            self._finishes[index] = finish
            choice.update(finish)
        elif streaming:
            choice["finish_reason"] = None
        return choice

    def _logprobs_body(self, lps: Sequence[TokenLogprob], offset: int) -> dict[str, Any]:
        if self._chat:
            return {
                "content": [
                    {
                        "token": lp.token,
                        "logprob": lp.logprob,
                        "bytes": list(lp.token.encode()),
                        "top_logprobs": [
                            {
                                "token": t.token,
                                "logprob": t.logprob,
                                "bytes": list(t.token.encode()),
                            }
                            for t in lp.top[: self._top]
                        ],
                    }
                    for lp in lps
                ]
            }
        offsets = []
        for lp in lps:
            offsets.append(offset)
            offset += len(lp.token)
        return {
            "tokens": [lp.token for lp in lps],
            "token_logprobs": [lp.logprob for lp in lps],
            "top_logprobs": [{t.token: t.logprob for t in lp.top[: self._top]} for lp in lps]
            if self._top
            else None,
            "text_offset": offsets,
        }


def _call_delta(c: ToolCallDelta) -> dict[str, Any]:
    """A call's streamed part: the first carries id, type and name."""
    if c.id:
        function = {"name": c.name, "arguments": c.arguments}
        return {"index": c.index, "id": c.id, "type": "function", "function": function}
    return {"index": c.index, "function": {"arguments": c.arguments}}


def _add_call(calls: list[dict[str, Any]], c: ToolCallDelta) -> None:
    if c.index >= len(calls):
        calls.append(
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": ""}}
        )
    calls[c.index]["function"]["arguments"] += c.arguments


def usage_body(prompt_tokens: int, completion_tokens: int, cached: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": cached},
    }
