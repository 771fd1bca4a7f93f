"""Who owns the ledger's rows in flight: each gateway process that admits calls
is an owner (a random id written beside its ``running`` rows) and holds a lock
for as long as it lives, so that a ledger opened elsewhere can tell the rows of
a dead gateway (to mark interrupted) from those of a live one (left alone).

- ``LockFiles``: beside a SQLite file, ``<ledger>.owners/<id>.lock``, held with
  ``flock`` (the kernel lets go of it when the process dies).
- ``AdvisoryLocks``: on PostgreSQL, a session advisory lock per owner, held on
  a connection of its own (the server lets go of it when that session ends:
  the process died, or its connection was cut).

They only answer "alive or dead"; marking the rows is the ledger's.
"""
from __future__ import annotations

import fcntl
import hashlib
import os
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Protocol

from runtime.database import Connection, connect


class Owners(Protocol):
    def hold(self, owner_id: str) -> None:
        """Take ``owner_id``'s lock before its first running row is written (no I/O
        once it is held)."""

    def recheck(self) -> None:
        """The database was out of reach: make sure the lock survived, or let the
        next ``hold`` take it again."""

    def dead(self, owner: str | None) -> AbstractContextManager[bool]:
        """Whether ``owner`` is gone; a dead one stays locked by us inside the block."""

    def sweep(self) -> None:
        """Forget owners that died with nothing in flight."""

    def release(self) -> None:
        """Let go of our lock (after our rows were marked)."""


class LockFiles:
    """Owners of a SQLite ledger: one lock file each, beside the ledger file."""

    def __init__(self, ledger: Path):
        self.dir = ledger.with_name(ledger.name + ".owners")
        self._fd: int | None = None
        self._owner: str | None = None

    def hold(self, owner_id: str) -> None:
        if self._fd is not None:
            return
        self.dir.mkdir(mode=0o700, exist_ok=True)
        # locked under a temporary name, then renamed: nobody sees it unlocked
        tmp = self.dir / f".{owner_id}.tmp"
        fd = os.open(tmp, os.O_CREAT | os.O_RDWR, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.rename(tmp, self.dir / f"{owner_id}.lock")
        self._fd, self._owner = fd, owner_id

    def recheck(self) -> None:
        """A file lock outlives any database trouble."""

    @contextmanager
    def dead(self, owner: str | None) -> Iterator[bool]:
        """A missing or unlocked lock file is a dead owner; its file goes once its
        rows are marked."""
        if owner is None or "/" in owner:
            yield owner is None
            return
        lock = self.dir / f"{owner}.lock"
        try:
            fd = os.open(lock, os.O_RDWR)
        except FileNotFoundError:
            yield True
            return
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            yield True
            lock.unlink(missing_ok=True)
        finally:
            os.close(fd)

    def sweep(self) -> None:
        if not self.dir.is_dir():
            return
        for lock in self.dir.glob("*.lock"):
            with self.dead(lock.stem):
                pass

    def release(self) -> None:
        if self._fd is None:
            return
        (self.dir / f"{self._owner}.lock").unlink(missing_ok=True)
        os.close(self._fd)
        self._fd = None


class AdvisoryLocks:
    """Owners of a PostgreSQL ledger: ``pg_try_advisory_lock`` on a session of
    this process's own, which no query ever waits on."""

    def __init__(self, target: str):
        self.target = target
        self._conn: Connection | None = None
        self._key: int | None = None

    def hold(self, owner_id: str) -> None:
        if self._key is not None:
            return
        conn = self._session()
        if not conn.execute("SELECT pg_try_advisory_lock(?)", (owner_key(owner_id),)).fetchone()[0]:
            raise RuntimeError(f"another session holds the ledger owner lock of {owner_id}")
        self._key = owner_key(owner_id)

    @contextmanager
    def dead(self, owner: str | None) -> Iterator[bool]:
        if owner is None:
            yield True
            return
        key = owner_key(owner)
        conn = self._session()
        if not conn.execute("SELECT pg_try_advisory_lock(?)", (key,)).fetchone()[0]:
            yield False
            return
        try:
            yield True
        finally:
            conn.execute("SELECT pg_advisory_unlock(?)", (key,))

    def recheck(self) -> None:
        if self._key is not None and not self._alive():
            self._drop()  # the session and its lock are gone: the next hold takes a new one

    def sweep(self) -> None:
        """Nothing to sweep: a dead session's locks are gone with it."""

    def release(self) -> None:
        self._drop()

    def _alive(self) -> bool:
        """Our session still holds the lock: it answers (a cut connection lost it)."""
        try:
            self._conn.execute("SELECT 1")
        except self._conn.Error:
            return False
        return True

    def _session(self) -> Connection:
        if self._conn is None or self._conn.lost:
            self._conn = connect(self.target)
            self._key = None
        return self._conn

    def _drop(self) -> None:
        if self._conn is not None:
            self._conn.close()  # ends the session: the server lets go of its locks
        self._conn, self._key = None, None


def owner_key(owner: str) -> int:
    """The advisory lock key of an owner id: 64 bits of its hash, signed as PostgreSQL's bigint."""
    return int.from_bytes(hashlib.sha256(f"llmfn-ledger-owner:{owner}".encode()).digest()[:8], "big",
                          signed=True)
