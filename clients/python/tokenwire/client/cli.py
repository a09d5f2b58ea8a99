"""The ``tokenwire`` command: generate, chat, info and tokenize against a tokenwire server.

    tokenwire generate "Once upon a time" --max-tokens 64 --stats
    tokenwire chat "What is gRPC?" --system "Answer in one line."
    tokenwire info --target 10.0.0.5:50051
    tokenwire tokenize "Hello world" --json

Text is printed as it arrives. Ctrl-C cancels the call (the server aborts the
generation) and exits 130. A failed call prints ``error: <CODE>: <details>`` to
stderr and exits 2 for an invalid request, 1 otherwise. ``--target`` and
``--api-key`` default to $TOKENWIRE_TARGET and $TOKENWIRE_API_KEY.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import cast

# Only the public API: the command is also an example of using it.
from tokenwire.client import (
    DEFAULT_TARGET,
    Chunk,
    Client,
    GenerateOptions,
    InvalidRequest,
    Message,
    Stream,
    TokenwireError,
)

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells report for Ctrl-C

Command = Callable[[Client, argparse.Namespace], int]


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] = os.environ) -> int:
    """Run the command line `argv` (default: sys.argv[1:]); returns the exit status."""
    args = _parser(environ).parse_args(argv)
    command: Command = args.command
    try:
        with Client(
            args.target,
            timeout=args.deadline,
            api_key=args.api_key or None,
            tls=args.tls,
            root_certificates=args.ca_cert,
        ) as client:
            return command(client, args)
    except KeyboardInterrupt:
        # Leaving the stream's loop and the client's block has cancelled the call; end
        # the line of text cut short, so that the shell prompt starts on its own line.
        if not args.json:
            print(flush=True)
        return EXIT_INTERRUPTED
    except TokenwireError as exc:
        print(f"error: {exc.code.name}: {exc.details}", file=sys.stderr)
        return EXIT_USAGE if isinstance(exc, InvalidRequest) else 1
    except BrokenPipeError:
        # The reader went away (`tokenwire generate ... | head`): stop quietly, and keep
        # Python from failing again when it flushes stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


def _generate(client: Client, args: argparse.Namespace) -> int:
    return _print_stream(client.generate(args.prompt, **_options(args)), args)


def _chat(client: Client, args: argparse.Namespace) -> int:
    messages: list[Message] = [("system", args.system)] if args.system else []
    messages.append(("user", args.message))
    return _print_stream(client.chat(messages, **_options(args)), args)


def _info(client: Client, args: argparse.Namespace) -> int:
    info = dataclasses.asdict(client.model_info())
    if args.json:
        print(json.dumps(info))
        return 0
    limits = info.pop("limits")
    rows = {**info, **{f"limits.{name}": value for name, value in limits.items()}}
    width = max(map(len, rows)) + 1
    for name, value in rows.items():
        print(f"{name + ':':<{width}} {value}")
    return 0


def _tokenize(client: Client, args: argparse.Namespace) -> int:
    result = client.tokenize(args.text, add_special_tokens=args.special_tokens)
    if args.json:
        print(json.dumps(dataclasses.asdict(result), ensure_ascii=False))
        return 0
    for token_id, token in zip(result.token_ids, result.tokens, strict=True):
        # JSON quoting makes spaces, newlines and byte tokens visible.
        print(f"{token_id}\t{json.dumps(token, ensure_ascii=False)}")
    return 0


# Flags whose argparse dest is the name of a generation option.
_GENERATION_FLAGS = (
    "max_tokens",
    "temperature",
    "top_p",
    "top_k",
    "seed",
    "stop",
    "n",
    "streaming_step",
    "ignore_eos",
    "model",
    "request_id",
)


def _options(args: argparse.Namespace) -> GenerateOptions:
    """The generation flags the user gave; the rest keep the server's defaults."""
    given = {name: getattr(args, name) for name in _GENERATION_FLAGS}
    return cast(
        GenerateOptions, {name: value for name, value in given.items() if value is not None}
    )


