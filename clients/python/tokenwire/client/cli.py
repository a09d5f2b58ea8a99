"""The ``tokenwire`` command: generate, chat, info and tokenize against a tokenwire server.

    tokenwire generate "Once upon a time" --max-tokens 64 --stats
    echo "Once upon a time" | tokenwire generate - --logprobs
    tokenwire chat "What is gRPC?" --system "Answer in one line."
    tokenwire generate "A person:" --json-schema person.schema.json
    tokenwire chat "Weather in Paris?" --tools tools.json --tool-choice required
    tokenwire --target 10.0.0.5:50051 info
    tokenwire tokenize "Hello world" --json

Text is printed as it arrives, tool calls as ``tool call NAME (ID): ARGUMENTS``.
Ctrl-C cancels the call (the server aborts the generation), prints the ``--stats``
of what arrived when asked for, and exits 130.
A failed call prints ``error: <CODE>: <details>`` to stderr and exits 2 for an
invalid request, 1 otherwise. The connection flags go before or after the command;
``--target`` and ``--api-key`` default to $TOKENWIRE_TARGET and $TOKENWIRE_API_KEY.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import json
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import cast

# Only the public API: the command is also an example of using it.
from tokenwire.client import (
    DEFAULT_TARGET,
    Client,
    GenerateOptions,
    InvalidRequest,
    Message,
    Stream,
    TokenwireError,
)
from tokenwire.client._cli_output import print_stream
from tokenwire.client._cli_structured import add_structured_flags, structured_options
from tokenwire.client._stream import DEFAULT_RESUME_GRACE_S

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells report for Ctrl-C

Command = Callable[[Client, argparse.Namespace], int]


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] = os.environ) -> int:
    """Run the command line `argv` (default: sys.argv[1:]); returns the exit status."""
    parser = _parser(environ)
    args = parser.parse_args(argv)
    if (args.tls_client_cert is None) != (args.tls_client_key is None):
        parser.error("--tls-client-cert and --tls-client-key go together")
    command: Command = args.command
    try:
        with Client(
            args.target,
            timeout=args.deadline,
            api_key=args.api_key or None,
            tls=args.tls,
            root_certificates=args.ca_cert,
            certificate_chain=args.tls_client_cert,
            private_key=args.tls_client_key,
        ) as client:
            return command(client, args)
    except KeyboardInterrupt:
        # Leaving the client's block has cancelled any call; end the line of text cut
        # short, so that the shell prompt starts on its own line.
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
    # Like "$(cat file)" in a shell, drop the newline(s) that end the input.
    prompt = sys.stdin.read().rstrip("\n") if args.prompt == "-" else args.prompt
    return _print(
        client.generate(prompt, resume_grace_s=_resume_grace(args), **_options(args)), args
    )


def _chat(client: Client, args: argparse.Namespace) -> int:
    messages: list[Message] = [("system", args.system)] if args.system else []
    messages.append(("user", args.message))
    return _print(client.chat(messages, resume_grace_s=_resume_grace(args), **_options(args)), args)


def _print(stream: Stream, args: argparse.Namespace) -> int:
    finished = print_stream(
        stream,
        sequences=args.n or 1,
        json_lines=args.json,
        logprobs=bool(args.logprobs or args.top_logprobs),
        stats=args.stats,
    )
    return 0 if finished else EXIT_INTERRUPTED


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
    "min_tokens",
    "temperature",
    "top_p",
    "top_k",
    "seed",
    "stop",
    "stop_token_ids",
    "n",
    "logprobs",
    "top_logprobs",
    "streaming_step",
    "ignore_eos",
    "model",
    "request_id",
)


def _resume_grace(args: argparse.Namespace) -> float | None:
    """--resumable / --resume-grace-s: the stream survives a broken connection."""
    grace: float | None = args.resume_grace_s
    if grace is None and args.resumable:
        grace = DEFAULT_RESUME_GRACE_S
    return grace


def _options(args: argparse.Namespace) -> GenerateOptions:
    """The generation flags the user gave; the rest keep the server's defaults."""
    given = {name: getattr(args, name) for name in _GENERATION_FLAGS}
    options = {name: value for name, value in given.items() if value is not None}
    return cast(GenerateOptions, {**options, **structured_options(args)})


def _add_global_flags(
    parser: argparse.ArgumentParser, environ: Mapping[str, str], *, defaults: bool
) -> None:
    """The flags of every command, given before the command's name or after it.

    They are added to the top-level parser (`tokenwire --target X info`) with their
    defaults, and to each command (`tokenwire info --target X`) without: argparse
    copies every value of a command's namespace over the top-level one, so a default
    there would overwrite a flag given before the command. Help texts spell the
    defaults out, as ``%(default)s`` would show the commands' placeholder.
    """

    def default(value: object) -> object:
        return value if defaults else argparse.SUPPRESS

    group = parser.add_argument_group("connection")
    group.add_argument(
        "--target",
        default=default(environ.get("TOKENWIRE_TARGET", DEFAULT_TARGET)),
        help=f"server host:port (default: $TOKENWIRE_TARGET, else {DEFAULT_TARGET})",
    )
    group.add_argument(
        "--api-key",
        default=default(environ.get("TOKENWIRE_API_KEY")),
        help="bearer token sent as authorization metadata (default: $TOKENWIRE_API_KEY, else none)",
    )
    group.add_argument(
        "--tls",
        action="store_true",
        default=default(False),
        help="connect with TLS, trusting the system's root certificates (default: "
        "plaintext, unless a certificate flag below is given)",
    )
    for flag, what in (
        ("--ca-cert", "root certificates to trust instead of the system's"),
        ("--tls-client-cert", "client certificate chain to present, for mutual TLS"),
        ("--tls-client-key", "private key of --tls-client-cert"),
    ):
        group.add_argument(
            flag,
            type=_read_file,
            metavar="PEM_FILE",
            default=default(None),
            help=f"{what}; implies --tls (default: none)",
        )
    group.add_argument(
        "--deadline",
        type=_positive_float,
        metavar="SECONDS",
        default=default(None),
        help="give up on the call after this long (default: no deadline)",
    )
    group = parser.add_argument_group("output")
    group.add_argument(
        "--json",
        action="store_true",
        default=default(False),
        help="print JSON, one object per line (default: text)",
    )


