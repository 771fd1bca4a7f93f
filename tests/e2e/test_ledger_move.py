"""Moving from the embedded SQLite files to a shared PostgreSQL database with
``llmfn ledger export`` and ``llmfn ledger import``, as docs/accounting.md's
checklist does it: usage reads the same, keys keep working, rows keep their
states, and importing again adds nothing."""
from __future__ import annotations

import json

import pytest

from runtime.accounting.keys import KeyStore
from runtime.accounting.ledger import Ledger
from runtime.errors import AuthenticationFailed
from runtime.gateway.auth import Authenticator, InvocationTokens, StaticKeys
from tests.support.cli import llmfn
from tests.unit.test_ledger import JAN1, admitted, crash_a_gateway, row, utc

PERIOD = ("--from", "2024-01-01", "--to", "2024-01-07")


def _source(data) -> tuple[str, str]:
    """A data dir as a gateway leaves it: refusals (no call id, one of them twice), an
    interrupted call, a key and a revoked key, then a crash with calls in flight."""
    path = data / "ledger.sqlite3"
    ledger = Ledger(path)
    for r in (row(JAN1, prompt=10, completion=5), row(JAN1 + 3600, model="m2", ok=False),
              row(utc("2024-01-03T10:00:00"), service_type="key", resource="team", prompt=7),
              row(JAN1, prompt=1, completion=0), row(JAN1, prompt=1, completion=0)):
        ledger.record(r)
    ledger.admit(admitted("cut", reserved=20)).result(10)
    ledger.close()  # its call in flight is interrupted
    keys = KeyStore(data / "keys.sqlite3")
    secret, gone = keys.create("team", models=["m1"]), keys.create("gone")
    keys.revoke("gone")
    keys.close()
    crash_a_gateway(path)  # "done" ended; "streaming" and "queued" still running
    return secret, gone


def _out(*args, env) -> str:
    done = llmfn(*args, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_a_move_from_sqlite_to_postgres_keeps_usage_keys_and_states(tmp_path, postgres_url):
    old = {"LLMFN_DATA_DIR": str(tmp_path / "data")}
    new = {"LLMFN_DATA_DIR": str(tmp_path / "new"), "LLMFN_DATABASE_URL": postgres_url}
    secret, gone = _source(tmp_path / "data")

    export = _out("ledger", "export", env=old)
    (tmp_path / "ledger.jsonl").write_text(export)
    records = [json.loads(line) for line in export.splitlines()]
    assert [r["record"] for r in records].count("key") == 2
    assert all(secret not in line and gone not in line for line in export.splitlines())
    states = {r["call_id"]: (r["status"], r["error_type"]) for r in records if r["record"] == "call"}
    assert states["streaming"] == ("running", None) and states["cut"] == ("failure", "interrupted")

    first = llmfn("ledger", "import", str(tmp_path / "ledger.jsonl"), env=new, timeout=120)
    assert first.returncode == 0, first.stderr
    assert "imported 9 calls (0 already there) and 2 keys (0 already there)" in first.stderr
    assert _out("ledger", "export", env=new) == export  # every column, every state, in order
    again = llmfn("ledger", "import", "-", stdin=export, env=new, timeout=120)
    assert "imported 0 calls (9 already there) and 0 keys (2 already there)" in again.stderr

    for args in (("usage", "--json", *PERIOD), ("usage", "--json", "--by", "model", *PERIOD),
                 ("usage", "--calls", "--format", "json"), ("keys", "list")):
        assert _out(*args, env=new) == _out(*args, env=old), args

    store = KeyStore(postgres_url)  # what a gateway on the new database reads
    auth = Authenticator(StaticKeys(frozenset()), InvocationTokens(), store=store)
    assert auth.authenticate_token(secret).name == "team"
    with pytest.raises(AuthenticationFailed, match="revoked"):
        auth.authenticate_token(gone)
    store.close()


def test_a_line_that_is_not_an_export_is_refused_by_number(tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"record": "key", "name": "a", "hash": "h", "hint": "x", '
                                        '"created": 1.0}\n{"not": "an export"}\n')
    done = llmfn("ledger", "import", str(tmp_path / "bad.jsonl"), env={"LLMFN_DATA_DIR": str(tmp_path / "d")})
    assert done.returncode == 2 and "line 2" in done.stderr


def test_a_later_export_brings_a_row_imported_while_running_to_its_end(db_target, tmp_path):
    from runtime.accounting.transfer import export_lines, import_lines
    from tests.unit.test_ledger import on_disk

    source, keys = Ledger(tmp_path / "source.sqlite3"), KeyStore(tmp_path / "source-keys.sqlite3")
    source.admit(admitted("c1")).result(10)
    early = list(export_lines(source, keys))
    source.complete(admitted("c1", completion=6, status="success")).result(10)
    late = list(export_lines(source, keys))
    source.close()
    target, target_keys = db_target("ledger.sqlite3"), KeyStore(db_target("keys.sqlite3"))
    assert import_lines(target, target_keys, early).calls == 1
    assert import_lines(target, target_keys, late).calls == 1  # the running twin takes its end
    assert import_lines(target, target_keys, early).calls == 0  # and never goes back
    assert on_disk(target) == {"c1": ("success", None, 10, 6)}
    target_keys.close()
