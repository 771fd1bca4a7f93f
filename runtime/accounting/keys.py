"""API keys: created once (the secret is shown once, only its SHA-256 is kept),
listed, revoked; a name is short, of a safe charset, and never one the gateway
gives callers itself (``anonymous``, ``admin``, the static keys' ``key-N``).

Stored in a SQLite file or in the PostgreSQL database that gateway replicas
share (``runtime.database``). Each gateway keeps an in-memory copy, so a lookup
never touches the database: it re-reads the copy every ``REFRESH_S`` seconds
(off the event loop), which bounds how long a key revoked elsewhere keeps
working here, and ``find`` fetches a key it has not seen yet (created on
another replica) at its first use, at most ``FINDS_PER_S`` times a second.
"""
from __future__ import annotations

import hashlib
import json
import re
import secrets
import threading
import time
from collections.abc import Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path

from runtime.accounting.quotas import Limits
from runtime.database import (
    Connection,
    SharedConnection,
    Target,
    is_postgres,
    migration_lock,
    schema_version,
    set_schema_version,
)

NO_LIMITS = Limits()

KEY_PREFIX = "sk-llmfn-"
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
# Names the gateway gives callers itself: a stored key with one would be mistaken
# for them in the ledger and in usage reports.
RESERVED_NAMES = frozenset({"anonymous", "admin"})
STATIC_NAME = re.compile(r"key-\d+")


def check_key_name(name: object) -> str:
    """The name, or a ValueError saying what a key name may be."""
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise ValueError("a key name is 1 to 64 letters, digits, '.', '_' or '-', starting with a letter "
                         "or a digit")
    if name.lower() in RESERVED_NAMES or STATIC_NAME.fullmatch(name.lower()):
        raise ValueError(f"the key name '{name}' is reserved (anonymous, admin and key-N name the "
                         "gateway's own callers)")
    return name


def key_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True)
class KeyRecord:
    name: str
    hash: str
    hint: str  # the first characters, to tell keys apart in a listing
    created: float
    models: tuple[str, ...] | None = None
    limits: Limits = field(default_factory=Limits)
    revoked: float | None = None

    def public(self) -> dict:
        return {"name": self.name, "hint": self.hint + "…", "created": self.created,
                "models": list(self.models) if self.models is not None else None,
                "rpm": self.limits.rpm, "tpm": self.limits.tpm, "daily_tokens": self.limits.daily_tokens,
                "monthly_tokens": self.limits.monthly_tokens, "revoked": self.revoked}


COMPONENT = "keys"  # its schema version's name
SCHEMA_VERSION = 1
REFRESH_S = 2.0  # every gateway re-reads the keys this often: a revoke reaches all within it
FINDS_PER_S = 10  # unknown keys looked up in the database, at most, per second and gateway
_COLUMNS = ("name", "hash", "hint", "created", "models", "rpm", "tpm", "daily_tokens", "monthly_tokens",
            "revoked")
_SELECT = f"SELECT {', '.join(_COLUMNS)} FROM api_keys"


