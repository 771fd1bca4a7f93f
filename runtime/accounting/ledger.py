"""The usage ledger: every LLM call is one row, in an embedded SQLite file or in
a PostgreSQL database that gateway replicas share (``runtime.database``).

A call that is dispatched to a model is written twice, and the gateway waits
for both commits: when it is admitted (``admit``: status ``running``, with the
tokens it reserved) and when it ends (``complete``). In between, ``progress``
keeps the row's token counts close to what the client has been shown. A call
refused before admission (bad input, quota) is one ``record``ed row.

One writer thread commits whatever is waiting in one transaction (group
commit): concurrent calls share a commit. The one exception is the end of a
call on a SQLite ledger whose writer is idle: its caller commits it on the
spot, through a connection of its own that never waits for a lock and never
checkpoints (a commit to the write-ahead log costs less than the two thread
hand-offs the end of the call would otherwise wait for). When that connection
would wait, or fails, the end goes to the writer thread like any other write.

The backlog is bounded; past the bound, or when the database cannot
write (disk full, read-only file, a PostgreSQL server that is down or refuses),
``admit`` fails with ``LedgerUnavailable`` (a 503) instead of letting a call run
unrecorded or the backlog grow. A lost PostgreSQL connection is opened again
at the next write.

A gateway killed mid-call leaves ``running`` rows; the next ``Ledger`` opened on
the database marks them failures with error type ``interrupted``, keeping the
tokens known. A process holds an owner lock while it may have rows in flight
(``runtime.accounting.owners``: a lock file beside a SQLite file, a session
advisory lock on PostgreSQL), so rows of a live gateway sharing the database
are never touched. Reads go through their own connection, so they never wait
for the writer.
"""
from __future__ import annotations

import asyncio
import atexit
import collections
import logging
import operator
import sqlite3
import threading
import uuid
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal, Protocol

from runtime.accounting.owners import AdvisoryLocks, LockFiles, Owners
from runtime.accounting.status import INTERRUPTED, CallerKind, CallStatus, LedgerStatus, ServiceType, ledger_outcome
from runtime.database import (
    Connection,
    Dialect,
    Target,
    connect,
    is_postgres,
    migration_lock,
    schema_version,
    set_schema_version,
)
from runtime.errors import LedgerUnavailable


class Caller(Protocol):
    kind: CallerKind
    name: str
    invocation_id: str | None


class LedgerCall(Protocol):
    """What the ledger reads of a call (the gateway's ``CallRecord``): accounting
    sits below the gateway and only knows the record's shape."""
    at: float
    principal: Caller
    model: str
    endpoint: str
    status: CallStatus
    error: str | None
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    latency_s: float
    ttft_s: float | None
    request_id: str
    call_id: str
    reserved: int

log = logging.getLogger(__name__)

RUNNING = LedgerStatus.RUNNING  # admitted, not ended: the status of a call in flight
COMPONENT = "ledger"  # its schema version's name (PRAGMA user_version of a SQLite file)
SCHEMA_VERSION = 3  # 0 (no version) is the first ledger format


def schema(dialect: Dialect) -> tuple[str, ...]:
    """The first format's table, in ``dialect``: PostgreSQL has no rowid, so its
    rows get an explicit ascending id (``Dialect.row_id``)."""
    row_id = f",\n    {dialect.row_id}" if dialect.row_id else ""
    return (FIRST_TABLE.replace("REAL", dialect.real).replace("ROW_ID", row_id), *FIRST_INDEXES)


FIRST_TABLE = """CREATE TABLE IF NOT EXISTS calls (
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
    endpoint          TEXT    NOT NULL ROW_ID
)"""
FIRST_INDEXES = (
    "CREATE INDEX IF NOT EXISTS calls_ts ON calls (ts)",
    "CREATE INDEX IF NOT EXISTS calls_resource_model_ts ON calls (resource, model, ts)",
)
# version 2: a call is a row from its admission on
ADDED_COLUMNS = (("call_id", "TEXT"), ("reserved_tokens", "INTEGER NOT NULL DEFAULT 0"),
                 ("owner", "TEXT"))
