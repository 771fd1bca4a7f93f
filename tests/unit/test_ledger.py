"""The usage ledger (writer thread, owners, crashes) and the usage reports built
on it, each on a SQLite file and on a real PostgreSQL database (``db_target``)."""
from __future__ import annotations

import asyncio
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from contextlib import closing
from dataclasses import astuple, replace
from datetime import UTC, datetime
from pathlib import Path

import pytest

from runtime.accounting import Ledger, LedgerRow, usage_report
from runtime.accounting.ledger import COLUMNS, SCHEMA_VERSION, committed
from runtime.accounting.quotas import Limits, MemoryCounters, QuotaPolicy
from runtime.accounting.reports import parse_period, render_text
from runtime.accounting.status import CallStatus
from runtime.database import connect
from runtime.errors import LedgerUnavailable, QuotaExhausted
from runtime.gateway.auth import Principal
from runtime.gateway.calls import CallRecord
from tests.support.cli import wait_until
from tests.support.outage import writes_refused

DAY = 86400.0


def utc(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


JAN1 = utc("2024-01-01T00:00:00")


def row(ts: float = JAN1, *, service_type: str = "function", resource: str = "summarize",
        model: str = "gemma", prompt: int = 10, completion: int = 5, cached: int = 0,
        ok: bool = True, latency_ms: float = 100.0, ttft_ms: float | None = 20.0) -> LedgerRow:
    return LedgerRow(ts=ts, service_type=service_type, resource=resource,
                     invocation_id="inv-1" if service_type == "function" else None, model=model,
                     prompt_tokens=prompt, completion_tokens=completion, cached_tokens=cached,
                     status="success" if ok else "failure",
                     error_type=None if ok else "upstream_error",
                     latency_ms=latency_ms, ttft_ms=ttft_ms, request_id="req-1",
                     endpoint="/v1/chat/completions")


@pytest.fixture
def ledger(db_target):
    ledger = Ledger(db_target("ledger.db"))
    yield ledger
    ledger.close()


def count(ledger: Ledger) -> int:
    return ledger.read("SELECT COUNT(*) FROM calls")[0][0]


# -- the ledger ---------------------------------------------------------------

def test_recorded_rows_are_readable_after_flush(ledger):
    written = row(prompt=7, completion=3, cached=2)
    ledger.record(written)
    ledger.flush()
    stored = ledger.read(f"SELECT {', '.join(COLUMNS)} FROM calls")
    assert stored == [astuple(written)]


def test_the_file_is_in_wal_mode(tmp_path):
    ledger = Ledger(tmp_path / "ledger.db")
    assert ledger.read("PRAGMA journal_mode")[0][0] == "wal"
    ledger.close()


def test_a_thousand_rows_recorded_quickly_are_all_written(ledger):
    for i in range(1000):
        ledger.record(row(JAN1 + i))
    ledger.flush()
    assert count(ledger) == 1000
    assert ledger.read("SELECT MIN(ts), MAX(ts) FROM calls")[0] == (JAN1, JAN1 + 999)


def test_the_writer_thread_writes_without_a_flush(db_target):
    ledger = Ledger(db_target("ledger.db"))
    try:
        ledger.record(row())
        # read on a separate connection, which does not flush
        def written() -> bool:
            with closing(connect(ledger.target)) as conn:
                return conn.execute("SELECT COUNT(*) FROM calls").fetchone()[0] == 1

        wait_until(written, 10, step=0.01, message="the writer thread never wrote the row")
    finally:
        ledger.close()


def test_rows_survive_close_and_reopen(db_target):
    path = db_target("ledger.db")
    first = Ledger(path)
    first.record(row(resource="a"))
    first.close()
    second = Ledger(path)
    second.record(row(resource="b"))
    second.flush()
    assert [r[0] for r in second.read("SELECT resource FROM calls ORDER BY resource")] == ["a", "b"]
    second.close()


def test_close_writes_what_is_still_buffered(db_target):
    path = db_target("ledger.db")
    ledger = Ledger(path)
    for i in range(50):
        ledger.record(row(JAN1 + i))
    ledger.close()
    ledger.close()  # idempotent
    reopened = Ledger(path)
    assert count(reopened) == 50
    reopened.close()


def test_record_after_close_is_refused(tmp_path):
    ledger = Ledger(tmp_path / "ledger.db")
    ledger.close()
    with pytest.raises(RuntimeError):
        ledger.record(row())


def call(status: CallStatus, principal: Principal, *, ttft: float | None = 0.05,
         error: str | None = None) -> CallRecord:
    return CallRecord(at=JAN1, principal=principal, model="gemma", endpoint="/v1/chat/completions",
                      status=status, prompt_tokens=12, completion_tokens=4, cached_tokens=3,
                      latency_s=0.25, ttft_s=ttft, request_id="req-9", error=error)


def test_from_call_maps_a_successful_function_call():
    r = LedgerRow.from_call(call(CallStatus.SUCCESS, Principal("function", "summarize", "inv-7")))
    assert (r.service_type, r.resource, r.invocation_id) == ("function", "summarize", "inv-7")
    assert (r.status, r.error_type) == ("success", None)
    assert (r.prompt_tokens, r.completion_tokens, r.cached_tokens) == (12, 4, 3)
    assert r.latency_ms == pytest.approx(250.0) and r.ttft_ms == pytest.approx(50.0)
    assert (r.ts, r.model, r.request_id, r.endpoint) == (JAN1, "gemma", "req-9",
                                                         "/v1/chat/completions")


def test_from_call_maps_an_error_to_a_failure_with_its_code():
    r = LedgerRow.from_call(call(CallStatus.ERROR, Principal("key", "key-0"), ttft=None,
                                 error="context_length_exceeded"))
    assert (r.service_type, r.resource, r.invocation_id) == ("key", "key-0", None)
    assert (r.status, r.error_type, r.ttft_ms) == ("failure", "context_length_exceeded", None)


def test_from_call_keeps_the_tokens_of_a_cancelled_stream():
    r = LedgerRow.from_call(call(CallStatus.CANCELLED, Principal("anonymous", "anonymous")))
    assert (r.service_type, r.resource) == ("key", "anonymous")
    assert (r.status, r.error_type) == ("failure", "cancelled")
    assert (r.prompt_tokens, r.completion_tokens) == (12, 4)


def test_totals_per_resource_model_and_period(ledger):
    ledger.record(row(JAN1, resource="a", model="m1", prompt=10, completion=5))
    ledger.record(row(JAN1 + DAY, resource="a", model="m1", prompt=20, completion=1))
    ledger.record(row(JAN1 + DAY, resource="a", model="m2", prompt=100, completion=0))
    ledger.record(row(JAN1 + DAY, resource="b", model="m1", prompt=1000, completion=0))
    # buffered rows count: totals flushes first
    assert ledger.totals("a", None, JAN1) == 136
    assert ledger.totals("a", "m1", JAN1) == 36
    assert ledger.totals("a", "m1", JAN1 + DAY) == 21
    assert ledger.totals("a", "m3", JAN1) == 0
    assert ledger.totals("nobody", None, JAN1) == 0


def test_totals_can_tell_a_function_from_a_key_of_the_same_name(ledger):
    ledger.record(row(service_type="function", resource="same", prompt=1, completion=0))
    ledger.record(row(service_type="key", resource="same", prompt=10, completion=0))
    assert ledger.totals("same", None, 0) == 11
    assert ledger.totals("same", None, 0, service_type="key") == 10


# -- a call's life: admitted, progressing, ended; crashes and full disks --------

def admitted(call_id: str, *, resource: str = "k", reserved: int = 100, prompt: int = 10,
             completion: int = 0, status: str = "running") -> LedgerRow:
    return LedgerRow(ts=time.time(), service_type="key", resource=resource, invocation_id=None,
                     model="gemma", prompt_tokens=prompt, completion_tokens=completion,
                     cached_tokens=0, status=status, error_type=None, latency_ms=1.0, ttft_ms=None,
                     request_id=f"req-{call_id}", endpoint="completions", call_id=call_id,
                     reserved_tokens=reserved)


def on_disk(target) -> dict[str, tuple]:
    """call id -> (status, error_type, prompt, completion), read on a connection of its own."""
    with closing(connect(target)) as conn:
        return {r[0]: r[1:] for r in conn.execute(
            "SELECT call_id, status, error_type, prompt_tokens, completion_tokens FROM calls")}


def test_an_admitted_call_is_on_disk_before_admit_returns(ledger):
    ledger.admit(admitted("c1")).result(10)
    assert on_disk(ledger.target) == {"c1": ("running", None, 10, 0)}


def test_the_end_of_a_call_replaces_its_admitted_row(ledger):
    ledger.admit(admitted("c1")).result(10)
    ledger.complete(admitted("c1", completion=5, status="success")).result(10)
    assert on_disk(ledger.target) == {"c1": ("success", None, 10, 5)}


def test_the_end_of_a_call_writes_every_figure_it_ended_with(ledger):
    start = admitted("c1")
    ledger.admit(start).result(10)
    end = replace(start, status="failure", error_type="upstream_error", prompt_tokens=12,
                  completion_tokens=7, cached_tokens=4, latency_ms=250.0, ttft_ms=30.0)
    ledger.complete(end).result(10)
    stored = ledger.read(f"SELECT {', '.join(COLUMNS)} FROM calls")
    assert stored == [astuple(end)]


def test_an_end_whose_admission_was_never_written_is_still_a_row(ledger):
    ledger.complete(admitted("c9", completion=2, status="success")).result(10)
    assert on_disk(ledger.target) == {"c9": ("success", None, 10, 2)}


def test_the_end_of_a_call_on_an_idle_sqlite_ledger_is_committed_before_complete_returns(tmp_path):
    # no hand-off to the writer thread and back: the end is on the response's path
    ledger = Ledger(tmp_path / "ledger.db")
    ledger.admit(admitted("c1")).result(10)
    done = ledger.complete(admitted("c1", completion=5, status="success"))
    assert done.done() and done.exception() is None
    assert on_disk(ledger.target) == {"c1": ("success", None, 10, 5)}
    ledger.close()


def test_an_end_never_waits_for_another_process_holding_the_sqlite_file(tmp_path):
    ledger = Ledger(tmp_path / "ledger.db")
    ledger.admit(admitted("c1")).result(10)
    with closing(sqlite3.connect(tmp_path / "ledger.db", isolation_level=None)) as other:
        other.execute("BEGIN IMMEDIATE")  # another process writing (an import, a replica)
        t = time.monotonic()
        done = ledger.complete(admitted("c1", completion=5, status="success"))
        assert time.monotonic() - t < 2.5  # it did not sit out the 5 s busy timeout
        assert not done.done()  # queued for the writer thread, which waits for the lock
        other.execute("COMMIT")
    done.result(10)
    assert on_disk(ledger.target) == {"c1": ("success", None, 10, 5)}
    ledger.close()


def test_an_end_that_cannot_be_written_at_once_is_reported_by_the_writer(tmp_path):
    ledger = Ledger(tmp_path / "ledger.db")
    ledger.admit(admitted("c1")).result(10)
    with writes_refused(ledger):
        for i in range(400):  # admissions fill the "disk"; then an end
            try:
                ledger.admit(admitted(f"fill{i}")).result(10)
            except LedgerUnavailable:
                break
        ledger.complete(admitted("c1", completion=5, status="success"))
        # a new row for a call whose admission was lost cannot fit either
        with pytest.raises(LedgerUnavailable):
            ledger.complete(admitted("lost", completion=1, status="success")).result(10)
    ledger.complete(admitted("lost", completion=1, status="success")).result(10)
    assert on_disk(ledger.target)["lost"] == ("success", None, 10, 1)
    ledger.close()


def test_progress_updates_a_running_row_and_never_an_ended_one(ledger):
    ledger.admit(admitted("a")).result(10)
    ledger.admit(admitted("b")).result(10)
    ledger.progress(admitted("a", completion=7))
    ledger.complete(admitted("b", completion=3, status="success")).result(10)
    ledger.progress(admitted("b", completion=99))  # late: b has ended
    ledger.flush()
    assert on_disk(ledger.target) == {"a": ("running", None, 10, 7), "b": ("success", None, 10, 3)}


async def test_concurrent_admissions_share_commits_off_the_event_loop(db_target, monkeypatch):
    ledger = Ledger(db_target("ledger.db"))
    commits = []
    slow = ledger._commit

    def commit(ops, progress):  # a slow disk: 300 ms a transaction
        time.sleep(0.3)
        commits.append(len(ops))
        slow(ops, progress)

    monkeypatch.setattr(ledger, "_commit", commit)
    gaps, stop = [], asyncio.Event()

    async def ticker():
        while not stop.is_set():
            t = time.monotonic()
            await asyncio.sleep(0.005)
            gaps.append(time.monotonic() - t)

    tick = asyncio.create_task(ticker())
    await asyncio.gather(*(committed(ledger.admit(admitted(f"c{i}"))) for i in range(200)))
    stop.set()
    await tick
    ledger.close()
    assert sum(commits) == 200 and len(commits) <= 5, commits  # group commit, not 200 commits
    # the loop kept running while the writer waited on the disk: it ticked all through the
    # commits' 300 ms each, where commits on the loop would have left it a tick or two
    assert len(gaps) >= 20 * len(commits), (len(gaps), commits)


def test_a_database_that_cannot_write_refuses_admission_with_a_503_and_recovers(ledger):
    # a full disk for a SQLite file; a PostgreSQL database that is down
    with writes_refused(ledger), pytest.raises(LedgerUnavailable) as exc:
        for i in range(2000):
            ledger.admit(admitted(f"c{i}")).result(10)
    err = exc.value
    assert err.status == 503
    if ledger.dialect.name == "sqlite":
        assert "full" in err.message  # a PostgreSQL outage reads as the driver says (refused, closed)
    assert set(err.body()["error"]) == {"message", "type", "param", "code"}
    assert err.body()["error"]["code"] == "ledger_unavailable"
    assert not ledger.healthy
    ledger.admit(admitted("after")).result(10)
    assert on_disk(ledger.target)["after"][0] == "running"


def test_the_write_backlog_is_bounded(db_target, monkeypatch):
    ledger = Ledger(db_target("ledger.db"), max_pending=5)
    gate = threading.Event()
    commit = ledger._commit
    monkeypatch.setattr(ledger, "_commit", lambda ops, progress: (gate.wait(10), commit(ops, progress)))
    first = ledger.admit(admitted("first"))  # the writer takes it and blocks on the disk
    wait_until(lambda: not ledger._ops, 5, step=0.01)
    queued = [ledger.admit(admitted(f"c{i}")) for i in range(5)]
    with pytest.raises(LedgerUnavailable, match="behind"):
        ledger.admit(admitted("one too many"))
    ledger.record(row())  # a refusal row is dropped, not buffered
    assert ledger.dropped == 1
    gate.set()
    for fut in [first, *queued]:
        fut.result(10)
    ledger.close()
    assert len(on_disk(ledger.target)) == 6


CRASHING_GATEWAY = """
import os, signal, sys, time
sys.path.insert(0, sys.argv[2])
from runtime.accounting.ledger import Ledger
from tests.unit.test_ledger import admitted
ledger = Ledger(sys.argv[1])
for name in ("done", "streaming", "queued"):
    ledger.admit(admitted(name, reserved=40)).result(10)
ledger.progress(admitted("streaming", completion=7))
ledger.complete(admitted("done", completion=9, status="success")).result(10)
ledger.flush()
os.kill(os.getpid(), signal.SIGKILL)
"""


def crash_a_gateway(path) -> None:
    """A process that admits calls on the ledger at ``path`` and is SIGKILLed mid-way."""
    root = str(Path(__file__).resolve().parents[2])
    proc = subprocess.run([sys.executable, "-c", CRASHING_GATEWAY, str(path), root],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr


def test_calls_in_flight_at_a_crash_are_marked_interrupted_at_the_next_start(db_target, tmp_path):
    path = db_target("ledger.db")
    crash_a_gateway(path)
    assert on_disk(path)["streaming"][0] == "running"
    ledger = Ledger(path)
    assert ledger.recovered == 2
    assert on_disk(path) == {"done": ("success", None, 10, 9),
                             "streaming": ("failure", "interrupted", 10, 7),
                             "queued": ("failure", "interrupted", 10, 0)}
    r = usage_report(ledger, since=time.time() - DAY, until=time.time() + 1)["totals"]
    assert (r["calls"], r["success"], r["failure"], r["output_tokens"]) == (3, 1, 2, 16)
    ledger.close()
    assert not list(tmp_path.glob("ledger.db.owners/*.lock"))  # a dead one's lock file is gone


def test_a_budget_spent_by_calls_in_flight_stays_spent_after_a_crash(db_target):
    path = db_target("ledger.db")
    crash_a_gateway(path)  # 10 + 9 finished; two calls in flight had reserved 40 each
    ledger = Ledger(path)
    assert ledger.totals("k", "gemma", 0) == 19 + 40 + 40

    async def spent_since(kind, resource, model, since):
        return ledger.totals(resource, model, since, service_type=kind)

    policy = QuotaPolicy(MemoryCounters(), spent_since=spent_since)
    with pytest.raises(QuotaExhausted):
        asyncio.run(policy.reserve("key", "k", "gemma", Limits(daily_tokens=90), 1))
    ledger.close()


def test_a_live_gateways_calls_in_flight_are_left_alone(db_target):
    path = db_target("ledger.db")
    live = Ledger(path)
    live.admit(admitted("mine")).result(10)
    other = Ledger(path)  # a second gateway (or `llmfn usage`) on the same file
    assert other.recovered == 0 and on_disk(path)["mine"][0] == "running"
    other.close()
    live.complete(admitted("mine", completion=1, status="success")).result(10)
    live.close()
    assert on_disk(path)["mine"][0] == "success"


def test_a_replica_that_lost_its_owner_lock_is_taken_for_dead(db_target):
    path = db_target("ledger.db")
    live, dying = Ledger(path), Ledger(path)  # two gateways sharing one ledger
    live.admit(admitted("live")).result(10)
    dying.admit(admitted("dying", reserved=30)).result(10)
    third = Ledger(path)
    assert third.recovered == 0  # both alive: a third opening marks nothing
    third.close()
    dying._owners.release()  # its process is gone: lock file, or advisory lock session, lost
    opened = Ledger(path)
    assert opened.recovered == 1
    assert on_disk(path) == {"live": ("running", None, 10, 0), "dying": ("failure", "interrupted", 10, 0)}
    assert opened.totals("k", None, 0) == 100 + 30  # both still count their reservations
    for ledger in (opened, dying, live):
        ledger.close()


def test_a_clean_close_marks_its_own_unfinished_calls_interrupted(db_target):
    ledger = Ledger(db_target("ledger.db"))
    ledger.admit(admitted("left")).result(10)
    ledger.close()
    assert on_disk(ledger.target) == {"left": ("failure", "interrupted", 10, 0)}


def test_reports_leave_out_calls_still_in_flight(ledger):
    ledger.admit(admitted("flying")).result(10)
    ledger.record(row(time.time(), resource="k"))
    totals = usage_report(ledger, since=time.time() - DAY, until=time.time() + 1)["totals"]
    assert (totals["calls"], totals["failure"]) == (1, 0)


OLD_FORMAT = """
CREATE TABLE calls (ts REAL NOT NULL, service_type TEXT NOT NULL, resource TEXT NOT NULL,
    invocation_id TEXT, model TEXT NOT NULL, prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL, cached_tokens INTEGER NOT NULL, status TEXT NOT NULL,
    error_type TEXT, latency_ms REAL NOT NULL, ttft_ms REAL, request_id TEXT NOT NULL,
    endpoint TEXT NOT NULL);
CREATE INDEX calls_ts ON calls (ts);
CREATE INDEX calls_resource_model_ts ON calls (resource, model, ts);
"""


def test_a_ledger_of_the_previous_format_opens_reports_and_takes_new_calls(tmp_path):
    path = tmp_path / "ledger.sqlite3"
    with closing(sqlite3.connect(path)) as conn:
        conn.executescript(OLD_FORMAT)
        conn.executemany("INSERT INTO calls VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                         [astuple(row(JAN1, prompt=10, completion=5))[:14],
                          astuple(row(JAN1 + 60, prompt=3, completion=0, ok=False))[:14]])
        conn.commit()
    ledger = Ledger(path)
    assert ledger.read("PRAGMA user_version")[0][0] == SCHEMA_VERSION
    r = usage_report(ledger, since=JAN1, until=JAN1 + DAY)["totals"]
    assert (r["calls"], r["success"], r["failure"], r["input_tokens"]) == (2, 1, 1, 13)
    assert ledger.totals("summarize", None, JAN1) == 18
    ledger.admit(admitted("new")).result(10)
    ledger.close()
    again = Ledger(path)  # opening a migrated file again changes nothing
    assert again.read("SELECT COUNT(*) FROM calls")[0][0] == 3
    again.close()


# -- reports ------------------------------------------------------------------

@pytest.fixture
def week(ledger):
    """Known data over Jan 1-7 2024: calls on Jan 1, 2 and 4 only."""
    rows = [
        row(utc("2024-01-01T01:00:00"), model="m1", prompt=10, completion=5, cached=2,
            latency_ms=100, ttft_ms=10),
        row(utc("2024-01-01T05:00:00"), model="m1", prompt=20, completion=5,
            latency_ms=300, ttft_ms=30),
        row(utc("2024-01-01T23:59:59"), model="m2", prompt=30, completion=0, ok=False,
            latency_ms=200, ttft_ms=None),
        row(utc("2024-01-02T12:00:00"), service_type="key", resource="key-0", model="m2",
            prompt=40, completion=10, latency_ms=50, ttft_ms=5),
        row(utc("2024-01-02T13:00:00"), service_type="key", resource="key-0", model="m1",
            prompt=50, completion=10, latency_ms=70, ttft_ms=7),
        row(utc("2024-01-04T00:00:00"), model="m1", prompt=1, completion=1, ok=False,
            latency_ms=10, ttft_ms=None),
        # outside the period on both sides
        row(utc("2023-12-31T23:59:59"), prompt=999),
        row(utc("2024-01-08T00:00:00"), prompt=999),
    ]
    for r in rows:
        ledger.record(r)
    return ledger


def report(ledger, **kw):
    return usage_report(ledger, since=utc("2024-01-01T00:00:00"),
                        until=utc("2024-01-08T00:00:00"), **kw)


def test_report_by_day_fills_every_day_of_the_period(week):
    rows = report(week)["rows"]
    assert [r["day"] for r in rows] == [f"2024-01-0{d}" for d in range(1, 8)]
    empty = rows[2]
    assert empty["calls"] == empty["input_tokens"] == 0 and empty["p50_latency_ms"] is None


def test_report_by_day_counts_success_failure_and_tokens(week):
    jan1, jan2, _, jan4 = report(week)["rows"][:4]
    assert (jan1["calls"], jan1["success"], jan1["failure"]) == (3, 2, 1)
    assert (jan1["input_tokens"], jan1["output_tokens"], jan1["cached_tokens"]) == (60, 10, 2)
    assert jan1["avg_tokens_per_request"] == pytest.approx(70 / 3, abs=0.01)
    assert (jan2["calls"], jan2["success"], jan2["failure"]) == (2, 2, 0)
    assert (jan4["calls"], jan4["failure"]) == (1, 1)


def test_report_p50s_are_exact_medians(week):
    jan1, jan2 = report(week)["rows"][:2]
    assert jan1["p50_latency_ms"] == 200  # middle of 100, 200, 300
    assert jan1["p50_ttft_ms"] == 20  # mean of the two middles of 10, 30 (a failure had none)
    assert jan2["p50_latency_ms"] == 60  # mean of 50, 70
    totals = report(week)["totals"]
    assert totals["p50_latency_ms"] == 85  # 10, 50, 70 | 100, 200, 300
    assert totals["p50_ttft_ms"] == 8.5  # 5, 7 | 10, 30


def test_report_totals_and_echoed_filters(week):
    r = report(week, service_type="function")
    assert r["totals"]["calls"] == 4
    assert r["totals"]["input_tokens"] == 61 and r["totals"]["output_tokens"] == 11
    assert r["filters"] == {"service_type": "function", "resource": None, "model": None}
    assert r["period"] == {"from": "2024-01-01", "to": "2024-01-07"}
    assert r["by"] == "day"


def test_report_by_model(week):
    rows = report(week, by="model")["rows"]
    assert [(r["model"], r["calls"], r["success"], r["failure"]) for r in rows] == [
        ("m1", 4, 3, 1), ("m2", 2, 1, 1)]
    assert rows[0]["input_tokens"] == 81 and rows[0]["p50_latency_ms"] == 85  # 10 70 | 100 300


def test_report_by_resource(week):
    rows = report(week, by="resource")["rows"]
    assert [(r["service_type"], r["resource"], r["calls"]) for r in rows] == [
        ("function", "summarize", 4), ("key", "key-0", 2)]


def test_report_always_carries_the_model_and_resource_tables(week):
    r = report(week)
    assert {m["model"] for m in r["per_model"]} == {"m1", "m2"}
    assert {x["resource"] for x in r["per_resource"]} == {"summarize", "key-0"}


def test_report_filters_by_resource_and_model(week):
    r = report(week, resource="key-0", model="m1")
    assert r["totals"]["calls"] == 1 and r["totals"]["input_tokens"] == 50
    assert r["per_resource"] == [{**r["per_resource"][0], "resource": "key-0"}]
    assert report(week, model="none")["totals"]["calls"] == 0


def test_report_refuses_bad_arguments(week):
    with pytest.raises(ValueError):
        report(week, by="week")
    with pytest.raises(ValueError):
        report(week, service_type="vm")


def test_render_text_shows_every_row_and_the_totals(week):
    text = render_text(report(week))
    lines = text.splitlines()
    assert "2024-01-01 .. 2024-01-07" in lines[0]
    assert sum(line.startswith("2024-01-0") for line in lines) == 7
    total = next(line for line in lines if line.startswith("total")).split()
    assert total[1:4] == ["6", "4", "2"]  # calls, success, failure
    assert total[4:7] == ["151", "31", "2"]  # input, output, cached


def test_render_text_by_resource(week):
    text = render_text(report(week, by="resource"))
    assert "function:summarize" in text and "key:key-0" in text


# -- periods -----------------------------------------------------------------

NOW = utc("2024-05-31T15:30:00")


def test_period_in_days_ends_now_and_covers_whole_days():
    assert parse_period("7d", None, None, NOW) == (utc("2024-05-25T00:00:00"), NOW)


def test_period_in_weeks():
    assert parse_period("2w", None, None, NOW) == (utc("2024-05-18T00:00:00"), NOW)


def test_period_in_months_is_calendar_months():
    assert parse_period("3m", None, None, NOW) == (utc("2024-03-01T00:00:00"), NOW)
    assert parse_period("1m", None, None, NOW) == (utc("2024-05-01T00:00:00"), NOW)


def test_period_defaults_to_seven_days():
    assert parse_period(None, None, None, NOW) == parse_period("7d", None, None, NOW)


def test_period_from_iso_dates_includes_the_last_day():
    assert parse_period(None, "2024-01-01", "2024-01-07", NOW) == (
        utc("2024-01-01T00:00:00"), utc("2024-01-08T00:00:00"))
    assert parse_period(None, "2024-05-30", None, NOW) == (utc("2024-05-30T00:00:00"), NOW)
    assert parse_period(None, "2024-05-30T12:00:00Z", None, NOW)[0] == utc("2024-05-30T12:00:00")


@pytest.mark.parametrize("since,from_,to", [
    ("4m", None, None), ("93d", None, None), ("14w", None, None),
    (None, "2024-01-01", "2024-05-01"),
])
def test_periods_over_three_months_are_refused(since, from_, to):
    with pytest.raises(ValueError, match="3 months"):
        parse_period(since, from_, to, NOW)


def test_ninety_days_is_allowed():
    since, until = parse_period("90d", None, None, NOW)
    assert until - since < 90 * DAY


@pytest.mark.parametrize("since,from_,to", [
    ("yesterday", None, None), ("0d", None, None), ("7d", "2024-01-01", None),
    (None, "2024-02-01", "2024-01-01"),
])
def test_bad_periods_are_refused(since, from_, to):
    with pytest.raises(ValueError):
        parse_period(since, from_, to, NOW)
