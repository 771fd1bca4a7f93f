"""Moving the ledger and the API keys from one database to another (``llmfn
ledger export`` / ``llmfn ledger import``), for instance from the embedded
SQLite files to the PostgreSQL database that gateway replicas share.

An export is JSON lines: one ``{"record": "key", ...}`` per API key (its hash,
never a secret: none is stored), then one ``{"record": "call", ...}`` per
ledger row with every column, in the order the rows were written. Importing
adds what the target lacks and nothing twice: a row with a ``call_id`` meets
its twin on it (a twin still ``running`` takes the ended state of the import),
a row without one on all its columns; a key meets its twin on its name (a
revoke is carried over). Running and interrupted rows keep their state; the
next gateway to open the target marks running rows whose gateway is gone
interrupted, as after any crash.
"""
from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from runtime.accounting.keys import KeyRecord, KeyStore
from runtime.accounting.ledger import COLUMNS, RUNNING, Ledger
from runtime.accounting.quotas import Limits
from runtime.database import Connection, Target, connect

CALL_COLUMNS = (*COLUMNS, "owner")
NULLABLE = frozenset({"invocation_id", "error_type", "ttft_ms", "call_id", "owner"})
PAGE = 5000  # rows read, or written in one transaction, at a time
_CALL_ID = CALL_COLUMNS.index("call_id")

_INSERT = (f"INSERT INTO calls ({', '.join(CALL_COLUMNS)}) VALUES ({', '.join('?' * len(CALL_COLUMNS))})")
_ENDED = tuple(c for c in CALL_COLUMNS if c not in ("ts", "call_id"))
# a twin still running takes the imported row's end; any other twin is left as it is
_UPSERT = (f"{_INSERT} ON CONFLICT (call_id) WHERE call_id IS NOT NULL DO UPDATE SET "
           + ", ".join(f"{c} = excluded.{c}" for c in _ENDED)
           + f" WHERE calls.status = '{RUNNING}' AND excluded.status <> '{RUNNING}'")


@dataclass
class Imported:
    calls: int = 0  # rows added, or running twins brought to their end
    calls_present: int = 0  # rows the target already had
    keys: int = 0
    keys_present: int = 0


def export_lines(ledger: Ledger, keys: KeyStore, since: float | None = None) -> Iterator[str]:
    """The keys, then the ledger's rows (from ``since`` on), one JSON line each."""
    for key in keys.list():
        yield json.dumps({"record": "key", **_key_fields(key)})
    row_id = ledger.dialect.row_id_name
    where = f"{row_id} > ?" + ("" if since is None else " AND ts >= ?")
    last = -(2 ** 63)
    while True:
        rows = ledger.read(f"SELECT {', '.join(CALL_COLUMNS)}, {row_id} FROM calls WHERE {where}"
                           f" ORDER BY {row_id} LIMIT ?", [last, *([] if since is None else [since]), PAGE])
        for row in rows:
            yield json.dumps({"record": "call", **dict(zip(CALL_COLUMNS, row))})
        if len(rows) < PAGE:
            return
        last = rows[-1][-1]


def import_lines(ledger_target: Target, keys: KeyStore, lines: Iterable[str]) -> Imported:
    """Add an export's keys and rows to the ledger at ``ledger_target`` and to ``keys``,
    rows in the export's order. Raises ``ValueError`` naming the first line that is
    not a record of an export."""
    Ledger(ledger_target, recover=False).close()  # creates or migrates the table
    done, rows = Imported(), _Rows()
    key_records: list[KeyRecord] = []
    conn = connect(ledger_target)
    try:
        batch: list[tuple] = []
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            record = _parse(line, number)
            if record.pop("record") == "key":
                key_records.append(_key_record(record, number))
                continue
            batch.append(_call_values(record, number))
            if len(batch) >= PAGE:
                rows.write(conn, batch, done)
                batch = []
        rows.write(conn, batch, done)
    finally:
        conn.close()
    added = keys.merge(key_records)
    done.keys, done.keys_present = added, len(key_records) - added
    return done


class _Rows:
    """Writes imported rows. A row without a call id is known by all its columns: the
    target ends with as many copies as the export has, counting those it held."""

    def __init__(self) -> None:
        self.seen: Counter[tuple] = Counter()  # copies of a row without a call id met so far
        self.held: dict[tuple, int] = {}  # copies the target held before the import

    def write(self, conn: Connection, batch: list[tuple], done: Imported) -> None:
        with conn.transaction():
            for values in batch:
                written = (conn.execute(_UPSERT, values).rowcount if values[_CALL_ID] is not None
                           else self._copy(conn, values))
                done.calls += written
                done.calls_present += 1 - written

    def _copy(self, conn: Connection, values: tuple) -> int:
        self.seen[values] += 1
        if values not in self.held:
            match = " AND ".join(f"{c} {conn.dialect.null_safe_eq if c in NULLABLE else '='} ?"
                                 for c in CALL_COLUMNS)
            self.held[values] = conn.execute(f"SELECT COUNT(*) FROM calls WHERE {match}", values).fetchone()[0]
        if self.seen[values] <= self.held[values]:
            return 0
        conn.execute(_INSERT, values)
        return 1


def _parse(line: str, number: int) -> dict:
    try:
        record = json.loads(line)
    except ValueError:
        record = None
    if not isinstance(record, dict) or record.get("record") not in ("call", "key"):
        raise ValueError(f"line {number} is not a record of `llmfn ledger export`")
    return record


def _call_values(record: dict, number: int) -> tuple:
    missing = [c for c in CALL_COLUMNS if c not in record and c not in NULLABLE]
    if missing:
        raise ValueError(f"line {number}: a call without {', '.join(missing)}")
    return tuple(record.get(c) for c in CALL_COLUMNS)


def _key_fields(key: KeyRecord) -> dict:
    return {"name": key.name, "hash": key.hash, "hint": key.hint, "created": key.created,
            "models": list(key.models) if key.models is not None else None,
            "rpm": key.limits.rpm, "tpm": key.limits.tpm, "daily_tokens": key.limits.daily_tokens,
            "monthly_tokens": key.limits.monthly_tokens, "revoked": key.revoked}


def _key_record(record: dict, number: int) -> KeyRecord:
    try:
        models = record.get("models")
        return KeyRecord(record["name"], record["hash"], record["hint"], record["created"],
                         tuple(models) if models is not None else None,
                         Limits(record.get("rpm"), record.get("tpm"), record.get("daily_tokens"),
                                record.get("monthly_tokens")), record.get("revoked"))
    except (KeyError, TypeError):
        raise ValueError(f"line {number}: a key without its name, hash, hint or creation time") from None
