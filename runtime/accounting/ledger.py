"""The usage ledger: every LLM call is one row in an embedded SQLite file.

``Ledger.record`` runs on the event loop, so it only appends to an in-memory
buffer; a writer thread drains the buffer in batches (one transaction each).
Reads (``totals``, ``read``) go through their own connection: SQLite in WAL
mode lets readers and the one writer work at the same time, so a report never
waits for a write batch and a write never waits for a report.
"""
from __future__ import annotations

import atexit
import collections
import logging
import operator
import os
import sqlite3
import threading
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

if TYPE_CHECKING:  # accounting sits below the gateway; it only reads the record's shape
    from runtime.gateway.calls import CallRecord

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS calls (
    ts                REAL    NOT NULL,
    service_type      TEXT    NOT NULL,
    resource          TEXT    NOT NULL,
    invocation_id     TEXT,
    model             TEXT    NOT NULL,
    prompt_tokens     INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    cached_tokens     INTEGER NOT NULL,
    status            TEXT    NOT NULL,
    error_type        TEXT,
    latency_ms        REAL    NOT NULL,
    ttft_ms           REAL,
    request_id        TEXT    NOT NULL,
    endpoint          TEXT    NOT NULL
);
CREATE INDEX IF NOT EXISTS calls_ts ON calls (ts);
CREATE INDEX IF NOT EXISTS calls_resource_model_ts ON calls (resource, model, ts);
"""


@dataclass(frozen=True, slots=True)
class LedgerRow:
    """One LLM call. A plain dataclass, not pydantic: it is built on the event
    loop for every call, and every field comes from the gateway's own meter."""
    ts: float  # call start, seconds since the epoch
    service_type: str  # "function" | "key"
    resource: str  # function name or key name; "anonymous" for callers without a key
    invocation_id: str | None
    model: str
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    status: str  # "success" | "failure"
    error_type: str | None  # "context_length_exceeded", "cancelled", ...; None on success
    latency_ms: float
    ttft_ms: float | None
    request_id: str = ""
    endpoint: str = ""

    @classmethod
    def from_call(cls, record: "CallRecord") -> "LedgerRow":
        status, error_type = _outcome(record.status)
        service_type = "function" if record.principal.kind == "function" else "key"
        return cls(
            ts=record.at, service_type=service_type, resource=record.principal.name,
            invocation_id=record.principal.invocation_id if service_type == "function" else None,
            model=record.model,
            # a cancelled stream keeps what was generated: those tokens were spent
            prompt_tokens=record.prompt_tokens, completion_tokens=record.completion_tokens,
            cached_tokens=record.cached_tokens, status=status, error_type=error_type,
            latency_ms=record.latency_s * 1000.0,
            ttft_ms=None if record.ttft_s is None else record.ttft_s * 1000.0,
            request_id=record.request_id, endpoint=record.endpoint)


COLUMNS = tuple(f.name for f in fields(LedgerRow))
# attrgetter, not dataclasses.astuple: astuple deep-copies every field
_values = operator.attrgetter(*COLUMNS)
INSERT = f"INSERT INTO calls ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"


def _outcome(call_status: str) -> tuple[str, str | None]:
    """``CallRecord.status`` -> (status, error_type)."""
    if call_status == "success":
        return "success", None
    if call_status.startswith("error:"):
        return "failure", call_status.removeprefix("error:") or "unknown"
    return "failure", call_status  # "cancelled", or whatever new outcome the meter reports


