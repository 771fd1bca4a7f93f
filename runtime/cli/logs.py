"""``llmfn logs FUNCTION``: the function's log lines that ``serve`` and the
emulators kept in the data dir's log store, one per line with its time and
request id (like ``sam logs``); ``--tail`` keeps printing new ones. It reads
the store directly and never talks to a running service."""
from __future__ import annotations

import argparse
import re
import sys
import time
from datetime import UTC, datetime

from runtime.functions.logs import LogLine, read_lines
from runtime.log_format import timestamp
from runtime.settings import Settings, from_flags

_AGO = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
POLL_S = 0.5  # how often --tail looks for new lines


def parse_since(text: str, now: float | None = None) -> float:
    """``10m``, ``2h``, ``1d`` ago, or an ISO 8601 time (UTC unless it names a zone), as epoch seconds."""
    now = time.time() if now is None else now
    if m := _AGO.fullmatch(text.strip()):
        return now - float(m.group(1)) * _SECONDS[m.group(2)]
    try:
        at = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"--since {text!r}: give a duration (30s, 10m, 2h, 1d, 1w) or an ISO 8601 time") from None
    return (at if at.tzinfo else at.replace(tzinfo=UTC)).timestamp()


def _line(line: LogLine) -> str:
    return f"{timestamp(line.time)} {line.request_id or '-'} {line.message}"


def logs(args: argparse.Namespace) -> int:
    settings = from_flags(Settings, args)
    since = parse_since(args.since)
    path, last = settings.logs_path, 0
    if not path.exists() and not args.tail:
        print(f"llmfn: no function logs kept in {settings.data_dir} yet", file=sys.stderr)
        return 0
    try:
        while True:
            for line in read_lines(path, args.function, since=since, after_id=last, contains=args.filter):
                print(_line(line), flush=args.tail)
                last = line.id
            if not args.tail:
                return 0
            time.sleep(POLL_S)
    except KeyboardInterrupt:  # Ctrl-C ends --tail
        return 0
