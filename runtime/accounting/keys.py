"""API keys: created once (the secret is shown once, only its SHA-256 is kept),
listed, revoked; a name is short, of a safe charset, and never one the gateway
gives callers itself (``anonymous``, ``admin``, the static keys' ``key-N``).
Stored in SQLite; the gateway keeps an in-memory copy that it refreshes off the
event loop, so a lookup never touches the disk."""
from __future__ import annotations

import hashlib
import json
import re
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from runtime.accounting.quotas import Limits

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


class KeyStore:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._lock = threading.Lock()
        with self._connect() as db:
            db.execute("""CREATE TABLE IF NOT EXISTS api_keys (
                name TEXT PRIMARY KEY, hash TEXT UNIQUE NOT NULL, hint TEXT NOT NULL,
                created REAL NOT NULL, models TEXT, rpm INTEGER, tpm INTEGER,
                daily_tokens INTEGER, monthly_tokens INTEGER, revoked REAL)""")
        self._by_hash: dict[str, KeyRecord] = {}
        self.reload()

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=10)
        db.execute("PRAGMA journal_mode=WAL")
        return db

    def create(self, name: str, *, models: list[str] | None = None, limits: Limits = NO_LIMITS) -> str:
        """A new key; the secret is returned once and never stored."""
        check_key_name(name)
        secret = KEY_PREFIX + secrets.token_urlsafe(32)
        with self._lock, self._connect() as db:
            try:
                db.execute("INSERT INTO api_keys VALUES (?,?,?,?,?,?,?,?,?,NULL)",
                           (name, key_hash(secret), secret[:12], time.time(),
                            json.dumps(models) if models is not None else None,
                            limits.rpm, limits.tpm, limits.daily_tokens, limits.monthly_tokens))
            except sqlite3.IntegrityError:
                raise ValueError(f"a key named '{name}' already exists") from None
        self.reload()
        return secret

    def revoke(self, name: str) -> bool:
        with self._lock, self._connect() as db:
            changed = db.execute("UPDATE api_keys SET revoked=? WHERE name=? AND revoked IS NULL",
                                 (time.time(), name)).rowcount
        self.reload()
        return bool(changed)

    def list(self) -> list[KeyRecord]:
        with self._connect() as db:
            rows = db.execute("SELECT name, hash, hint, created, models, rpm, tpm, daily_tokens, "
                              "monthly_tokens, revoked FROM api_keys ORDER BY created").fetchall()
        return [KeyRecord(r[0], r[1], r[2], r[3], tuple(json.loads(r[4])) if r[4] else None,
                          Limits(r[5], r[6], r[7], r[8]), r[9]) for r in rows]

    def reload(self) -> None:
        """Refresh the in-memory copy (blocking: run it off the event loop)."""
        keys = self.list()
        self._by_hash = {k.hash: k for k in keys if k.revoked is None}
        self._by_name = {k.name: k for k in self._by_hash.values()}
        self._revoked = {k.hash for k in keys if k.revoked is not None}

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