def _add_generation_flags(parser: argparse.ArgumentParser) -> None:
    """Generation options; each left out keeps the server's default (None: not sent)."""
    group = parser.add_argument_group("generation")
    add = group.add_argument
    add(
        "--max-tokens",
        type=_non_negative_int,
        metavar="N",
        help="most tokens per sequence (default: the server's, limits.default_max_tokens "
        "in `tokenwire info`)",
    )
    add(
        "--min-tokens",
        type=_non_negative_int,
        metavar="N",
        help="fewest tokens before end-of-sequence or a stop may end a sequence (default: 0)",
    )
    add("--temperature", type=float, help="0 is greedy, up to 2 (default: the model's)")
    add("--top-p", type=float, help="nucleus sampling, in (0, 1] (default: the model's)")
    add("--top-k", type=_non_negative_int, help="0 turns it off (default: the model's)")
    add("--seed", type=_non_negative_int, help="the same seed gives the same text (default: none)")
    add(
        "--stop",
        action="append",
        metavar="TEXT",
        help="stop at this text, left out of the output; repeatable (default: none)",
    )
    add(
        "--stop-token-id",
        dest="stop_token_ids",
        action="append",
        type=_non_negative_int,
        metavar="ID",
        help="stop at this token id (see `tokenwire tokenize`); repeatable (default: none)",
    )
    add("--n", type=_non_negative_int, help="number of sequences (default: 1)")
    add(
        "--ignore-eos",
        action="store_true",
        default=None,
        help="go on past end-of-sequence, up to --max-tokens or a stop (default: off)",
    )
    add(
        "--logprobs",
        action="store_true",
        default=None,
        help="print each token's log probability after the text (default: off)",
    )
    add(
        "--top-logprobs",
        type=_non_negative_int,
        metavar="N",
        help="also print the N most likely tokens at each position; implies --logprobs "
        "(default: 0)",
    )
    add(
        "--streaming-step",
        type=_non_negative_int,
        metavar="N",
        help="tokens per message; 0 sends whatever is ready (default: 1)",
    )
    add("--model", help="must name the served model (default: the served model)")
    add("--request-id", help="echoed on every response (default: one the server assigns)")
    add(
        "--resumable",
        action="store_true",
        help="when the connection breaks, resume the stream where it was (the server keeps "
        f"it {DEFAULT_RESUME_GRACE_S:g} s; docs/resume.md) (default: off)",
    )
    add(
        "--resume-grace-s",
        type=_positive_float,
        metavar="S",
        help="--resumable, with the server keeping the stream this long (default: off)",
    )
    add(
        "--stats",
        action="store_true",
        help="print usage, timing and tokens/s to stderr at the end, or at Ctrl-C (default: off)",
    )


def _parser(environ: Mapping[str, str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tokenwire", description="Stream tokens from a tokenwire server."
    )
    parser.add_argument("--version", action="version", version=f"tokenwire {_version()}")
    _add_global_flags(parser, environ, defaults=True)
    commands = parser.add_subparsers(title="commands", required=True)

    def command(name: str, run: Command, summary: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=summary, description=summary)
        _add_global_flags(sub, environ, defaults=False)
        sub.set_defaults(command=run)
        return sub

    generate = command("generate", _generate, "stream a completion of PROMPT")
    generate.add_argument("prompt", help="the prompt; - reads it from standard input")
    _add_generation_flags(generate)
    add_structured_flags(generate, tools=False)
    chat = command("chat", _chat, "stream the reply to MESSAGE")
    chat.add_argument("message")
    chat.add_argument("--system", help="system prompt before the message (default: none)")
    _add_generation_flags(chat)
    add_structured_flags(chat, tools=True)
    command("info", _info, "describe the served model and limits")
    tokenize = command("tokenize", _tokenize, "show the tokens of TEXT")
    tokenize.add_argument("text")
    tokenize.add_argument(
        "--no-special-tokens",
        dest="special_tokens",
        action="store_const",
        const=False,
        help="leave out special tokens such as beginning-of-sequence (default: the "
        "server's, which adds them)",
    )
    return parser


def _version() -> str:
    try:
        return importlib.metadata.version("tokenwire")
    except importlib.metadata.PackageNotFoundError:
        # Run from a source tree on PYTHONPATH, without installing the distribution.
        return "(not installed)"


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
