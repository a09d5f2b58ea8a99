"""``tokenwire-server``: build the settings once, set up logs, run the server.

Exit status: 0 after a clean stop; 2 when the settings cannot work (a bad value,
a port that cannot be listened on), with one line per problem naming the flag;
1 when the engine cannot start. No traceback for either.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Callable, Sequence

from . import flags, logs
from .app import serve
from .engines.base import EngineError
from .settings import BadSettings

log = logging.getLogger("tokenwire.server")


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency off Windows
        return None
    return uvloop.new_event_loop


def main(argv: Sequence[str] | None = None) -> int:
    try:
        settings = flags.parse(sys.argv[1:] if argv is None else argv)
    except BadSettings as error:
        _fail(error.problems, as_json=False)
        return 2
    except SystemExit as done:  # --help, --version
        return int(done.code or 0)
    logs.configure(settings.log_level, settings.log_json)
    try:
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            runner.run(serve(settings))
    except BadSettings as error:
        _fail(error.problems, settings.log_json)
        return 2
    except (EngineError, OSError) as error:
        _fail((f"cannot start: {error}",), settings.log_json)
        return 1
    finally:
        logs.close()
    return 0


def _fail(problems: Sequence[str], as_json: bool) -> None:
    for problem in problems:
        if as_json:
            log.error(problem)
        else:
            print(f"{flags.PROG}: {problem}", file=sys.stderr)
