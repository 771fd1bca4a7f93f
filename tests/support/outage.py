"""A ledger's database that stops taking writes, then mends: a full disk for a
SQLite file; for PostgreSQL a database that refuses new connections and drops
the ones it has (what a server that is down or restarting looks like to a
gateway)."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import closing, contextmanager
from urllib.parse import urlsplit

from runtime.accounting.ledger import Ledger


@contextmanager
def writes_refused(ledger: Ledger) -> Iterator[None]:
    if ledger.dialect.name == "sqlite":
        with _disk_full(ledger):
            yield
        return
    with _database_down(str(ledger.target)):
        yield


@contextmanager
def _disk_full(ledger: Ledger) -> Iterator[None]:
    # the limit is per connection: the writer thread's, and the one that commits ends at once
    writers = [c for c in (ledger._writer, ledger._direct) if c is not None]
    pages = writers[0].execute("PRAGMA page_count").fetchone()[0]
    for writer in writers:
        writer.execute(f"PRAGMA max_page_count = {pages}")
    try:
        yield
    finally:
        for writer in writers:
            writer.execute("PRAGMA max_page_count = 1073741823")


@contextmanager
def _database_down(url: str) -> Iterator[None]:
    import psycopg

    name = urlsplit(url).path.lstrip("/")
    admin = urlsplit(url)._replace(path="/postgres").geturl()
    with closing(psycopg.connect(admin, autocommit=True)) as conn:
        conn.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
        try:
            yield
        finally:
            conn.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
