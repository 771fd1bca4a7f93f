"""The usage ledger (SQLite, writer thread) and the usage reports built on it."""
from __future__ import annotations

import sqlite3
import time
from contextlib import closing
from dataclasses import astuple
from datetime import datetime, timezone

import pytest

from runtime.accounting import Ledger, LedgerRow, usage_report
from runtime.accounting.reports import parse_period, render_text
from runtime.gateway.auth import Principal
from runtime.gateway.calls import CallRecord

DAY = 86400.0


def utc(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=timezone.utc).timestamp()


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
def ledger(tmp_path):
    ledger = Ledger(tmp_path / "ledger.db")
    yield ledger
    ledger.close()


def count(ledger: Ledger) -> int:
    return ledger.read("SELECT COUNT(*) FROM calls")[0][0]


# -- the ledger ---------------------------------------------------------------

def test_recorded_rows_are_readable_after_flush(ledger):
    written = row(prompt=7, completion=3, cached=2)
    ledger.record(written)
    ledger.flush()
    stored = ledger.read("SELECT * FROM calls")
    assert stored == [astuple(written)]


def test_the_file_is_in_wal_mode(ledger):
    assert ledger.read("PRAGMA journal_mode")[0][0] == "wal"


def test_a_thousand_rows_recorded_quickly_are_all_written(ledger):
    for i in range(1000):
        ledger.record(row(JAN1 + i))
    ledger.flush()
    assert count(ledger) == 1000
    assert ledger.read("SELECT MIN(ts), MAX(ts) FROM calls")[0] == (JAN1, JAN1 + 999)


def test_the_writer_thread_writes_without_a_flush(tmp_path):
    ledger = Ledger(tmp_path / "ledger.db", flush_interval=0.01)
    try:
        ledger.record(row())
        # read on a separate connection, which does not flush
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with closing(sqlite3.connect(tmp_path / "ledger.db")) as conn:
                if conn.execute("SELECT COUNT(*) FROM calls").fetchone()[0] == 1:
                    break
            time.sleep(0.01)
        else:
            pytest.fail("the writer thread never wrote the row")
    finally:
        ledger.close()


def test_rows_survive_close_and_reopen(tmp_path):
    path = tmp_path / "ledger.db"
    first = Ledger(path)
    first.record(row(resource="a"))
    first.close()
    second = Ledger(path)
    second.record(row(resource="b"))
    second.flush()
    assert [r[0] for r in second.read("SELECT resource FROM calls ORDER BY resource")] == ["a", "b"]
    second.close()


def test_close_writes_what_is_still_buffered(tmp_path):
    path = tmp_path / "ledger.db"
    ledger = Ledger(path, flush_interval=3600, batch_size=10_000)  # the thread would not flush
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


def call(status: str, principal: Principal, *, ttft: float | None = 0.05) -> CallRecord:
    return CallRecord(at=JAN1, principal=principal, model="gemma", endpoint="/v1/chat/completions",
                      status=status, prompt_tokens=12, completion_tokens=4, cached_tokens=3,
                      latency_s=0.25, ttft_s=ttft, request_id="req-9")


def test_from_call_maps_a_successful_function_call():
    r = LedgerRow.from_call(call("success", Principal("function", "summarize", "inv-7")))
    assert (r.service_type, r.resource, r.invocation_id) == ("function", "summarize", "inv-7")
    assert (r.status, r.error_type) == ("success", None)
    assert (r.prompt_tokens, r.completion_tokens, r.cached_tokens) == (12, 4, 3)
    assert r.latency_ms == pytest.approx(250.0) and r.ttft_ms == pytest.approx(50.0)
    assert (r.ts, r.model, r.request_id, r.endpoint) == (JAN1, "gemma", "req-9",
                                                         "/v1/chat/completions")


def test_from_call_maps_an_error_to_a_failure_with_its_code():
    r = LedgerRow.from_call(call("error:context_length_exceeded", Principal("key", "key-0"),
                                 ttft=None))
    assert (r.service_type, r.resource, r.invocation_id) == ("key", "key-0", None)
    assert (r.status, r.error_type, r.ttft_ms) == ("failure", "context_length_exceeded", None)


def test_from_call_keeps_the_tokens_of_a_cancelled_stream():
    r = LedgerRow.from_call(call("cancelled", Principal("anonymous", "anonymous")))
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
