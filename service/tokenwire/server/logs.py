"""Log set-up: plain lines for people, or one JSON object per line for collectors.

    logs.configure("info", as_json=True)   # at start-up, once
    ...
    logs.close()                           # at exit

With JSON, output that bypasses logging (grpc's C core, native engine code) is
wrapped into JSON records too: see ``native_logs.py``.
"""

from __future__ import annotations

import json
import logging
import sys
from contextvars import ContextVar
from typing import Any, TextIO

from . import native_logs
from .core.tracing import current_trace_id

# The request a task is serving: grpc.aio runs each call in its own task, so
# setting it once per call tags every line logged on that call's behalf.
request_id: ContextVar[str | None] = ContextVar("tokenwire_request_id", default=None)

_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


class RequestContext(logging.Filter):
    """Adds request_id and trace_id to each record (unless the caller set them)."""

    def filter(self, record: logging.LogRecord) -> bool:
        rid = getattr(record, "request_id", None) or request_id.get()
        record.request_id = rid
        if not hasattr(record, "trace_id"):
            record.trace_id = current_trace_id() if rid else None
        record.context = f" [request_id={rid}]" if rid else ""
        return True


class JsonFormatter(logging.Formatter):
    """Fields a log pipeline can index: time, level, logger, message, and extras."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update(
            (k, v)
            for k, v in record.__dict__.items()
            if k not in _STANDARD and k != "context" and v is not None
        )
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure(level: str, as_json: bool) -> None:
    handler: logging.StreamHandler[TextIO]
    if as_json:
        handler = logging.StreamHandler(native_logs.route(level))
        handler.setFormatter(JsonFormatter())
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s%(context)s")
        )
    handler.addFilter(RequestContext())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def close() -> None:
    """At exit: flush the logs, and the native output still on its way (JSON only)."""
    for handler in logging.getLogger().handlers:
        handler.flush()
    native_logs.restore()
