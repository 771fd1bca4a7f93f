"""Replicas sharing one delivery store (a SQLite file or one PostgreSQL database):
each event claimed once, leases that a live replica keeps and a dead one loses
to exactly one other, an S3 baseline taken once, and the asynchronous invoker
taking over a stalled replica's events while both keep running."""
from __future__ import annotations

import asyncio
import random
import sqlite3
import threading
from datetime import UTC, datetime

import pytest

from runtime.template import parse_template
from runtime.triggers.asyncinvoke import AsyncInvoker, InvokeOutcome
from runtime.triggers.delivery import DeliveryStore
from runtime.triggers.schedule import Scheduler, schedule_entries
from tests.support.cli import wait_until_async

LEASE = 5.0  # seconds of the fake clock
IDS = [f"s3:Fn:b/k{i}#v1" for i in range(20)]


class FakeClock:
    def __init__(self, now: float = 1_800_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def replicas(db_target):
    """``replicas(owner, ...)``: a store per owner on the one database of the test."""
    opened: list[DeliveryStore] = []

    def open_(*owners: str, **kw) -> list[DeliveryStore]:
        stores = [DeliveryStore(db_target("deliveries.sqlite"), owner=owner, **kw) for owner in owners]
        opened.extend(stores)
        return stores
    yield open_
    for store in opened:
        store.close()


def in_threads(*calls):
    """Run the calls at once, each in its own thread; their results in order."""
    results: list = [None] * len(calls)
    start = threading.Barrier(len(calls))

    def run(i: int) -> None:
        start.wait()
        results[i] = calls[i]()
    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def test_each_event_claimed_from_two_replicas_at_once_is_claimed_exactly_once(replicas):
    a, b = replicas("a", "b")

    def claim_all(store: DeliveryStore) -> list[str]:
        ids = random.sample(IDS, len(IDS))
        return [event_id for event_id in ids if store.claim(event_id, "Fn", {"id": event_id})]

    won_a, won_b = in_threads(lambda: claim_all(a), lambda: claim_all(b))
    assert len(won_a) + len(won_b) == 20 and set(won_a) | set(won_b) == set(IDS)
    assert all(a.get(event_id).owner == "a" for event_id in won_a)
    assert all(a.get(event_id).owner == "b" for event_id in won_b)


def test_a_dead_replicas_events_go_to_exactly_one_taker_once_its_lease_ran_out(replicas):
    clock = FakeClock()
    dead, *takers = replicas("dead", "t1", "t2", "t3", "t4", lease_s=LEASE, clock=clock)
    for event_id in IDS:
        dead.claim(event_id, "Fn", {})
    clock.now += LEASE - 0.1
    assert takers[0].take_over() == []  # not yet: it might still be running them
    clock.now += 0.2
    taken = in_threads(*(store.take_over for store in takers))
    ids = [row.event_id for rows in taken for row in rows]
    assert sorted(ids) == sorted(IDS)  # every one taken, none twice
    winner = next(store for store, rows in zip(takers, taken, strict=True) if rows)
    event_id = next(rows for rows in taken if rows)[0].event_id
    assert dead.mark(event_id, "done", 1) is False  # the dead owner's late end is not recorded
    assert winner.mark(event_id, "done", 1) is True
    assert winner.get(event_id).status == "done"


def test_a_live_replicas_leases_are_never_taken(replicas):
    clock = FakeClock()
    live, other = replicas("live", "other", lease_s=LEASE, clock=clock)
    for event_id in IDS[:5]:
        live.claim(event_id, "Fn", {})
    for _ in range(10):  # ten leases' worth of time, renewed every 0.6 of one
        clock.now += 0.6 * LEASE
        assert live.renew(IDS[:5]) == 5
        assert other.take_over() == []
    clock.now += LEASE + 0.1  # it stopped renewing
    assert sorted(row.event_id for row in other.take_over()) == IDS[:5]
    assert live.renew(IDS[:5]) == 0


def test_a_restarted_replica_takes_its_own_events_back_before_its_lease_runs_out(replicas):
    clock = FakeClock()
    crashed, other = replicas("host:data", "other", lease_s=LEASE, clock=clock)
    crashed.claim("e1", "Fn", {"n": 1})
    crashed.close()  # no release: it crashed
    [restarted] = replicas("host:data", lease_s=LEASE, clock=clock)
    assert other.take_over() == []
    assert restarted.take_over() == []  # only at a start
    [row] = restarted.take_over(own=True)
    assert (row.event_id, row.payload, row.owner) == ("e1", {"n": 1}, "host:data")


def test_released_events_are_taken_over_at_once(replicas):
    clock = FakeClock()
    stopping, other = replicas("stopping", "other", lease_s=LEASE, clock=clock)
    stopping.claim("e1", "Fn", {})
    stopping.claim("e2", "Fn", {})
    stopping.release(["e1"])
    assert [row.event_id for row in other.take_over()] == ["e1"]


def test_an_s3_baseline_is_taken_once_by_two_replicas_starting_together(replicas):
    a, b = replicas("a", "b")
    rows_a = [(f"s3:Fn:b/old{i}#1", "Fn", {}) for i in range(5)]
    rows_b = [(f"s3:Fn:b/old{i}#1", "Fn", {}) for i in range(7)]  # b listed two more uploads
    added_a, added_b = in_threads(lambda: a.record_baseline("m", rows_a), lambda: b.record_baseline("m", rows_b))
    assert (added_a, added_b) in ((5, None), (None, 7))  # one took it; the other added nothing
    winner_rows = rows_a if added_a is not None else rows_b
    assert a.seen_keys("s3:Fn:b/") == {eid for eid, _, _ in winner_rows}


def test_a_store_from_before_leases_keeps_its_events_and_markers(tmp_path):
    path = tmp_path / "deliveries.sqlite3"
    with sqlite3.connect(path) as db:  # the first format, as an older llmfn left it
        db.executescript("""
            CREATE TABLE deliveries (event_id TEXT PRIMARY KEY, function TEXT NOT NULL, payload TEXT NOT NULL,
                status TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, first_seen REAL NOT NULL,
                updated REAL NOT NULL, last_error TEXT);
            CREATE INDEX deliveries_status ON deliveries(status);
            CREATE TABLE markers (name TEXT PRIMARY KEY, value TEXT NOT NULL, updated REAL NOT NULL);
            INSERT INTO deliveries VALUES ('e1', 'Fn', '{"a": 1}', 'pending', 1, 1.0, 1.0, NULL);
            INSERT INTO deliveries VALUES ('e0', 'Fn', '{}', 'done', 1, 0.5, 1.0, NULL);
            INSERT INTO markers VALUES ('s3-baseline:Fn:b::', '1.0', 1.0);
        """)
    store = DeliveryStore(path, owner="new")
    assert store.marker("s3-baseline:Fn:b::") == "1.0"
    [row] = store.take_over()
    assert (row.event_id, row.payload, row.attempts) == ("e1", {"a": 1}, 1)
    assert store.claim("e0", "Fn", {}) is False
    store.close()


# --- the asynchronous invoker on two replicas ------------------------------------

REAL_LEASE = 0.3  # seconds: renewed every 0.1 s


class Invocations:
    """A fake function runtime: counts calls; ``hang`` holds each call until released."""

    def __init__(self, *, hang: bool = False, takes: float = 0.0):
        self.calls = 0
        self.release = asyncio.Event()
        self.hang, self.takes = hang, takes

    async def __call__(self, function: str, event: dict) -> InvokeOutcome:
        self.calls += 1
        if self.hang:
            await self.release.wait()
        await asyncio.sleep(self.takes)
        return InvokeOutcome(ok=True)


async def nowhere(*_) -> None:
    pass


def invoker(store: DeliveryStore, invoke: Invocations) -> AsyncInvoker:
    return AsyncInvoker(invoke, store=store, failure_destination=nowhere, retry_base_delay_s=0.01)


async def test_a_stalled_replicas_event_is_run_by_another_which_alone_records_its_end(replicas):
    stalled_store, other_store = replicas("stalled", "other", lease_s=REAL_LEASE)
    stalled_run, other_run = Invocations(hang=True), Invocations()
    stalled = invoker(stalled_store, stalled_run)  # never started: it never renews its lease
    other = invoker(other_store, other_run)
    await other.start()
    try:
        assert await stalled.submit("Fn", {}, event_id="e1") is True
        await wait_until_async(lambda: other_store.get("e1").status == "done", timeout=10,
                               message="the other replica did not take the event over")
        assert (other_run.calls, other_store.get("e1").owner) == (1, "other")
        stalled_run.release.set()
        await stalled.drain()
        assert other_store.get("e1").status == "done" and other_store.get("e1").attempts == 1
    finally:
        await other.close()


async def test_a_running_replica_keeps_its_event_for_as_long_as_it_runs(replicas):
    live_store, other_store = replicas("live", "other", lease_s=REAL_LEASE)
    live_run, other_run = Invocations(takes=4 * REAL_LEASE), Invocations()
    live, other = invoker(live_store, live_run), invoker(other_store, other_run)
    await live.start()
    await other.start()
    try:
        await live.submit("Fn", {}, event_id="e1")
        await live.drain()
        assert (live_run.calls, other_run.calls) == (1, 0)
        assert (live_store.get("e1").status, live_store.get("e1").owner) == ("done", "live")
    finally:
        await live.close()
        await other.close()


async def test_a_schedule_tick_fired_by_every_replica_is_delivered_once(replicas):
    doc = {"Resources": {"Digest": {"Type": "AWS::Serverless::Function", "Properties": {
        "CodeUri": ".", "Handler": "app.handler",
        "Events": {"Nightly": {"Type": "Schedule", "Properties": {"Schedule": "cron(0 3 * * ? *)"}}}}}}}
    [entry] = schedule_entries(parse_template(doc).functions)
    runs = Invocations()
    invokers = [invoker(store, runs) for store in replicas("a", "b", "c")]
    tick = datetime(2026, 1, 1, 3, 0, tzinfo=UTC)
    fired = await asyncio.gather(*(Scheduler([entry], each.submit).fire(entry, tick) for each in invokers))
    assert sorted(fired) == [False, False, True]
    for each in invokers:
        await each.drain()
    assert runs.calls == 1


async def test_a_replica_that_shuts_down_hands_its_unfinished_events_over_at_once(replicas):
    leaving_store, other_store = replicas("leaving", "other", lease_s=3600.0)  # only a release frees them
    leaving_run, other_run = Invocations(hang=True), Invocations()
    leaving, other = invoker(leaving_store, leaving_run), invoker(other_store, other_run)
    await leaving.start()
    await leaving.submit("Fn", {}, event_id="e1")
    await wait_until_async(lambda: leaving_run.calls == 1)
    await leaving.close(timeout=0)
    assert await other.resume() == 1
    await other.drain()
    assert (other_store.get("e1").status, other_store.get("e1").owner) == ("done", "other")


def test_a_store_comes_back_after_the_database_drops_its_connection(postgres_url):
    import psycopg

    store = DeliveryStore(postgres_url, owner="a")
    store.claim("e1", "Fn", {})
    with psycopg.connect(postgres_url, autocommit=True) as admin:  # a restart or failover, as a store sees it
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                      "WHERE datname = current_database() AND pid <> pg_backend_pid()")
    with pytest.raises(psycopg.OperationalError):
        store.get("e1")  # the call under way when it happened fails
    assert store.get("e1").status == "pending" and store.claim("e2", "Fn", {}) is True
    store.close()