INDEXES_V2 = (
    "CREATE UNIQUE INDEX IF NOT EXISTS calls_call_id ON calls (call_id) WHERE call_id IS NOT NULL",
    f"CREATE INDEX IF NOT EXISTS calls_running ON calls (owner) WHERE status = '{RUNNING}'",
)
# version 3: one function's or key's calls, newest first (``GET /v1/usage/calls``)
INDEXES_V3 = ("CREATE INDEX IF NOT EXISTS calls_resource_ts ON calls (resource, ts)",)


@dataclass(frozen=True, slots=True)
class LedgerRow:
    """One LLM call. A plain dataclass, not pydantic: it is built on the event
    loop for every call, and every field comes from the gateway's own meter."""
    ts: float  # call start, seconds since the epoch
    service_type: ServiceType
    resource: str  # function name or key name; "anonymous" for callers without a key
    invocation_id: str | None
    model: str
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    status: LedgerStatus
    error_type: str | None  # an error code, CANCELLED or INTERRUPTED; None unless a failure
    latency_ms: float
    ttft_ms: float | None
    request_id: str = ""
    endpoint: str = ""
    call_id: str | None = None  # set for admitted calls: their two writes meet on it
    reserved_tokens: int = 0  # what the call reserved at admission (prompt + max tokens)

    @classmethod
    def from_call(cls, record: LedgerCall) -> LedgerRow:
        status, error_type = ledger_outcome(record.status, record.error)
        service_type = record.principal.kind.service_type
        return cls(
            ts=record.at, service_type=service_type, resource=record.principal.name,
            invocation_id=record.principal.invocation_id if service_type is ServiceType.FUNCTION else None,
            model=record.model,
            # a cancelled stream keeps what was generated: those tokens were spent
            prompt_tokens=record.prompt_tokens, completion_tokens=record.completion_tokens,
            cached_tokens=record.cached_tokens, status=status, error_type=error_type,
            latency_ms=record.latency_s * 1000.0,
            ttft_ms=None if record.ttft_s is None else record.ttft_s * 1000.0,
            request_id=record.request_id, endpoint=record.endpoint,
            call_id=record.call_id or None, reserved_tokens=record.reserved)


COLUMNS = tuple(f.name for f in fields(LedgerRow))
# attrgetter, not dataclasses.astuple: astuple deep-copies every field
_values = operator.attrgetter(*COLUMNS)
INSERT = f"INSERT INTO calls ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"
INSERT_OWNED = (f"INSERT INTO calls ({', '.join(COLUMNS)}, owner)"
                f" VALUES ({', '.join('?' * (len(COLUMNS) + 1))})")
# What a call's end changes in its admitted row; the rest (when, who, which model and
# endpoint, what it reserved) is the call's from the start. Leaving those out of the
# SET leaves the indexes on resource, model and time untouched: fewer pages a commit.
FINAL = ("prompt_tokens", "completion_tokens", "cached_tokens", "status", "error_type", "latency_ms", "ttft_ms")
_final = operator.attrgetter(*FINAL)
UPDATE_FINAL = f"UPDATE calls SET {', '.join(f'{c} = ?' for c in FINAL)} WHERE call_id = ?"
PROGRESS = ("prompt_tokens", "completion_tokens", "cached_tokens", "latency_ms", "ttft_ms")
_progress = operator.attrgetter(*PROGRESS)
UPDATE_PROGRESS = (f"UPDATE calls SET {', '.join(f'{c} = ?' for c in PROGRESS)}"
                   f" WHERE call_id = ? AND status = '{RUNNING}'")


def budget_tokens(dialect: Dialect) -> str:
    """What a call costs a budget: an unfinished call its reservation, since the
    tokens it generated after its last progress write are unknown."""
    return (f"CASE WHEN status = '{RUNNING}' OR error_type = '{INTERRUPTED}'"
            f" THEN {dialect.max2('reserved_tokens', 'prompt_tokens + completion_tokens')}"
            " ELSE prompt_tokens + completion_tokens END")


