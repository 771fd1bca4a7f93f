"""The stores' one SQL layer, on a SQLite file and on a real PostgreSQL server."""
from __future__ import annotations

import threading

import pytest

from runtime.database import (
    DatabaseUnavailable,
    connect,
    is_postgres,
    migration_lock,
    redact,
    schema_version,
    set_schema_version,
)


def test_a_url_in_a_message_never_carries_its_password():
    assert redact("postgresql://llmfn:s3cret@db.internal:5432/llmfn") == \
        "postgresql://llmfn:***@db.internal:5432/llmfn"
    assert redact("postgresql://db.internal/llmfn") == "postgresql://db.internal/llmfn"
    assert is_postgres("postgres://x/y") and is_postgres("postgresql://x/y")
    assert not is_postgres("/var/lib/llmfn/ledger.db")


def test_the_same_sql_runs_on_both_databases(db_target):
    conn = connect(db_target("t.db"))
    d = conn.dialect
    conn.execute(f"CREATE TABLE t (name TEXT PRIMARY KEY, at {d.real} NOT NULL, n INTEGER, note TEXT)")
    with conn.transaction():
        conn.executemany("INSERT INTO t VALUES (?, ?, ?, ?)",
                         [("a", 1_700_000_000.123456, 3, None), ("b", 2.5, 7, "100%")])
    # a timestamp keeps its microseconds (PostgreSQL's REAL would round it)
    assert conn.execute("SELECT at FROM t WHERE name = ?", ("a",)).fetchone()[0] == 1_700_000_000.123456
    assert conn.execute(f"SELECT {d.max2('n', '5')} FROM t ORDER BY name").fetchall() == [(5,), (7,)]
    assert conn.execute(f"SELECT name FROM t WHERE note {d.null_safe_eq} ?", (None,)).fetchall() == [("a",)]
    assert conn.execute("SELECT note FROM t WHERE note LIKE '%\\%' ESCAPE '\\' AND n = ?", (7,)).fetchall() \
        == [("100%",)]
    with pytest.raises(conn.IntegrityError):
        conn.execute("INSERT INTO t VALUES (?, ?, ?, ?)", ("a", 0.0, 0, None))
    assert not conn.in_transaction


def test_a_failed_transaction_leaves_nothing(db_target):
    conn = connect(db_target("t.db"))
    conn.execute("CREATE TABLE t (name TEXT PRIMARY KEY)")
    with pytest.raises(conn.IntegrityError), conn.transaction():
        conn.execute("INSERT INTO t VALUES (?)", ("x",))
        conn.execute("INSERT INTO t VALUES (?)", ("x",))
    assert conn.execute("SELECT COUNT(*) FROM t").fetchone()[0] == 0
    assert not conn.in_transaction


def test_schema_versions_are_kept_per_component_and_migrated_once(db_target):
    target = db_target("t.db")
    migrated, errors = [], []

    def migrate(component: str) -> None:
        try:
            _migrate(component)
        except Exception as exc:  # noqa: BLE001 - the test reports it
            errors.append(exc)

    def _migrate(component: str) -> None:
        conn = connect(target)
        with conn.transaction():
            migration_lock(conn, component)
            if schema_version(conn, component) < 2:
                migrated.append(component)
                set_schema_version(conn, component, 2)
        conn.close()

    threads = [threading.Thread(target=migrate, args=("ledger",)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and migrated == ["ledger"]
    conn = connect(target)
    assert schema_version(conn, "ledger") == 2
    if conn.postgres:  # one database holds every store: each keeps its own version
        assert schema_version(conn, "keys") == 0


def test_a_postgres_server_that_refuses_is_named_without_the_password(postgres_server):
    url = postgres_server.url("postgres").replace("postgres@", "postgres:hunter2@").replace(
        f":{postgres_server.port}/", ":1/")
    with pytest.raises(DatabaseUnavailable) as err:
        connect(url, timeout=1)
    assert "hunter2" not in str(err.value) and "***" in str(err.value)
    assert "refused" in str(err.value).lower()  # why, as the driver says it


def test_serve_on_an_unreachable_database_says_so_in_one_line_without_the_password(tmp_path):
    from tests.support.cli import free_port, llmfn

    url = f"postgresql://llmfn:hunter2@127.0.0.1:{free_port()}/llmfn"
    cp = llmfn("serve", "--gateway-port", "0", "--api-port", "0", "--lambda-port", "0", "--data-dir",
               str(tmp_path / "data"), env={"LLMFN_DATABASE_URL": url}, timeout=60)
    assert cp.returncode == 2
    assert "cannot connect to postgresql://llmfn:***@127.0.0.1" in cp.stderr
    assert "Traceback" not in cp.stderr and "hunter2" not in cp.stderr