class Ledger:
    """The ledger file at ``path`` (created with its parent folders if missing).

    ``record`` is O(1) and never blocks; rows reach the file within
    ``flush_interval`` seconds, or sooner once ``batch_size`` rows are waiting.
    ``flush`` and ``close`` block until the buffer is on disk.
    """

    def __init__(self, path: str | os.PathLike[str], *, flush_interval: float = 0.2,
                 batch_size: int = 500):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.flush_interval, self.batch_size = flush_interval, batch_size
        # deque.append/popleft are atomic, so the event loop never takes a lock
        self._buffer: collections.deque[LedgerRow] = collections.deque()
        self._writer = _connect(self.path)
        self._writer.executescript(SCHEMA)
        self._write_lock = threading.Lock()  # one batch at a time, from the thread or flush()
        self._reader = _connect(self.path)
        self._reader.execute("PRAGMA query_only = ON")
        self._read_lock = threading.Lock()  # the read connection is shared across threads
        self._wake = threading.Event()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="ledger-writer", daemon=True)
        self._thread.start()
        # a process that forgets close() still writes its last rows on a clean exit
        atexit.register(self.close)

    # -- writing -----------------------------------------------------------

    def record(self, row: LedgerRow) -> None:
        if self._closed:
            raise RuntimeError("the ledger is closed")
        self._buffer.append(row)
        if len(self._buffer) >= self.batch_size:
            self._wake.set()

    def flush(self) -> None:
        """Write every buffered row now (blocking)."""
        self._write_pending()

    def close(self) -> None:
        """Flush, stop the writer thread and close the file. Idempotent."""
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self.close)
        self._wake.set()
        self._thread.join()
        try:
            self._write_pending()
        finally:
            with self._write_lock, self._read_lock:
                self._writer.close()
                self._reader.close()

    def _run(self) -> None:
        while not self._closed:
            self._wake.wait(self.flush_interval)
            self._wake.clear()
            try:
                self._write_pending()
            except Exception:  # noqa: BLE001 - the thread must outlive a bad tick
                # the batch went back to the buffer; try again on the next tick
                log.exception("ledger write failed; %d rows kept in memory", len(self._buffer))

    def _write_pending(self) -> None:
        with self._write_lock:
            batch = self._drain()
            if not batch:
                return
            try:
                self._insert(batch)
            except sqlite3.OperationalError:
                # the file is busy, full or unreachable: keep the rows, in order
                self._buffer.extendleft(reversed(batch))
                raise
            except sqlite3.Error:
                self._insert_each(batch)  # a row the database refuses must not block the rest

    def _insert(self, batch: list[LedgerRow]) -> None:
        with self._writer:  # one transaction: commit on success, roll back on error
            self._writer.executemany(INSERT, [_values(row) for row in batch])

    def _insert_each(self, batch: list[LedgerRow]) -> None:
        for i, row in enumerate(batch):
            try:
                self._insert([row])
            except sqlite3.OperationalError:
                self._buffer.extendleft(reversed(batch[i:]))
                raise
            except sqlite3.Error:
                log.error("ledger dropped a row it cannot store: %r", row)

    def _drain(self) -> list[LedgerRow]:
        batch = []
        while self._buffer:
            batch.append(self._buffer.popleft())
        return batch

    # -- reading -----------------------------------------------------------

    def read(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        """Run a read-only query on the read connection (blocking; callers on
        the event loop use an executor). Buffered rows are flushed first, so a
        read sees every row recorded before it."""
        self.flush()
        with self._read_lock:
            return self._reader.execute(sql, params).fetchall()

    def totals(self, resource: str, model: str | None, since: float, *,
               service_type: str | None = None) -> int:
        """Tokens (prompt + completion) ``resource`` spent since ``since``,
        for one model or all; what start-up uses to rebuild token budgets."""
        sql = ("SELECT COALESCE(SUM(prompt_tokens + completion_tokens), 0) FROM calls"
               " WHERE resource = ? AND ts >= ?")
        params: list[Any] = [resource, since]
        if model is not None:
            sql += " AND model = ?"
            params.append(model)
        if service_type is not None:
            sql += " AND service_type = ?"
            params.append(service_type)
        return int(self.read(sql, params)[0][0])


def _connect(path: Path) -> sqlite3.Connection:
    # check_same_thread=False: each connection is guarded by its own lock instead
    conn = sqlite3.connect(path, check_same_thread=False, timeout=5.0)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")  # WAL + NORMAL: durable across app crashes
    return conn
