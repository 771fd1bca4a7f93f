"""The delivery store: every event a trigger has handed to a function, in an
embedded SQLite file, so that work survives a restart.

It owns three guarantees the triggers build on:

- ``claim`` records an event id once, ever: a second claim of the same id (in
  this process or after a restart) returns False. That is what makes "each
  object version triggers exactly once, across restarts".
- A claimed event stays ``pending`` until the asynchronous invoker marks it
  ``done`` or ``failed``; ``pending()`` is what a restarted service re-runs.
- Markers (small named values) remember one-off decisions, such as the
  baseline an S3 rule took when it first started.

It must not invoke anything or talk to S3. Every method blocks on SQLite, so
async callers run them in an executor (``asyncio.to_thread``).
"""
from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

Status = Literal["pending", "done", "failed", "skipped"]
# pending: accepted, not finished; done: the function succeeded; failed: sent to the
# on-failure destination; skipped: seen but never delivered (an S3 rule's baseline).

SCHEMA = """
CREATE TABLE IF NOT EXISTS deliveries (
    event_id    TEXT PRIMARY KEY,
    function    TEXT NOT NULL,
    payload     TEXT NOT NULL,
    status      TEXT NOT NULL,
    attempts    INTEGER NOT NULL DEFAULT 0,
    first_seen  REAL NOT NULL,
    updated     REAL NOT NULL,
    last_error  TEXT
);
CREATE INDEX IF NOT EXISTS deliveries_status ON deliveries(status);
CREATE TABLE IF NOT EXISTS markers (
    name     TEXT PRIMARY KEY,
    value    TEXT NOT NULL,
    updated  REAL NOT NULL
);
"""


class Submit(Protocol):
    """How a trigger hands an event over (``AsyncInvoker.submit``): the event is
    claimed under ``event_id`` and run; False when that id was claimed before."""
    def __call__(self, function: str, event: Any, *, event_id: str) -> Awaitable[bool]: ...


@dataclass(frozen=True)
class Delivery:
    """One row of the store: an event and where its delivery stands."""
    event_id: str
    function: str
    payload: dict[str, Any]
    status: Status
    attempts: int
    first_seen: float
    updated: float
    last_error: dict[str, Any] | None


class DeliveryStore:
    """SQLite (WAL) table of delivered events; safe to share between threads."""

    def __init__(self, path: str | Path, *, clock: Callable[[], float] = time.time):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._clock = clock
        # One connection behind a lock: writes are tiny, and executor threads share it.
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def claim(self, event_id: str, function: str, payload: dict[str, Any], *,
              now: float | None = None) -> bool:
        """Record a new pending event; False when this event id was claimed before."""
        now = self._clock() if now is None else now
        with self._lock:
            cur = self._db.execute(
                "INSERT OR IGNORE INTO deliveries (event_id, function, payload, status, attempts, "
                "first_seen, updated) VALUES (?, ?, ?, 'pending', 0, ?, ?)",
                (event_id, function, json.dumps(payload), now, now))
            return cur.rowcount == 1

    def record_baseline(self, marker: str, rows: Iterable[tuple[str, str, dict[str, Any]]]) -> int:
        """Mark ``(event_id, function, payload)`` rows as seen-but-skipped and set ``marker``,
        in one transaction, so a crash never leaves a half-taken baseline behind."""
        now = self._clock()
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                before = self._db.total_changes
                self._db.executemany(
                    "INSERT OR IGNORE INTO deliveries (event_id, function, payload, status, attempts, "
                    "first_seen, updated) VALUES (?, ?, ?, 'skipped', 0, ?, ?)",
                    ((eid, fn, json.dumps(payload), now, now) for eid, fn, payload in rows))
                added = self._db.total_changes - before
                self._set_marker(marker, str(now), now)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            return added

    def mark(self, event_id: str, status: Status, attempts: int,
             error: dict[str, Any] | None = None) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE deliveries SET status = ?, attempts = ?, last_error = ?, updated = ? "
                "WHERE event_id = ?",
                (status, attempts, json.dumps(error) if error is not None else None, self._clock(),
                 event_id))

    def get(self, event_id: str) -> Delivery | None:
        with self._lock:
            row = self._db.execute(f"SELECT {_COLUMNS} FROM deliveries WHERE event_id = ?",
                                   (event_id,)).fetchone()
        return _delivery(row) if row else None

    def pending(self) -> list[Delivery]:
        """Events accepted but not finished, oldest first: what a restart must re-run."""
        with self._lock:
            rows = self._db.execute(f"SELECT {_COLUMNS} FROM deliveries WHERE status = 'pending' "
                                    "ORDER BY first_seen, event_id").fetchall()
        return [_delivery(row) for row in rows]

    def seen_keys(self, prefix: str) -> set[str]:
        """Every event id starting with ``prefix``, whatever its status."""
        # GLOB has no escape character, so filter the range scan in Python instead.
        with self._lock:
            rows = self._db.execute("SELECT event_id FROM deliveries WHERE event_id >= ? ORDER BY event_id",
                                    (prefix,))
            found = set()
            for (event_id,) in rows:
                if not event_id.startswith(prefix):
                    break
                found.add(event_id)
        return found

    def marker(self, name: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT value FROM markers WHERE name = ?", (name,)).fetchone()
        return row[0] if row else None

    def set_marker(self, name: str, value: str) -> None:
        with self._lock:
            self._set_marker(name, value, self._clock())

    def _set_marker(self, name: str, value: str, now: float) -> None:
        self._db.execute("INSERT INTO markers (name, value, updated) VALUES (?, ?, ?) "
                         "ON CONFLICT(name) DO UPDATE SET value = excluded.value, updated = excluded.updated",
                         (name, value, now))


_COLUMNS = "event_id, function, payload, status, attempts, first_seen, updated, last_error"


def _delivery(row: tuple) -> Delivery:
    event_id, function, payload, status, attempts, first_seen, updated, last_error = row
    return Delivery(event_id=event_id, function=function, payload=json.loads(payload), status=status,
                    attempts=attempts, first_seen=first_seen, updated=updated,
                    last_error=json.loads(last_error) if last_error else None)
