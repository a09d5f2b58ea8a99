"""How the ``tokenwire`` command prints a stream: text, tool calls, JSON lines, log
probabilities, stats.

Text and log probabilities go to stdout, so that they can be piped; ``--stats`` go
to stderr, so that they never mix with the text.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Sequence

from tokenwire.client import (
    Chunk,
    Stream,
    TokenLogprob,
    ToolCall,
    ToolCallAccumulator,
    ToolCallDelta,
)


def print_stream(
    stream: Stream, *, sequences: int, json_lines: bool, logprobs: bool, stats: bool
) -> bool:
    """Print `stream` as it arrives; returns False when Ctrl-C cut it short.

    One sequence is printed as it arrives, each tool call on a line of its own
    (``tool call NAME (ID): ``, then its arguments as they come). Several sequences
    would interleave, so each is printed whole when it finishes, under a
    ``--- <index> ---`` line. With `logprobs`, a table of each sequence's tokens
    follows its text.
    """
    received: dict[int, list[Chunk]] = {}
    calls = ToolCallAccumulator()
    as_it_arrives = not json_lines and sequences <= 1
    line_open = False  # text written since the last newline (a call starts a new line)
    finished = True
    try:
        with stream:
            for chunk in stream:
                received.setdefault(chunk.index, []).append(chunk)
                calls.add(chunk)
                if json_lines:
                    print(json.dumps(dataclasses.asdict(chunk), ensure_ascii=False), flush=True)
                elif as_it_arrives:
                    line_open = _write_live(chunk, line_open)
                elif chunk.finish_reason is not None:
                    text = stream.texts[chunk.index]
                    made = calls.calls(chunk.index)
                    lines = [f"--- {chunk.index} ---"]
                    if text or not made:  # no empty line above an answer of calls only
                        lines.append(text)
                    lines.extend(_call_header(call) + call.arguments for call in made)
                    print("\n".join(lines), flush=True)
                    if logprobs:
                        _print_logprobs(received[chunk.index])
    except KeyboardInterrupt:
        # Leaving the block has cancelled the call; what arrived before is still
        # worth reporting.
        finished = False
    if as_it_arrives:
        print(flush=True)  # the text has no newline of its own at the end
        if logprobs:
            _print_logprobs(received.get(0, []))
    if stats:
        print(_stats(stream), file=sys.stderr, flush=True)
    return finished


def _write_live(chunk: Chunk, line_open: bool) -> bool:
    """Write a chunk's text and tool-call deltas; returns whether a line is left open."""
    parts = [chunk.text]
    line_open = line_open if not chunk.text else not chunk.text.endswith("\n")
    for delta in chunk.tool_calls:
        if delta.name:  # a call's first delta
            parts.append(("\n" if line_open else "") + _call_header(delta))
            line_open = True
        parts.append(delta.arguments)
    sys.stdout.write("".join(parts))
    sys.stdout.flush()
    return line_open


def _call_header(call: ToolCall | ToolCallDelta) -> str:
    return f"tool call {call.name}" + (f" ({call.id})" if call.id else "") + ": "


def _print_logprobs(chunks: Sequence[Chunk]) -> None:
    """A table: each token (JSON-quoted, so spaces and newlines show), its logprob, and
    the alternatives when --top-logprobs asked for them."""
    entries = [entry for chunk in chunks for entry in chunk.logprobs]
    if not entries:
        return
    tokens = [_quoted(entry.token) for entry in entries]
    width = max(len("token"), *map(len, tokens))
    header = f"{'token':<{width}}  {'logprob':>8}"
    lines = [header + ("  alternatives" if entries[0].top else "")]
    lines.extend(
        f"{token:<{width}}  {entry.logprob:8.3f}{_alternatives(entry)}"
        for token, entry in zip(tokens, entries, strict=True)
    )
    cumulative = [c.cumulative_logprob for c in chunks if c.cumulative_logprob is not None]
    if cumulative:
        lines.append(f"{'total':<{width}}  {cumulative[-1]:8.3f}")
    print("\n" + "\n".join(lines), flush=True)


def _alternatives(entry: TokenLogprob) -> str:
    return "".join(f"  {_quoted(top.token)} {top.logprob:.3f}" for top in entry.top)


def _quoted(token: str) -> str:
    return json.dumps(token, ensure_ascii=False)


def _stats(stream: Stream) -> str:
    """One line of key=value pairs; usage and timing only come with a finished call."""
    parts = [
        f"finish_reason={stream.finish_reason}",
        f"tokens={stream.token_count}",
        f"tokens_per_second={stream.tokens_per_second:.1f}",
    ]
    if stream.time_to_first_token is not None:
        parts.append(f"client_ttft_ms={stream.time_to_first_token * 1000:.1f}")
    if stream.usage is not None:
        parts.append(f"prompt_tokens={stream.usage.prompt_tokens}")
        parts.append(f"cached_prompt_tokens={stream.usage.cached_prompt_tokens}")
    if stream.timing is not None:
        parts.append(f"queue_ms={stream.timing.queue_ms:.1f}")
        parts.append(f"ttft_ms={stream.timing.time_to_first_token_ms:.1f}")
        parts.append(f"total_ms={stream.timing.total_ms:.1f}")
    return " ".join(parts)
