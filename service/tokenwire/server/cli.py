"""``tokenwire-server``: build the settings once, set up logs, run the server."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Sequence

from pydantic import ValidationError
from pydantic_settings import CliApp

from .app import serve
from .engines.base import EngineError
from .logs import configure
from .settings import Settings


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency off Windows
        return None
    return uvloop.new_event_loop


def main(argv: Sequence[str] | None = None) -> int:
    try:
        settings = CliApp.run(Settings, cli_args=list(sys.argv[1:] if argv is None else argv))
    except ValidationError as error:
        print(f"tokenwire-server: invalid settings:\n{error}", file=sys.stderr)
        return 2
    configure(settings.log_level, settings.log_json)
    try:
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            runner.run(serve(settings))
    except (EngineError, OSError) as error:
        print(f"tokenwire-server: cannot start: {error}", file=sys.stderr)
        return 1
    return 0