# what a probe writes and rolls back: the size of an ordinary row, so a full disk refuses it
_PROBE = LedgerRow(0.0, ServiceType.KEY, "probe", None, "probe", 0, 0, 0, LedgerStatus.FAILURE, "probe",
                   0.0, None, request_id="0" * 32, endpoint="probe", call_id=None)
# a failed write that is the row's fault, not the database's: the other rows of its batch still go in
_SQLITE_ROW_ERRORS = (sqlite3.IntegrityError, sqlite3.InterfaceError, sqlite3.ProgrammingError,
                      sqlite3.DataError)


def _row_errors(conn: Connection) -> tuple[type[Exception], ...]:
    if not conn.postgres:
        return _SQLITE_ROW_ERRORS
    import psycopg

    return psycopg.IntegrityError, psycopg.DataError


@dataclass(slots=True)
class _Op:
    kind: Literal["admit", "complete", "insert", "barrier", "probe"]
    row: LedgerRow | None
    done: Future | None


class Ledger:
    """The ledger at ``target``: a SQLite file (created with its parent folders if
    missing) or a ``postgresql://`` URL; a ledger of an earlier format is
    migrated in place. Opening it marks the rows of dead gateways interrupted
    (unless ``recover`` is false: a reader that changes no row).

    ``admit`` and ``complete`` return a ``Future`` resolved once the row is
    committed (await it on the event loop with ``committed``). At most
    ``max_pending`` admissions and refusal rows wait for the writer.
    """

    def __init__(self, target: Target, *, max_pending: int = 10_000,
                 progress_interval: float = 0.1, recover: bool = True):
        self.target = target if is_postgres(target) else Path(target)
        self.max_pending, self.progress_interval = max_pending, progress_interval
        self.owner_id = uuid.uuid4().hex
        self.dropped = 0  # refusal rows not written (backlog full or database unwritable)
        self.healthy = True  # the last write went through (False after a failed one)
        self._owned = False  # this process has held its owner lock: it may have rows in flight
        self._writer = _connect(self.target)
        self.dialect = self._writer.dialect
        self._row_errors = _row_errors(self._writer)
        self._owners: Owners = (AdvisoryLocks(self.target) if self._writer.postgres
                                else LockFiles(self.target))
        _migrate(self._writer)
        self.recovered = self._recover() if recover else 0
        self._reader = _connect(self.target, read_only=True)
        self._read_lock = threading.Lock()  # the read connection is shared across threads
        self._cv = threading.Condition()  # guards the queue; never held across I/O
        self._ops: collections.deque[_Op] = collections.deque()
        self._bounded = 0  # admissions and refusal rows in _ops
        self._progress: dict[str, LedgerRow] = {}  # call id -> latest progress, coalesced
        self._closed = False
        self._writing = False  # the writer thread is committing a batch
        # a call's end, committed at once by its caller while the writer is idle (SQLite only)
        self._direct = None if self._writer.postgres else _connect(self.target, timeout=0)
        self._direct_lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="ledger-writer", daemon=True)
        self._thread.start()
        # a process that forgets close() still writes its last rows on a clean exit
        atexit.register(self.close)

    # -- writing -----------------------------------------------------------

    def admit(self, row: LedgerRow) -> Future:
        """Queue an admitted call's row (status ``running``, with ``call_id``).
        Raises ``LedgerUnavailable`` at once when the backlog is at its bound."""
        fut: Future = Future()
        self._submit(_Op("admit", row, fut), bounded=True)
        return fut

    def progress(self, row: LedgerRow) -> None:
        """The tokens an admitted call has produced so far (latest wins; no wait)."""
        with self._cv:
            if self._closed:
                return
            if not self._progress:
                self._cv.notify()
            self._progress[row.call_id] = row

    def complete(self, row: LedgerRow) -> Future:
        """Queue an admitted call's final row. Never refused: what was admitted
        must end, and admissions bound how many can wait."""
        fut: Future = Future()
        op = _Op("complete", row, fut)
        if self._direct is not None and self._complete_now(op):
            return fut
        try:
            self._submit(op, bounded=False)
        except LedgerUnavailable as exc:
            fut.set_exception(exc)
        return fut

    def _complete_now(self, op: _Op) -> bool:
        """Commit a call's end on the caller's thread when nothing is queued or being
        written (so the call's admission is already committed); False when it should
        be queued instead: the writer is busy, the file is locked by another process
        (the connection does not wait), or the write failed (the writer thread retries
        it and reports what it finds)."""
        with self._cv:
            if self._ops or self._writing or self._closed:
                return False
        if not self._direct_lock.acquire(blocking=False):
            return False
        try:
            self._commit([op], {}, self._direct)
        except Exception:  # noqa: BLE001 - busy, or a failure the writer thread reports
            return False
        else:
            self.healthy = True
        finally:
            self._direct_lock.release()
        _resolve([op])
        return True

    def record(self, row: LedgerRow) -> None:
        """Queue the row of a call that was never admitted (no wait). With the
        backlog at its bound the row is dropped and counted in ``dropped``."""
        with self._cv:
            if self._closed:
                raise RuntimeError("the ledger is closed")
        try:
            self._submit(_Op("insert", row, None), bounded=True)
        except LedgerUnavailable:
            self.dropped += 1
            log.warning("ledger backlog full: a refused call's row was dropped (%d so far)",
                        self.dropped)

    def flush(self) -> None:
        """Block until everything queued so far was written (or failed)."""
        fut: Future = Future()
        self._submit(_Op("barrier", None, fut), bounded=False)
        fut.result()

    def probe(self) -> Future:
        """Try a write (rolled back) in the writer's next batch: resolved when the
        database takes rows again, ``LedgerUnavailable`` when it still cannot. It is how
        an unhealthy ledger learns it has recovered before a call risks it."""
        fut: Future = Future()
        self._submit(_Op("probe", None, fut), bounded=False)
        return fut

    @property
    def backlogged(self) -> bool:
        """The backlog is at its bound: an admission now would be refused."""
        return self._bounded >= self.max_pending

    def close(self) -> None:
        """Write what is queued, mark this process's unfinished calls interrupted,
        stop the writer thread and close the database. Idempotent."""
        with self._cv:
            if self._closed:
                return
            self._closed = True
            self._cv.notify()
        atexit.unregister(self.close)
        self._thread.join()
        try:
            if self._owned:
                self._interrupt(self.owner_id)
        except self._writer.Error:
            log.exception("ledger: unfinished calls stay running until the next start")
        finally:
            self._owners.release()
            with self._read_lock, self._direct_lock:
                self._writer.close()
                self._reader.close()
                if self._direct is not None:
                    self._direct.close()
                    self._direct = None

    def _submit(self, op: _Op, *, bounded: bool) -> None:
        with self._cv:
            if self._closed:
                raise LedgerUnavailable("The usage ledger is closed (the gateway is stopping).")
            if bounded:
                if self._bounded >= self.max_pending:
                    raise LedgerUnavailable(
                        f"The usage ledger is {self.max_pending} writes behind; the call was not "
                        "run. Try again later.")
                self._bounded += 1
            self._ops.append(op)
            self._cv.notify()

    def _run(self) -> None:
        while True:
            with self._cv:
                while not (self._ops or self._progress or self._closed):
                    self._cv.wait()
                if not self._ops and not self._closed:  # progress only: let a few more gather
                    self._cv.wait(self.progress_interval)
                if self._closed and not self._ops and not self._progress:
                    return
                ops, self._ops = list(self._ops), collections.deque()
                self._bounded = 0
                progress, self._progress = self._progress, {}
                self._writing = True
            try:
                self._write(ops, progress)
            finally:
                with self._cv:
                    self._writing = False

    def _write(self, ops: list[_Op], progress: dict[str, LedgerRow]) -> None:
        try:
            self._commit(ops, progress)
        except self._row_errors:
            self._write_each(ops, progress)  # a row the database refuses must not sink the rest
        except Exception as exc:  # noqa: BLE001 - the thread must outlive a bad batch
            self._fail(ops, exc)
        else:
            self.healthy = True
            _resolve(ops)

    def _write_each(self, ops: list[_Op], progress: dict[str, LedgerRow]) -> None:
        for op in ops:
            try:
                self._commit([op], {})
            except Exception as exc:  # noqa: BLE001
                self._fail([op], exc)
            else:
                self.healthy = True
                _resolve([op])
        try:
            self._commit([], progress)
        except Exception:  # noqa: BLE001 - progress is refreshed by the next one
            log.exception("ledger: a progress write failed")

    def _fail(self, ops: list[_Op], exc: Exception) -> None:
        self.healthy = False
        error = LedgerUnavailable(f"The usage ledger cannot record the call ({exc}).")
        dropped = 0
        for op in ops:
            if op.done is not None:
                if op.kind == "barrier":
                    op.done.set_result(None)
                else:
                    _settle(op.done, error)
            elif op.kind == "insert":
                dropped += 1
        self.dropped += dropped
        log.error("ledger write failed (%s): %d calls not recorded", exc, len(ops))

    def _commit(self, ops: list[_Op], progress: dict[str, LedgerRow], direct: Connection | None = None) -> None:
        """One transaction for the batch: every row in it or none. On the writer's
        connection unless ``direct`` (a call's end committed by its caller)."""
        if not progress and all(op.kind == "barrier" for op in ops):
            return
        if direct is not None:
            c = direct
            c.execute(c.dialect.begin)
        else:
            c = self._begin()  # first: it may find the owner lock's session gone
        try:
            if any(op.kind == "admit" for op in ops):
                self._owners.hold(self.owner_id)
                self._owned = True
            for op in ops:
                if op.kind == "admit":
                    c.execute(INSERT_OWNED, (*_values(op.row), self.owner_id))
                elif op.kind == "complete":
                    if c.execute(UPDATE_FINAL, (*_final(op.row), op.row.call_id)).rowcount == 0:
                        c.execute(INSERT, _values(op.row))  # its admission was never written
                elif op.kind == "insert":
                    c.execute(INSERT, _values(op.row))
                elif op.kind == "probe":
                    c.execute("SAVEPOINT probe")
                    c.execute(INSERT, _values(_PROBE))
                    c.execute("ROLLBACK TO probe")
                    c.execute("RELEASE probe")
            if progress:
                c.executemany(UPDATE_PROGRESS, [(*_progress(r), cid) for cid, r in progress.items()])
            c.execute("COMMIT")
        except BaseException:
            if c.in_transaction:
                c.execute("ROLLBACK")
            raise

    def _begin(self) -> Connection:
        """Open the batch's transaction. A connection PostgreSQL dropped while it was
        idle (a restart, a failover) is only found out here, before anything of the
        batch was sent: it is opened again once, so the first call after an outage
        is not refused for it."""
        c = self._writable()
        try:
            c.execute(c.dialect.begin)
        except c.Error:
            if not c.lost:
                raise
            c = self._writable()
            c.execute(c.dialect.begin)
        return c

    def _writable(self) -> Connection:
        """The writer's connection, opened again when PostgreSQL dropped it: a
        failure to connect is the batch's ``LedgerUnavailable``."""
        if not self._writer.lost:
            return self._writer
        self._writer.close()
        self._writer = _connect(self.target)
        self._owners.recheck()  # the owner lock's session may have gone down with it
        return self._writer

    # -- owners and recovery -------------------------------------------------

    def _recover(self) -> int:
        """Mark the running rows of dead owners interrupted; the number marked."""
        try:
            owners = [r[0] for r in self._writer.execute(
                f"SELECT DISTINCT owner FROM calls WHERE status = '{RUNNING}'")]
            marked = 0
            for owner in owners:
                with self._owners.dead(owner) as dead:
                    if dead:
                        marked += self._interrupt(owner)
            self._owners.sweep()
        except (self._writer.Error, OSError):
            log.exception("ledger: interrupted calls stay running until the next start")
            return 0
        if marked:
            log.warning("ledger: %d calls were in flight when a gateway stopped; marked %s",
                        marked, INTERRUPTED)
        return marked

    def _interrupt(self, owner: str | None) -> int:
        cur = self._writable().execute(
            f"UPDATE calls SET status = '{LedgerStatus.FAILURE}', error_type = '{INTERRUPTED}'"
            f" WHERE owner {self.dialect.null_safe_eq} ? AND status = '{RUNNING}'", (owner,))
        return cur.rowcount

    # -- reading -----------------------------------------------------------

    def read(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        """Run a read-only query on the read connection (blocking; callers on
        the event loop use an executor). What was queued before is written
        first, so a read sees every row recorded before it."""
        self.flush()
        with self._read_lock:
            if self._reader.lost:
                self._reader = _connect(self.target, read_only=True)
            return self._reader.execute(sql, params).fetchall()

    def totals(self, resource: str, model: str | None, since: float, *,
               service_type: str | None = None) -> int:
        """Tokens ``resource`` spent since ``since``, for one model or all: what
        start-up rebuilds token budgets from. A call in flight or interrupted
        counts its reservation, so a crash never gives back a spent budget."""
        sql = f"SELECT COALESCE(SUM({budget_tokens(self.dialect)}), 0) FROM calls WHERE resource = ? AND ts >= ?"
        params: list[Any] = [resource, since]
        if model is not None:
            sql += " AND model = ?"
            params.append(model)
        if service_type is not None:
            sql += " AND service_type = ?"
            params.append(service_type)
        return int(self.read(sql, params)[0][0])


async def committed(fut: Future) -> None:
    """Wait on the event loop for a write of the writer thread. A waiter that is
    cancelled leaves the write alone: it is committed all the same."""
    inner = asyncio.wrap_future(fut)
    inner.add_done_callback(_retrieve)
    await asyncio.shield(inner)


def _retrieve(fut: asyncio.Future) -> None:
    if not fut.cancelled():
        fut.exception()  # read, so that an abandoned wait logs no "never retrieved"


def _resolve(ops: list[_Op]) -> None:
    for op in ops:
        if op.done is not None:
            _settle(op.done, None)


def _settle(fut: Future, error: BaseException | None) -> None:
    if fut.done():
        return
    if error is None:
        fut.set_result(None)
    else:
        fut.set_exception(error)


def _migrate(conn: Connection) -> None:
    """Create the table, or bring a ledger of an earlier format up to date."""
    if schema_version(conn, COMPONENT) >= SCHEMA_VERSION:
        return
    with conn.transaction():  # two processes opening one old ledger migrate it once
        migration_lock(conn, COMPONENT)
        if schema_version(conn, COMPONENT) >= SCHEMA_VERSION:
            return
        conn.script(schema(conn.dialect))
        have = _columns(conn)
        for name, declaration in ADDED_COLUMNS:
            if name not in have:
                conn.execute(f"ALTER TABLE calls ADD COLUMN {name} {declaration}")
        conn.script((*INDEXES_V2, *INDEXES_V3))
        set_schema_version(conn, COMPONENT, SCHEMA_VERSION)


def _columns(conn: Connection) -> set[str]:
    if not conn.postgres:
        return {r[1] for r in conn.execute("PRAGMA table_info(calls)")}
    return {r[0] for r in conn.execute(
        "SELECT column_name FROM information_schema.columns"
        " WHERE table_schema = current_schema() AND table_name = 'calls'")}


def _connect(target: Target, *, read_only: bool = False, timeout: float | None = None) -> Connection:
    """A ledger connection; ``timeout`` 0 (SQLite): one that never waits for another's
    lock and never checkpoints (the ends committed on the event loop)."""
    if timeout is not None:
        conn = connect(target, timeout=timeout)
        conn.execute("PRAGMA wal_autocheckpoint = 0")
        return conn
    conn = connect(target)
    if conn.postgres:
        # the write-ahead promise needs an admitted row on disk before the call runs,
        # whatever the server's default (docs/accounting.md)
        conn.execute("SET synchronous_commit = on")
        if read_only:
            conn.execute("SET default_transaction_read_only = on")
    elif read_only:
        conn.execute("PRAGMA query_only = ON")
    return conn
