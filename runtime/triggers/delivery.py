"""The delivery store: every event a trigger has handed to a function, in a SQLite
file of the data dir or in the PostgreSQL database that gateway replicas share
(``runtime.database``), so that work survives a restart and a replica's death.

It owns the guarantees the triggers build on:

- ``claim`` records an event id once, ever, whichever process asks: a second
  claim of the same id (here, after a restart, or on another replica) returns
  False. That is what makes each object version and each schedule tick
  delivered exactly once.
- A claimed event stays ``pending`` until its delivery ends ``done`` or
  ``failed``, and while pending it is leased: ``owner`` runs it until
  ``lease_until`` and ``renew`` moves that on while it does. ``take_over``
  hands over only events whose lease ran out (their owner died, hung or shut
  down), each to exactly one taker (``FOR UPDATE SKIP LOCKED`` on PostgreSQL,
  ``BEGIN IMMEDIATE`` on SQLite), plus, at a start, the owner's own events from
  before a crash. ``mark`` writes only for the current lease holder.
- Markers (small named values) remember one-off decisions, such as the
  baseline an S3 rule took when it first started, taken once across replicas.

It must not invoke anything or talk to S3. Every method blocks on the database,
so async callers run them in an executor (``asyncio.to_thread``).
"""
from __future__ import annotations

import json
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from runtime.database import (
    Connection,
    SharedConnection,
    Target,
    migration_lock,
    schema_version,
    set_schema_version,
)

Status = Literal["pending", "done", "failed", "skipped"]
# pending: accepted, not finished; done: the function succeeded; failed: sent to the
# on-failure destination; skipped: seen but never delivered (an S3 rule's baseline).

COMPONENT = "deliveries"
SCHEMA_VERSION = 1
DEFAULT_LEASE_S = 30.0
_CHUNK = 500  # ids per statement: under SQLite's limit on parameters


def _schema(conn: Connection) -> list[list[str]]:
    """The statements that bring the tables from format N to N + 1."""
    real = conn.dialect.real
    # Event ids are compared byte by byte (``seen_keys`` scans a prefix's range), as
    # SQLite does; a PostgreSQL database's own collation might not.
    text = 'TEXT COLLATE "C"' if conn.postgres else "TEXT"
    first = [
        f"""CREATE TABLE IF NOT EXISTS deliveries (
            event_id    {text} PRIMARY KEY,
            function    TEXT NOT NULL,
            payload     TEXT NOT NULL,
            status      TEXT NOT NULL,
            attempts    INTEGER NOT NULL DEFAULT 0,
            first_seen  {real} NOT NULL,
            updated     {real} NOT NULL,
            last_error  TEXT)""",
        "CREATE INDEX IF NOT EXISTS deliveries_status ON deliveries (status)",
        f"CREATE TABLE IF NOT EXISTS markers (name TEXT PRIMARY KEY, value TEXT NOT NULL, updated {real} NOT NULL)",
    ]
    leases = [
        "ALTER TABLE deliveries ADD COLUMN owner TEXT",
        f"ALTER TABLE deliveries ADD COLUMN lease_until {real}",
        "CREATE INDEX IF NOT EXISTS deliveries_leases ON deliveries (lease_until) WHERE status = 'pending'",
        # one database holds every store's tables: the name says whose they are
        "ALTER TABLE markers RENAME TO delivery_markers",
    ]
    return [first, leases]


def _migrate(conn: Connection) -> None:
    with conn.transaction():
        migration_lock(conn, COMPONENT)
        version = schema_version(conn, COMPONENT)
        if version >= SCHEMA_VERSION:
            return
        steps = _schema(conn)
        # a file from before schema versions has the first format's tables, at version 0
        for statements in steps[version:]:
            conn.script(statements)
        set_schema_version(conn, COMPONENT, SCHEMA_VERSION)


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
    owner: str | None = None  # the replica whose lease it is (pending), or whose it was
    lease_until: float | None = None