class KeyStore:
    """The keys at ``target``: a SQLite file (created with a private folder) or a
    ``postgresql://`` URL. One connection, used by one thread at a time."""

    def __init__(self, target: Target):
        self.target = target if is_postgres(target) else Path(target)
        if isinstance(self.target, Path):
            self.target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._shared = SharedConnection(self.target, timeout=10)
        self._finds_lock = threading.Lock()  # guards _finds
        self._finds: list[float] = []  # when the last database lookups of unknown keys ran
        with self._db() as db:
            _migrate(db)
        self._by_hash: dict[str, KeyRecord] = {}
        self._by_name: dict[str, KeyRecord] = {}
        self._revoked: set[str] = set()
        self.reload()

    def _db(self) -> AbstractContextManager[Connection]:
        """The one connection, held for the block; opened again after PostgreSQL dropped it."""
        return self._shared.use()

    def close(self) -> None:
        self._shared.close()

    def create(self, name: str, *, models: list[str] | None = None, limits: Limits = NO_LIMITS) -> str:
        """A new key; the secret is returned once and never stored."""
        check_key_name(name)
        secret = KEY_PREFIX + secrets.token_urlsafe(32)
        with self._db() as db:
            try:
                db.execute(f"INSERT INTO api_keys ({', '.join(_COLUMNS)}) VALUES (?,?,?,?,?,?,?,?,?,NULL)",
                           (name, key_hash(secret), secret[:12], time.time(),
                            json.dumps(models) if models is not None else None,
                            limits.rpm, limits.tpm, limits.daily_tokens, limits.monthly_tokens))
            except db.IntegrityError:
                raise ValueError(f"a key named '{name}' already exists") from None
        self.reload()
        return secret

    def revoke(self, name: str) -> bool:
        with self._db() as db:
            changed = db.execute("UPDATE api_keys SET revoked=? WHERE name=? AND revoked IS NULL",
                                 (time.time(), name)).rowcount
        self.reload()
        return bool(changed)

    def list(self) -> list[KeyRecord]:
        with self._db() as db:
            rows = db.execute(f"{_SELECT} ORDER BY created").fetchall()
        return [_record(r) for r in rows]

    def merge(self, records: Iterable[KeyRecord]) -> int:
        """Add keys of another store (``llmfn ledger import``), hashes as they are:
        a key already here (by name) is left alone, except that a revoke is carried
        over. The number of keys added."""
        added = 0
        with self._db() as db, db.transaction():
            for k in records:
                params = (k.name, k.hash, k.hint, k.created, json.dumps(list(k.models))
                          if k.models is not None else None, k.limits.rpm, k.limits.tpm,
                          k.limits.daily_tokens, k.limits.monthly_tokens, k.revoked)
                added += db.execute(
                    f"INSERT INTO api_keys ({', '.join(_COLUMNS)}) VALUES (?,?,?,?,?,?,?,?,?,?)"
                    " ON CONFLICT (name) DO NOTHING", params).rowcount
                if k.revoked is not None:
                    db.execute("UPDATE api_keys SET revoked = ? WHERE name = ? AND hash = ? AND revoked IS NULL",
                               (k.revoked, k.name, k.hash))
        self.reload()
        return added

    def reload(self) -> None:
        """Refresh the in-memory copy (blocking: run it off the event loop)."""
        keys = self.list()
        by_hash = {k.hash: k for k in keys if k.revoked is None}
        self._by_hash, self._by_name = by_hash, {k.name: k for k in by_hash.values()}
        self._revoked = {k.hash for k in keys if k.revoked is not None}

    def find(self, secret: str) -> KeyRecord | None:
        """A key this copy has not seen, looked up in the database (blocking): a key
        created through another gateway works here at its first use. At most
        ``FINDS_PER_S`` lookups a second, so unknown keys cannot flood the database;
        past that, the key waits for the next refresh."""
        digest = key_hash(secret)
        now = time.monotonic()
        with self._finds_lock:
            self._finds = [t for t in self._finds if now - t < 1.0]
            if len(self._finds) >= FINDS_PER_S:
                return None
            self._finds.append(now)
        with self._db() as db:
            row = db.execute(f"{_SELECT} WHERE hash = ?", (digest,)).fetchone()
        if row is None:
            return None
        record = _record(row)
        if record.revoked is not None:
            self._revoked = self._revoked | {digest}
            return None
        self._by_hash = {**self._by_hash, digest: record}
        self._by_name = {**self._by_name, record.name: record}
        return record

    @property
    def enabled(self) -> bool:
        return bool(self._by_hash)

    @property
    def ever_had_keys(self) -> bool:
        """A key was created here, revoked or not: from then on keys stay required."""
        return bool(self._by_hash or self._revoked)

    def lookup(self, secret: str) -> KeyRecord | None:
        return self._by_hash.get(key_hash(secret))

    def is_revoked(self, secret: str) -> bool:
        return key_hash(secret) in self._revoked

    def active(self) -> list[KeyRecord]:
        """The keys not revoked, as last loaded (no I/O)."""
        return list(self._by_name.values())

    def get(self, name: str) -> KeyRecord | None:
        return self._by_name.get(name)


def _record(r: tuple) -> KeyRecord:
    return KeyRecord(r[0], r[1], r[2], r[3], tuple(json.loads(r[4])) if r[4] else None,
                     Limits(r[5], r[6], r[7], r[8]), r[9])


def _migrate(db: Connection) -> None:
    if schema_version(db, COMPONENT) >= SCHEMA_VERSION:
        return
    with db.transaction():  # two processes opening a new database create the table once
        migration_lock(db, COMPONENT)
        db.execute(f"""CREATE TABLE IF NOT EXISTS api_keys (
            name TEXT PRIMARY KEY, hash TEXT UNIQUE NOT NULL, hint TEXT NOT NULL,
            created {db.dialect.real} NOT NULL, models TEXT, rpm INTEGER, tpm INTEGER,
            daily_tokens INTEGER, monthly_tokens INTEGER, revoked {db.dialect.real})""")
        set_schema_version(db, COMPONENT, SCHEMA_VERSION)
