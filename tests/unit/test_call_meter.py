"""When a call's admission row is queued: a generation's row waits until the
worker has the request (its write then overlaps the prompt instead of delaying
the request), is on disk before any output, and is asked for at once when the
ledger would refuse it. A recording journal (a fake, named so) shows the order;
the ``Accounting`` tests use a real SQLite ledger."""
from __future__ import annotations

from concurrent.futures import Future

import pytest

from runtime.accounting.ledger import Ledger
from runtime.accounting.quotas import MemoryCounters, QuotaPolicy
from runtime.accounting.status import CallStatus
from runtime.gateway.auth import Principal
from runtime.gateway.calls import CallRecord, Calls
from runtime.gateway.charging import Accounting, QuotaBook

CALLER = Principal("key", "k")


class RecordingJournal:
    """A fake journal: what was queued, in order; every write commits at once."""

    def __init__(self) -> None:
        self.writes: list[tuple[str, CallStatus]] = []

    def admit(self, record: CallRecord) -> Future:
        self.writes.append(("admit", record.status))
        return _done()

    def progress(self, record: CallRecord) -> None:
        self.writes.append(("progress", record.status))

    def end(self, record: CallRecord, admitted: bool) -> Future:
        self.writes.append(("end" if admitted else "refused", record.status))
        return _done()


def _done() -> Future:
    fut: Future = Future()
    fut.set_result(None)
    return fut


def meter_with(journal: RecordingJournal):
    calls = Calls()
    calls.journal = journal
    return calls.meter("gemma", "completions", CALLER, "req-1")


def test_a_deferred_admission_is_queued_once_when_the_worker_has_the_request():
    journal = RecordingJournal()
    meter = meter_with(journal)
    meter.begin(100, 10, defer=True)
    assert journal.writes == []
    meter.dispatched()
    meter.dispatched()  # the next group of an n > slots call: still one row
    assert journal.writes == [("admit", CallStatus.RUNNING)]


async def test_confirm_queues_an_admission_that_was_never_dispatched():
    journal = RecordingJournal()
    meter = meter_with(journal)
    meter.begin(100, 10, defer=True)
    await meter.confirm()
    assert journal.writes == [("admit", CallStatus.RUNNING)]


async def test_a_call_that_ends_before_its_dispatch_is_its_end_row_alone():
    journal = RecordingJournal()
    meter = meter_with(journal)
    meter.begin(100, 10, defer=True)
    await meter.finish(CallStatus.CANCELLED, 10)
    meter.dispatched()  # too late: nothing more is written
    assert journal.writes == [("end", CallStatus.CANCELLED)]


def running_rows(ledger: Ledger) -> int:
    return ledger.read("SELECT COUNT(*) FROM calls WHERE status = 'running'")[0][0]


@pytest.fixture
def accounting(tmp_path):
    ledger = Ledger(tmp_path / "ledger.db")
    acct = Accounting(QuotaPolicy(MemoryCounters()), QuotaBook(), ledger)
    yield acct
    ledger.close()


async def test_a_generation_is_admitted_without_waiting_for_its_row(accounting):
    calls = Calls()
    calls.journal = accounting.journal
    meter = calls.meter("gemma", "completions", CALLER, "req-1")
    await accounting.admit(meter, 100, 10, wait=False)
    assert running_rows(accounting.ledger) == 0  # queued by dispatched(), not before
    meter.dispatched()
    await meter.confirm()
    assert running_rows(accounting.ledger) == 1


async def test_a_ledger_that_failed_its_last_write_is_asked_before_the_worker(accounting):
    accounting.ledger.healthy = False  # as after a full disk
    calls = Calls()
    calls.journal = accounting.journal
    meter = calls.meter("gemma", "completions", CALLER, "req-1")
    await accounting.admit(meter, 100, 10, wait=False)
    assert running_rows(accounting.ledger) == 1  # written, and waited for, before any work