class DeliveryStore:
    """The table of delivered events, leased to ``owner`` while they run; safe to share
    between threads. ``owner`` names this replica (stable across its restarts, so a
    restarted replica takes its own events back at once); ``lease_s`` is how long a
    lease lasts unrenewed."""

    def __init__(self, target: Target, *, owner: str | None = None, lease_s: float = DEFAULT_LEASE_S,
                 clock: Callable[[], float] = time.time):
        self.target = target
        self.owner = owner or uuid.uuid4().hex
        self.lease_s = lease_s
        self._clock = clock
        # One connection: writes are tiny, and executor threads share it.
        self._shared = SharedConnection(target)
        with self._locked():
            _migrate(self._db)

    @property
    def name(self) -> str:
        """The file, or the database's URL without its password: fit for messages."""
        return self._shared.name

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold the one connection as ``self._db`` for the block."""
        with self._shared.use() as self._db:
            yield

    def close(self) -> None:
        self._shared.close()

    def claim(self, event_id: str, function: str, payload: dict[str, Any], *,
              now: float | None = None) -> bool:
        """Record a new pending event, leased to this owner; False when this event
        id was claimed before, by anyone."""
        now = self._clock() if now is None else now
        with self._locked():
            cur = self._db.execute(
                "INSERT INTO deliveries (event_id, function, payload, status, attempts, first_seen, updated, "
                "owner, lease_until) VALUES (?, ?, ?, 'pending', 0, ?, ?, ?, ?) ON CONFLICT (event_id) DO NOTHING",
                (event_id, function, json.dumps(payload), now, now, self.owner, self._clock() + self.lease_s))
            return cur.rowcount == 1

    def record_baseline(self, marker: str, rows: Iterable[tuple[str, str, dict[str, Any]]]) -> int | None:
        """Set ``marker`` and mark ``(event_id, function, payload)`` rows as seen-but-skipped,
        in one transaction, so a crash never leaves a half-taken baseline behind. The
        rows added; None, adding nothing, when the marker was set before (another
        replica took the baseline first)."""
        now = self._clock()
        with self._locked(), self._db.transaction():
            # first, so that of two replicas taking one baseline, the second waits here and backs off
            if self._db.execute("INSERT INTO delivery_markers (name, value, updated) VALUES (?, ?, ?) "
                                "ON CONFLICT (name) DO NOTHING", (marker, str(now), now)).rowcount != 1:
                return None
            return sum(self._db.execute(
                "INSERT INTO deliveries (event_id, function, payload, status, attempts, first_seen, updated) "
                "VALUES (?, ?, ?, 'skipped', 0, ?, ?) ON CONFLICT (event_id) DO NOTHING",
                (eid, fn, json.dumps(payload), now, now)).rowcount for eid, fn, payload in rows)

    def mark(self, event_id: str, status: Status, attempts: int,
             error: dict[str, Any] | None = None) -> bool:
        """Where a delivery stands after an attempt, or how it ended. Written only while
        this owner holds the event's lease: False, writing nothing, once another
        replica has taken it over."""
        with self._locked():
            cur = self._db.execute(
                "UPDATE deliveries SET status = ?, attempts = ?, last_error = ?, updated = ? "
                "WHERE event_id = ? AND owner = ? AND status = 'pending'",
                (status, attempts, json.dumps(error) if error is not None else None, self._clock(),
                 event_id, self.owner))
            return cur.rowcount == 1

    def renew(self, event_ids: Iterable[str]) -> int:
        """Move on the leases this owner holds on ``event_ids`` (those it runs); how many."""
        until, renewed = self._clock() + self.lease_s, 0
        with self._locked():
            for chunk in _chunks(list(event_ids)):
                marks = ", ".join("?" * len(chunk))
                renewed += self._db.execute(
                    f"UPDATE deliveries SET lease_until = ? WHERE owner = ? AND status = 'pending' "
                    f"AND event_id IN ({marks})", (until, self.owner, *chunk)).rowcount
        return renewed

    def release(self, event_ids: Iterable[str]) -> None:
        """Give up the leases on ``event_ids`` (a shutdown): any replica may take them now."""
        with self._locked():
            for chunk in _chunks(list(event_ids)):
                marks = ", ".join("?" * len(chunk))
                self._db.execute(f"UPDATE deliveries SET lease_until = NULL WHERE owner = ? "
                                 f"AND status = 'pending' AND event_id IN ({marks})", (self.owner, *chunk))

    def take_over(self, *, own: bool = False, limit: int = 1000) -> list[Delivery]:
        """Lease to this owner, and return, up to ``limit`` pending events (oldest first)
        whose lease ran out, and with ``own`` (a start) this owner's from before.
        Of several replicas asking at once, each event goes to exactly one."""
        now = self._clock()
        mine = self.owner if own else None
        skip_locked = " FOR UPDATE SKIP LOCKED" if self._db.postgres else ""
        with self._locked(), self._db.transaction():
            rows = self._db.execute(
                f"SELECT {_COLUMNS} FROM deliveries WHERE status = 'pending' AND "
                f"(lease_until IS NULL OR lease_until < ? OR owner = ?) "
                f"ORDER BY first_seen, event_id LIMIT ?{skip_locked}", (now, mine, limit)).fetchall()
            until = now + self.lease_s
            self._db.executemany("UPDATE deliveries SET owner = ?, lease_until = ? WHERE event_id = ?",
                                 [(self.owner, until, row[0]) for row in rows])
        return [_delivery(row[:-2] + (self.owner, until)) for row in rows]

    def get(self, event_id: str) -> Delivery | None:
        with self._locked():
            row = self._db.execute(f"SELECT {_COLUMNS} FROM deliveries WHERE event_id = ?",
                                   (event_id,)).fetchone()
        return _delivery(row) if row else None

    def pending(self) -> list[Delivery]:
        """Events accepted but not finished, oldest first, whoever holds them."""
        with self._locked():
            rows = self._db.execute(f"SELECT {_COLUMNS} FROM deliveries WHERE status = 'pending' "
                                    "ORDER BY first_seen, event_id").fetchall()
        return [_delivery(row) for row in rows]

    def seen_keys(self, prefix: str) -> set[str]:
        """Every event id starting with ``prefix``, whatever its status."""
        # A range scan of the primary key (ids compare byte by byte on both databases);
        # LIKE would be case-blind in SQLite, and has its own wildcards to escape.
        bounds, sql = [prefix], "SELECT event_id FROM deliveries WHERE event_id >= ?"
        if prefix and ord(prefix[-1]) < 0x10FFFF:
            bounds.append(prefix[:-1] + chr(ord(prefix[-1]) + 1))
            sql += " AND event_id < ?"
        with self._locked():
            rows = self._db.execute(sql, bounds).fetchall()
        return {event_id for (event_id,) in rows if event_id.startswith(prefix)}

    def marker(self, name: str) -> str | None:
        with self._locked():
            row = self._db.execute("SELECT value FROM delivery_markers WHERE name = ?", (name,)).fetchone()
        return row[0] if row else None

    def set_marker(self, name: str, value: str) -> None:
        now = self._clock()
        with self._locked():
            self._db.execute("INSERT INTO delivery_markers (name, value, updated) VALUES (?, ?, ?) "
                             "ON CONFLICT (name) DO UPDATE SET value = excluded.value, updated = excluded.updated",
                             (name, value, now))


_COLUMNS = "event_id, function, payload, status, attempts, first_seen, updated, last_error, owner, lease_until"


def _chunks(items: Sequence[str]) -> Iterable[Sequence[str]]:
    return (items[i:i + _CHUNK] for i in range(0, len(items), _CHUNK))


def _delivery(row: Sequence[Any]) -> Delivery:
    event_id, function, payload, status, attempts, first_seen, updated, last_error, owner, lease_until = row
    return Delivery(event_id=event_id, function=function, payload=json.loads(payload), status=status,
                    attempts=attempts, first_seen=first_seen, updated=updated,
                    last_error=json.loads(last_error) if last_error else None, owner=owner,
                    lease_until=lease_until)
