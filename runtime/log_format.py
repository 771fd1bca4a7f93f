"""How the process writes its own log to stderr: ``text`` (the lines as they have
always been) or ``json`` (one JSON object per line, for a log collector). It owns
the format of the service's logging records, of its announcements (where each
server listens) and of the function log lines on stderr; it stores nothing."""
from __future__ import annotations

import atexit
import json
import logging
import os
import sys
import threading
import time
from typing import Any, Literal

LogFormat = Literal["text", "json"]
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_format: LogFormat = "text"


def timestamp(epoch: float) -> str:
    """UTC ISO 8601 with milliseconds: ``2026-11-22T05:30:00.123Z``."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(epoch)) + f".{int(epoch % 1 * 1000):03d}Z"


class JsonFormatter(logging.Formatter):
    """A logging record as ``{"time", "level", "logger", "message"}`` (and ``exception``)."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {"time": timestamp(record.created), "level": record.levelname,
                               "logger": record.name, "message": record.getMessage()}
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out)


def configure(fmt: LogFormat) -> None:
    """Every handler of the root logger writes ``fmt`` from now on."""
    global _format
    _format = fmt
    formatter = JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT)
    for handler in logging.getLogger().handlers:
        handler.setFormatter(formatter)


def relay_stderr() -> None:
    """In json, make every line on this process's stderr a JSON object: fd 2 becomes a
    pipe (which the model workers and other children inherit), and a thread writes each
    line to the real stderr, wrapping those that are not JSON already (llama.cpp's own
    messages, a child's traceback) in a record of the ``stderr`` logger."""
    out = os.dup(2)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)
    thread = threading.Thread(target=_relay, args=(read_end, out), name="llmfn-stderr", daemon=True)
    thread.start()

    def restore() -> None:  # at exit: the last lines reach the real stderr
        sys.stderr.flush()
        os.dup2(out, 2)  # our last copy of the pipe's write end: the relay sees its end
        thread.join(2)
    atexit.register(restore)


def _relay(read_end: int, out: int) -> None:
    with os.fdopen(read_end, "rb") as pipe:
        for raw in pipe:
            line = raw.decode(errors="replace").rstrip("\n")
            if not _is_json_object(line):
                line = json.dumps({"time": timestamp(time.time()), "level": "INFO", "logger": "stderr",
                                   "message": line})
            os.write(out, line.encode() + b"\n")


def _is_json_object(line: str) -> bool:
    if not line.startswith("{"):
        return False
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False


def say(message: str) -> None:
    """An announcement for the person running the command (where a server listens): the
    plain line in text, an INFO record of the ``llmfn`` logger in json."""
    if _format == "json":
        line = json.dumps({"time": timestamp(time.time()), "level": "INFO", "logger": "llmfn", "message": message})
    else:
        line = message
    print(line, file=sys.stderr, flush=True)


def function_line(epoch: float, function: str, request_id: str | None, version: int, message: str) -> None:
    """One function log line on stderr: as the function wrote it, or its JSON object."""
    if _format == "json":
        message = json.dumps({"time": timestamp(epoch), "function": function, "request_id": request_id,
                              "version": version, "message": message})
    print(message, file=sys.stderr, flush=True)
