"""With ``--log-json``, whatever bypasses Python logging still comes out as JSON lines.

grpc's C core writes its own lines to file descriptor 2 (``I1202 03:43:34.509828
11561 ssl_transport_security.cc:2563] Handshake failed ...``), and so do engines'
C++ runtimes, CUDA, and the interpreter itself (tracebacks, "Exception ignored").
One such line breaks a collector that expects one JSON object per line.

    stream = native_logs.route("info")   # fd 2 now feeds the wrapper; log to ``stream``
    ...
    native_logs.restore()                # at exit: the wrapper drains and ends

``route`` points fd 2 at a pipe read by a small child process (this module run
with ``-m``), which writes each line to the real stderr as a JSON record: grpc's
and TensorRT-LLM's lines with their own level (below ``--log-level`` dropped),
anything else as a ``warning`` from logger ``stderr``. Python's own handler
writes to a copy of the real stderr, so its records are not wrapped twice.

Why not silence grpc (GRPC_VERBOSITY=NONE before it is imported)? That hides
real errors (a TLS handshake that fails, a certificate reload gone wrong), and
it covers grpc only: CUDA and TensorRT-LLM print regardless. Why a child process
rather than a thread? A thread needs the GIL to drain the pipe: while Python is
busy, a full pipe would block the C core's writer threads inside grpc. And when
the process dies hard (an abort in native code), the child still drains and
writes the last lines, usually the ones that say why; a thread would die with it.
The child runs in its own session, so a Ctrl-C at the terminal does not stop it
before the server's last words; it ends when the pipe closes, that is when the
server (and anything it started) has exited.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from typing import TextIO

_LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40, "critical": 50}
# absl / grpc C core: severity letter, MMDD, time, thread id, file:line] message.
_GRPC = re.compile(r"^([DIWEF])\d{4} \d\d:\d\d:\d\d\.\d+\s+\d+ ([^\]\s]+)\] ?(.*)$")
_GRPC_LEVELS = {"D": "debug", "I": "info", "W": "warning", "E": "error", "F": "critical"}
# TensorRT-LLM's C++ and Python loggers: [TensorRT-LLM][WARNING] message.
_TRTLLM = re.compile(r"^\[TensorRT-LLM\]\[([A-Z_]+)\] ?(.*)$")
_TRTLLM_LEVELS = {"verbose": "debug", "internal_error": "critical"}

_child: subprocess.Popen[bytes] | None = None
_real_stderr: int | None = None


def route(level: str) -> TextIO:
    """Wrap fd 2 from now on; returns a stream on the real stderr for JSON records."""
    global _child, _real_stderr
    sys.stderr.flush()
    _real_stderr = os.dup(2)
    read, write = os.pipe()
    _child = subprocess.Popen(
        [sys.executable, "-m", __name__, level],
        stdin=read,
        stdout=_real_stderr,
        stderr=_real_stderr,
        start_new_session=True,
    )
    os.close(read)
    os.dup2(write, 2)
    os.close(write)
    return open(
        _real_stderr, "w", encoding="utf-8", errors="backslashreplace", buffering=1, closefd=False
    )


def restore(timeout_s: float = 5.0) -> None:
    """Give fd 2 back to the real stderr and let the wrapper write what it holds."""
    global _child
    if _child is None or _real_stderr is None:
        return
    sys.stderr.flush()
    os.dup2(_real_stderr, 2)  # our end of the pipe closes: the wrapper reads its end
    try:
        _child.wait(timeout_s)
    except subprocess.TimeoutExpired:  # something we started still holds the pipe
        _child.kill()
        _child.wait()
    _child = None


def record(line: str) -> dict[str, str]:
    """One line of native output as a log record, fields as ``logs.JsonFormatter``'s."""
    entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "level": "warning", "logger": "stderr"}
    if grpc := _GRPC.match(line):
        severity, source, message = grpc.groups()
        entry.update(level=_GRPC_LEVELS[severity], logger="grpc", source=source)
    elif trtllm := _TRTLLM.match(line):
        severity, message = trtllm.groups()
        level = _TRTLLM_LEVELS.get(severity.lower(), severity.lower())
        entry.update(level=level if level in _LEVELS else "info", logger="tensorrt_llm")
    else:
        message = line
    entry["message"] = message
    return entry


def main(level: str) -> None:
    threshold = _LEVELS.get(level, _LEVELS["info"])
    out = sys.stdout
    for raw in sys.stdin.buffer:
        line = raw.decode("utf-8", "backslashreplace").rstrip("\r\n")
        if not line.strip():
            continue
        entry = record(line)
        if entry["logger"] != "stderr" and _LEVELS[entry["level"]] < threshold:
            continue
        out.write(json.dumps(entry) + "\n")
        out.flush()


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "info")
