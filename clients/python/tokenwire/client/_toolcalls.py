"""`ToolCallAccumulator`: whole tool calls out of streamed chunks."""

from __future__ import annotations

from tokenwire.client._models import Chunk, ToolCall


class _Call:
    """One call of one sequence, as far as it has streamed."""

    __slots__ = ("arguments", "id", "name")

    def __init__(self) -> None:
        self.id = ""
        self.name = ""
        # Joined on demand, like a stream's text.
        self.arguments: list[str] = []


class ToolCallAccumulator:
    """Whole tool calls from the deltas of `Chunk.tool_calls`, per sequence index.

        calls = ToolCallAccumulator()
        for chunk in client.chat(messages, tools=tools, tool_choice="required"):
            calls.add(chunk)
        for call in calls.calls():        # sequence 0; calls(i) for n > 1
            print(call.name, call.parsed_arguments())

    A stream keeps one itself (`Stream.tool_calls`, `collect().tool_calls`): this is
    for chunks that come some other way, such as an ``on_token`` callback. Calls
    read before their sequence ends may have partial arguments.
    """

    __slots__ = ("_sequences",)

    def __init__(self) -> None:
        self._sequences: dict[int, dict[int, _Call]] = {}

    def add(self, chunk: Chunk) -> None:
        """Take in a chunk's tool-call deltas (a chunk without any changes nothing)."""
        for delta in chunk.tool_calls:
            calls = self._sequences.setdefault(chunk.index, {})
            call = calls.setdefault(delta.index, _Call())
            call.id = delta.id or call.id
            call.name = delta.name or call.name
            call.arguments.append(delta.arguments)

    def calls(self, index: int = 0) -> tuple[ToolCall, ...]:
        """The calls of sequence `index` so far, in the order the model made them."""
        calls = self._sequences.get(index, {})
        return tuple(
            ToolCall(call.id, call.name, "".join(call.arguments))
            for _, call in sorted(calls.items())
        )