def _print_stream(stream: Stream, args: argparse.Namespace) -> int:
    """Print chunks as they arrive: text, or one JSON object per line with --json.

    With --n above 1 the sequences would interleave, so each is printed whole when it
    finishes, under a ``--- <index> ---`` line.
    """
    with stream:
        for chunk in stream:
            if args.json:
                print(json.dumps(dataclasses.asdict(chunk), ensure_ascii=False), flush=True)
            elif (args.n or 1) > 1:
                _print_finished_sequence(stream, chunk)
            else:
                sys.stdout.write(chunk.text)
                sys.stdout.flush()
    if not args.json and (args.n or 1) == 1:
        print(flush=True)
    if args.stats:
        print(_stats(stream), file=sys.stderr)
    return 0


def _print_finished_sequence(stream: Stream, chunk: Chunk) -> None:
    if chunk.finish_reason is not None:
        print(f"--- {chunk.index} ---\n{stream.texts[chunk.index]}", flush=True)


def _stats(stream: Stream) -> str:
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


def _parser(environ: Mapping[str, str]) -> argparse.ArgumentParser:
    connection = argparse.ArgumentParser(add_help=False)
    group = connection.add_argument_group("connection")
    group.add_argument(
        "--target",
        default=environ.get("TOKENWIRE_TARGET", DEFAULT_TARGET),
        help="server host:port (default: $TOKENWIRE_TARGET or %(default)s)",
    )
    group.add_argument(
        "--api-key",
        default=environ.get("TOKENWIRE_API_KEY"),
        help="bearer token sent as authorization metadata (default: $TOKENWIRE_API_KEY)",
    )
    group.add_argument("--tls", action="store_true", help="connect with TLS")
    group.add_argument(
        "--ca-cert",
        type=_read_file,
        metavar="PEM_FILE",
        help="root certificates to trust (implies --tls)",
    )
    group.add_argument(
        "--deadline", type=_positive_float, metavar="SECONDS", help="give up after this long"
    )
    group.add_argument("--json", action="store_true", help="print JSON, one object per line")

    sampling = argparse.ArgumentParser(add_help=False)
    group = sampling.add_argument_group("generation")
    group.add_argument("--max-tokens", type=_non_negative_int, metavar="N")
    group.add_argument("--temperature", type=float)
    group.add_argument("--top-p", type=float)
    group.add_argument("--top-k", type=_non_negative_int)
    group.add_argument("--seed", type=_non_negative_int)
    group.add_argument(
        "--stop", action="append", metavar="TEXT", help="stop at this text (repeatable)"
    )
    group.add_argument("--n", type=_non_negative_int, help="number of sequences")
    group.add_argument(
        "--streaming-step", type=_non_negative_int, metavar="N", help="tokens per message"
    )
    group.add_argument(
        "--ignore-eos", action="store_true", default=None, help="generate all --max-tokens"
    )
    group.add_argument("--model", help="must name the served model (see `tokenwire info`)")
    group.add_argument("--request-id")
    group.add_argument(
        "--stats", action="store_true", help="print usage, timing and tokens/s to stderr"
    )

    parser = argparse.ArgumentParser(
        prog="tokenwire", description="Stream tokens from a tokenwire server."
    )
    commands = parser.add_subparsers(title="commands", required=True)

    def command(
        name: str, run: Command, summary: str, *parents: argparse.ArgumentParser
    ) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=summary, description=summary, parents=[*parents])
        sub.set_defaults(command=run)
        return sub

    generate = command("generate", _generate, "stream a completion of PROMPT", connection, sampling)
    generate.add_argument("prompt")
    chat = command("chat", _chat, "stream the reply to MESSAGE", connection, sampling)
    chat.add_argument("message")
    chat.add_argument("--system", help="system prompt before the message")
    command("info", _info, "describe the served model and limits", connection)
    tokenize = command("tokenize", _tokenize, "show the tokens of TEXT", connection)
    tokenize.add_argument("text")
    tokenize.add_argument(
        "--no-special-tokens",
        dest="special_tokens",
        action="store_const",
        const=False,
        help="leave out special tokens such as beginning-of-sequence",
    )
    return parser


def _read_file(path: str) -> bytes:
    try:
        with open(path, "rb") as file:
            return file.read()
    except OSError as exc:
        raise argparse.ArgumentTypeError(f"cannot read {path}: {exc.strerror}") from exc


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative: {text}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text}")
    return value
