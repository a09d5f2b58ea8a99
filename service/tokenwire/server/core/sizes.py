"""Whether a Complete answer fits in one message (``--max-message-bytes``).

A Complete answer is a single message, and grpc will not send one over the
limit (grpc clients would not take it either: 4 MiB by default), but only once
the engine has done all the work, minutes of it for ``n=16`` long sequences with
logprobs. So the servicer checks three times, and no check refuses an answer
that would have fitted:

- before the engine starts, the least the answer is sure to take: the tokens
  each sequence must produce (all of ``max_tokens`` when nothing can stop it
  sooner, else ``min_tokens``), at the fewest bytes a token can encode to. Over
  the limit: INVALID_ARGUMENT, since the request as sent can never succeed;
- while it grows, a running count that never exceeds the encoded size: once past
  the limit, RESOURCE_EXHAUSTED (grpc's own code for a message too large), and
  the engine request is aborted on the spot;
- at the end, the exact encoded size.
"""

from __future__ import annotations

from collections.abc import Sequence

from tokenwire.v1 import generation_pb2 as pb

from ..engines.base import GenerationRequest, SequenceDelta
from .errors import AnswerTooLarge, InvalidArgument

_ADVICE = (
    "lower sampling.n, stopping.max_tokens or output.top_logprobs, or stream the answer "
    "with Generate"
)


def refuse_unfit(request: GenerationRequest, limit: int) -> None:
    """InvalidArgument if the answer to ``request`` is sure to exceed ``limit`` bytes."""
    sure = request.max_tokens if _runs_to_the_end(request) else request.min_tokens
    least = request.sampling.n * sure * _least_token_bytes(request)
    if least > limit:
        field = "stopping.max_tokens" if _runs_to_the_end(request) else "stopping.min_tokens"
        raise InvalidArgument(
            field,
            f"the answer would take at least {least} bytes ({request.sampling.n} x {sure} "
            f"tokens), more than the {limit}-byte message limit: {_ADVICE}",
        )


class AnswerSize:
    """A running lower bound on the size of a Complete answer being built."""

    __slots__ = ("bytes", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.bytes = 0

    def add(self, delta: SequenceDelta, logprobs: Sequence[pb.TokenLogprob]) -> None:
        # No more than the delta adds to the encoding: a character takes at least a
        # byte, a token id too, and each logprob entry its size plus a tag and a length.
        self.bytes += len(delta.text) + len(delta.token_ids)
        for call in delta.tool_calls:
            self.bytes += len(call.id) + len(call.name) + len(call.arguments)
        for entry in logprobs:
            self.bytes += entry.ByteSize() + 2
        if self.bytes > self.limit:
            raise self._too_large()

    def check(self, answer: pb.CompleteResponse) -> None:
        """The exact size, once the answer is whole."""
        if answer.ByteSize() > self.limit:
            raise self._too_large()

    def _too_large(self) -> AnswerTooLarge:
        return AnswerTooLarge(
            f"the answer grew past the {self.limit}-byte message limit: {_ADVICE}"
        )


def _runs_to_the_end(request: GenerationRequest) -> bool:
    """Nothing but max_tokens can end a sequence (max_tokens fits the context)."""
    return request.ignore_eos and not request.stop and not request.stop_token_ids


def _least_token_bytes(request: GenerationRequest) -> int:
    least = 1  # its id in the packed token_ids
    if request.logprobs:
        least += 2  # its TokenLogprob entry: a tag and a length
    if request.top_logprobs:
        # Each of the alternatives (top_logprobs of them, as the contract says) is an
        # entry (2) with a logprob (5), except that one logprob may be 0, left out.
        least += 7 * request.top_logprobs - 5
    return least
