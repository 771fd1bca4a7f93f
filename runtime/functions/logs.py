"""Function log lines: START/END/REPORT and what a handler writes to stdout and
stderr, each with its function, version, request id and time. Lines go to
stderr as they come and, through :class:`LogStore`, into a bounded SQLite file
in the data dir that ``llmfn logs`` reads. Storing never blocks the event loop
and never fails an invocation: a line that cannot be stored is dropped."""
from __future__ import annotations

import logging
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from runtime import log_format

log = logging.getLogger("llmfn.functions")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS lines (
  id INTEGER PRIMARY KEY AUTOINCREMENT, time REAL NOT NULL, function TEXT NOT NULL,
  request_id TEXT, version INTEGER NOT NULL, message TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS lines_by_function ON lines(function, id);
CREATE INDEX IF NOT EXISTS lines_by_time ON lines(time);
"""
_QUEUE_LIMIT = 10_000  # lines waiting for the writer; more are dropped
# The writer gathers lines this long before it writes them: an invocation's START
# wakes it, and its work waits until the invocation is done instead of competing
# with it for the interpreter (group commit, as the ledger does).
_BATCH_WAIT_S = 0.1
_AGE_TRIM_S = 60.0  # how often the writer drops lines past their age


@dataclass(frozen=True)
class LogLine:
    function: str
    message: str
    request_id: str | None = None  # None: written outside an invocation (the init phase)
    version: int = 1
    time: float = field(default_factory=time.time)
    id: int = 0  # its place in the store, once read back


FunctionLog = Callable[[LogLine], None]


def stderr_log(line: LogLine) -> None:
    log_format.function_line(line.time, line.function, line.request_id, line.version, line.message)


def tee(*sinks: FunctionLog) -> FunctionLog:
    def write(line: LogLine) -> None:
        for sink in sinks:
            sink(line)
    return write


def _connect(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, timeout=5, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    return db


class LogStore:
    """The data dir's function log lines, at most ``max_lines`` per function and
    none older than ``max_age_s``. :meth:`append` only queues the line; a thread
    of its own writes the queue in batches."""

    def __init__(self, path: Path, *, max_lines: int, max_age_s: float):
        self.path, self.max_lines, self.max_age_s = Path(path), max_lines, max_age_s
        self._queue: queue.Queue[LogLine | None] = queue.Queue(_QUEUE_LIMIT)
        self._warned = False
        self._thread = threading.Thread(target=self._run, name="llmfn-log-store", daemon=True)
        self._thread.start()

    def append(self, line: LogLine) -> None:
        try:
            self._queue.put_nowait(line)
        except queue.Full:
            self._drop("the log store is falling behind")

    def close(self, timeout: float = 5.0) -> None:
        """Write what is queued, then stop (blocking: call it off the event loop)."""
        try:
            self._queue.put(None, timeout=timeout)
        except queue.Full:
            return
        self._thread.join(timeout)

    def _drop(self, why: str) -> None:
        if not self._warned:  # once until a write succeeds again, never once per line
            self._warned = True
            log.warning("function log lines are being dropped from %s: %s", self.path, why)

    def _run(self) -> None:
        db = None
        last_age_trim = 0.0
        while True:
            batch = [self._queue.get()]
            if batch[0] is not None:
                time.sleep(_BATCH_WAIT_S)
            while len(batch) < 1000 and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            done = None in batch
            lines = [b for b in batch if b is not None]
            try:
                db = db or self._open()
                self._write(db, lines)
                if time.monotonic() - last_age_trim >= _AGE_TRIM_S:
                    db.execute("DELETE FROM lines WHERE time < ?", (time.time() - self.max_age_s,))
                    last_age_trim = time.monotonic()
                self._warned = False
            except (sqlite3.Error, OSError) as exc:  # a full disk, a locked or broken file
                self._drop(f"{type(exc).__name__}: {exc}")
                if db is not None:
                    db.close()
                    db = None
            if done:
                if db is not None:
                    db.close()
                return

    def _open(self) -> sqlite3.Connection:
        # 0600 from its first byte, whatever the umask: the data dir's files are the service user's
        os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600))
        db = _connect(self.path)
        db.executescript(_SCHEMA)
        return db

    def _write(self, db: sqlite3.Connection, lines: list[LogLine]) -> None:
        if not lines:
            return
        with db:
            db.execute("BEGIN")
            db.executemany("INSERT INTO lines (time, function, request_id, version, message) VALUES (?, ?, ?, ?, ?)",
                           [(ln.time, ln.function, ln.request_id, ln.version, ln.message) for ln in lines])
            for function in {ln.function for ln in lines}:
                db.execute("DELETE FROM lines WHERE function = ? AND id <= (SELECT id FROM lines WHERE function = ? "
                           "ORDER BY id DESC LIMIT 1 OFFSET ?)", (function, function, self.max_lines))


def read_lines(path: Path, function: str, *, since: float | None = None, after_id: int = 0,
               contains: str | None = None) -> Iterator[LogLine]:
    """The stored lines of ``function``, oldest first: those from ``since`` (epoch
    seconds) on, after the line ``after_id``, with ``contains`` in their message."""
    if not Path(path).exists():
        return
    sql = "SELECT id, time, request_id, version, message FROM lines WHERE function = ? AND id > ?"
    params: list = [function, after_id]
    if since is not None:
        sql += " AND time >= ?"
        params.append(since)
    if contains:
        sql += " AND instr(message, ?) > 0"  # a plain, case-sensitive substring: no wildcards
        params.append(contains)
    db = _connect(path)
    try:
        for id_, at, request_id, version, message in db.execute(sql + " ORDER BY id", params).fetchall():
            yield LogLine(function, message, request_id, version, at, id_)
    except sqlite3.OperationalError as exc:
        if "no such table" not in str(exc):  # a store created but never written
            raise
    finally:
        db.close()
