"""``tokenwire-server`` as the soak runs it: the same serve(), plus a count of the
event loop's tasks written to a file every half second (``SOAK_TASKS_FILE``), which
nothing outside the process could see otherwise.

    SOAK_TASKS_FILE=/tmp/tasks python -m bench.soak_server --port 0 ...
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import uvloop

from tokenwire.server import flags, logs
from tokenwire.server.app import serve

INTERVAL_S = 0.5


async def _count_tasks(path: Path) -> None:
    partial = path.with_suffix(".tmp")
    while True:
        # The count includes this task itself; the soak compares counts, not totals.
        partial.write_text(str(len(asyncio.all_tasks())))
        partial.replace(path)  # readers never see a half-written number
        await asyncio.sleep(INTERVAL_S)


async def _run(argv: list[str]) -> None:
    settings = flags.parse(argv)
    logs.configure(settings.log_level, settings.log_json)
    counter = asyncio.create_task(_count_tasks(Path(os.environ["SOAK_TASKS_FILE"])))
    try:
        await serve(settings)
    finally:
        counter.cancel()


def main() -> None:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(_run(sys.argv[1:]))


if __name__ == "__main__":
    main()
