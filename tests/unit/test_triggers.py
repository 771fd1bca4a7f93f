"""Event triggers without S3: Lambda's asynchronous-invocation rules (retries,
backoff, event age, on-failure destination records, durability across a crash)
against a fake invoke, the delivery store, and schedule expressions."""
from __future__ import annotations

import asyncio
import sqlite3
from datetime import UTC, datetime

import pytest

from runtime.database import is_postgres
from runtime.template import FunctionSpec, TemplateError, parse_template
from runtime.template.schedule_expressions import CronSchedule, RateSchedule, aws_cron_to_croniter, parse_schedule
from runtime.triggers.asyncinvoke import AsyncConfig, AsyncInvoker, InvokeOutcome, async_config
from runtime.triggers.delivery import DeliveryStore
from runtime.triggers.s3 import S3Rule, s3_rules
from runtime.triggers.schedule import Scheduler, schedule_entries
from tests.support.cli import wait_until_async

BASE_DELAY = 0.05


def invoke_config(props: dict, resources: dict | None = None):
    """The EventInvokeConfig spec of a function with these properties, read from a template."""
    doc = {"Resources": {"Fn": {"Type": "AWS::Serverless::Function",
                                "Properties": {"CodeUri": ".", "Handler": "app.handler", **props}},
                         **(resources or {})}}
    return parse_template(doc).functions["Fn"].invoke_config


ERROR = {"errorType": "ValueError", "errorMessage": "boom", "stackTrace": ["  File app.py"]}
EVENT = {"Records": [{"s3": {"object": {"key": "in/a.txt"}}}]}


class FakeInvoke:
    """A fake of the function runtime: answers from a script of outcomes, records every call."""

    def __init__(self, *outcomes: InvokeOutcome, clock: FakeClock | None = None, advance: float = 0.0):
        self.outcomes = list(outcomes)
        self.calls: list[tuple[str, dict]] = []
        self.clock, self.advance = clock, advance

    async def __call__(self, function: str, event: dict) -> InvokeOutcome:
        self.calls.append((function, event))
        if self.clock:
            self.clock.now += self.advance
        return self.outcomes.pop(0) if len(self.outcomes) > 1 else self.outcomes[0]


class FakeClock:
    def __init__(self, now: float = 1_800_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


class Destinations:
    """Records what the invoker sends to the on-failure destination."""

    def __init__(self):
        self.records: list[tuple[str, str | None, dict]] = []

    async def __call__(self, function: str, destination: str | None, record: dict) -> None:
        self.records.append((function, destination, record))


FAIL = InvokeOutcome(ok=False, error=ERROR)
OK = InvokeOutcome(ok=True)


@pytest.fixture
def store(db_target):
    s = DeliveryStore(db_target("deliveries.sqlite"))
    yield s
    s.close()


def make_invoker(store, invoke, destinations, **kw) -> AsyncInvoker:
    return AsyncInvoker(invoke, store=store, failure_destination=destinations, retry_base_delay_s=BASE_DELAY, **kw)


# --- asynchronous invocation ---------------------------------------------------

async def test_failed_invocation_is_retried_and_delivered_once(store):
    invoke, dest = FakeInvoke(FAIL, FAIL, OK), Destinations()
    invoker = make_invoker(store, invoke, dest)
    assert await invoker.submit("Fn", EVENT, event_id="e1") is True
    assert await invoker.submit("Fn", EVENT, event_id="e1") is False  # the same event is accepted once
    await invoker.drain()
    assert len(invoke.calls) == 3 and all(call == ("Fn", EVENT) for call in invoke.calls)
    assert dest.records == []
    row = store.get("e1")
    assert (row.status, row.attempts) == ("done", 3)


async def test_retries_back_off(store):
    sleeps = []
    real_sleep = asyncio.sleep

    async def recording_sleep(delay, *args):
        sleeps.append(delay)
        await real_sleep(0)

    invoker = make_invoker(store, FakeInvoke(FAIL), Destinations())
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("runtime.triggers.asyncinvoke.asyncio.sleep", recording_sleep)
        await invoker.submit("Fn", EVENT, event_id="e1")
        await invoker.drain()
    assert sleeps == [BASE_DELAY, 2 * BASE_DELAY]  # Lambda: about 1 minute, then 2


async def test_retries_exhausted_goes_to_the_destination(store):
    invoke, dest = FakeInvoke(FAIL), Destinations()
    invoker = make_invoker(store, invoke, dest,
                           configs={"Fn": AsyncConfig(destination="s3://dlq/failed")})
    await invoker.submit("Fn", EVENT, event_id="e1")
    await invoker.drain()
    assert len(invoke.calls) == 1 + 2
    [(function, destination, record)] = dest.records
    assert (function, destination) == ("Fn", "s3://dlq/failed")
    ctx = record["requestContext"]
    assert ctx["condition"] == "RetriesExhausted"
    assert ctx["approximateInvokeCount"] == 3
    assert ctx["functionArn"].endswith(":function:Fn:$LATEST") and ctx["requestId"]
    assert record["requestPayload"] == EVENT
    assert record["responsePayload"] == ERROR
    assert record["responseContext"]["functionError"] == "Unhandled"
    assert record["version"] == "1.0" and record["timestamp"].endswith("Z")
    row = store.get("e1")
    assert (row.status, row.attempts, row.last_error) == ("failed", 3, ERROR)


async def test_not_retryable_outcome_is_not_retried(store):
    quota = {"errorType": "InsufficientQuota", "errorMessage": "token budget exhausted"}
    invoke, dest = FakeInvoke(InvokeOutcome(ok=False, error=quota, retryable=False)), Destinations()
    invoker = make_invoker(store, invoke, dest)
    await invoker.submit("Fn", EVENT, event_id="e1")
    await invoker.drain()
    assert len(invoke.calls) == 1
    [(_, _, record)] = dest.records
    assert record["requestContext"]["condition"] == "NotRetryable"
    assert record["requestContext"]["approximateInvokeCount"] == 1
    assert record["responsePayload"] == quota


async def test_event_older_than_maximum_age_is_dropped(store):
    clock = FakeClock()
    # Each invocation takes an hour of (fake) time; the event may live 90 minutes.
    invoke, dest = FakeInvoke(FAIL, clock=clock, advance=3600), Destinations()
    invoker = make_invoker(store, invoke, dest, clock=clock,
                           configs={"Fn": AsyncConfig(maximum_event_age_s=5400)})
    await invoker.submit("Fn", EVENT, event_id="e1")
    await invoker.drain()
    assert len(invoke.calls) == 2
    [(_, _, record)] = dest.records
    assert record["requestContext"]["condition"] == "EventAgeExceeded"
    assert record["requestContext"]["approximateInvokeCount"] == 2
    assert store.get("e1").status == "failed"


async def test_event_too_old_before_its_first_attempt_is_never_invoked(store, tmp_path):
    clock = FakeClock()
    store.claim("old", "Fn", EVENT, now=clock.now - 7 * 3600)  # pending since before a long outage
    invoke, dest = FakeInvoke(OK), Destinations()
    invoker = make_invoker(store, invoke, dest, clock=clock)
    assert await invoker.resume() == 1
    await invoker.drain()
    assert invoke.calls == []
    [(_, _, record)] = dest.records
    assert record["requestContext"]["condition"] == "EventAgeExceeded"
    assert record["requestContext"]["approximateInvokeCount"] == 0
    assert "responsePayload" not in record


async def test_maximum_retry_attempts_zero(store):
    invoke, dest = FakeInvoke(FAIL), Destinations()
    config = async_config(invoke_config({"EventInvokeConfig": {"MaximumRetryAttempts": 0}}))
    invoker = make_invoker(store, invoke, dest)
    await invoker.submit("Fn", EVENT, event_id="e1", config=config)
    await invoker.drain()
    assert len(invoke.calls) == 1
    assert dest.records[0][2]["requestContext"]["condition"] == "RetriesExhausted"


async def test_invoke_that_raises_counts_as_a_failed_attempt(store):
    async def broken_invoke(function, event):
        raise RuntimeError("runtime fault")

    dest = Destinations()
    invoker = make_invoker(store, broken_invoke, dest, configs={"Fn": AsyncConfig(maximum_retry_attempts=0)})
    await invoker.submit("Fn", EVENT, event_id="e1")
    await invoker.drain()
    assert dest.records[0][2]["responsePayload"]["errorType"] == "RuntimeError"


async def test_pending_events_run_again_after_a_crash(db_target):
    path = db_target("deliveries.sqlite")
    started = asyncio.Event()

    async def hanging_invoke(function, event):
        started.set()
        await asyncio.Event().wait()  # the service dies mid-invocation

    first = DeliveryStore(path)
    crashed = make_invoker(first, hanging_invoke, Destinations())
    await crashed.submit("Fn", EVENT, event_id="e1")
    await started.wait()
    await crashed.close(timeout=0)  # gives up on the in-flight invocation
    first.close()

    reopened = DeliveryStore(path)
    assert [row.event_id for row in reopened.pending()] == ["e1"]
    invoke = FakeInvoke(OK)
    invoker = make_invoker(reopened, invoke, Destinations())
    assert await invoker.resume() == 1
    await invoker.drain()
    assert invoke.calls == [("Fn", EVENT)]
    assert reopened.get("e1").status == "done"
    assert await invoker.resume() == 0
    reopened.close()


async def test_close_waits_for_in_flight_work(store):
    release = asyncio.Event()

    async def slow_invoke(function, event):
        await release.wait()
        return OK

    invoker = make_invoker(store, slow_invoke, Destinations())
    await invoker.submit("Fn", EVENT, event_id="e1")
    asyncio.get_running_loop().call_later(0.05, release.set)
    await invoker.close(timeout=10)
    assert store.get("e1").status == "done"


async def test_concurrency_is_bounded(store):
    running = peak = 0

    async def counting_invoke(function, event):
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.01)
        running -= 1
        return OK

    invoker = make_invoker(store, counting_invoke, Destinations(), concurrency=2)
    for i in range(6):
        await invoker.submit("Fn", EVENT, event_id=f"e{i}")
    await invoker.drain()
    assert peak == 2


def test_async_config_from_the_template():
    resources = {"Dlq": {"Type": "AWS::S3::Bucket", "Properties": {"BucketName": "my-dlq"}}}
    props = {"EventInvokeConfig": {"MaximumRetryAttempts": 1, "MaximumEventAgeInSeconds": 120,
                                   "DestinationConfig": {"OnFailure": {"Type": "S3",
                                                                       "Destination": "s3://dlq/prefix/"}}}}
    assert async_config(invoke_config(props), "s3://default") == AsyncConfig(1, 120, "s3://dlq/prefix")
    assert async_config(invoke_config({}), "s3://default") == AsyncConfig(2, 21600, "s3://default")
    by_att = {"EventInvokeConfig": {"DestinationConfig": {"OnFailure": {
        "Type": "S3", "Destination": {"Fn::GetAtt": ["Dlq", "Arn"]}}}}}
    assert async_config(invoke_config(by_att, resources)).destination == "s3://my-dlq"
    by_ref = {"EventInvokeConfig": {"DestinationConfig": {"OnFailure": {"Type": "S3", "Destination": {"Ref": "Dlq"}}}}}
    assert async_config(invoke_config(by_ref, resources)).destination == "s3://my-dlq"
    arn = {"EventInvokeConfig": {"DestinationConfig": {"OnFailure": {"Destination": "arn:aws:s3:::b"}}}}
    assert async_config(invoke_config(arn)).destination == "s3://b"
    sqs = {"EventInvokeConfig": {"DestinationConfig": {"OnFailure": {"Type": "SQS", "Destination": "arn:q"}}}}
    assert async_config(invoke_config(sqs), "s3://default").destination == "s3://default"
    with pytest.raises(TemplateError, match=r"Resources\.Fn\.Properties\.EventInvokeConfig\.MaximumRetryAttempts"):
        invoke_config({"EventInvokeConfig": {"MaximumRetryAttempts": 3}})
    with pytest.raises(TemplateError, match="MaximumEventAgeInSeconds"):
        invoke_config({"EventInvokeConfig": {"MaximumEventAgeInSeconds": 30}})


# --- delivery store -------------------------------------------------------------

def test_claim_is_idempotent_across_reopening_the_store(db_target):
    path = db_target("d.sqlite")
    first = DeliveryStore(path)
    assert first.claim("s3:Fn:b/k#v1", "Fn", {"a": 1}) is True
    assert first.claim("s3:Fn:b/k#v1", "Fn", {"a": 1}) is False
    first.close()
    second = DeliveryStore(path)
    assert second.claim("s3:Fn:b/k#v1", "Fn", {"a": 1}) is False
    assert second.claim("s3:Fn:b/k#v2", "Fn", {"a": 2}) is True
    assert second.get("s3:Fn:b/k#v1").payload == {"a": 1}
    assert second.seen_keys("s3:Fn:b/") == {"s3:Fn:b/k#v1", "s3:Fn:b/k#v2"}
    assert second.seen_keys("s3:Fn:c/") == set()
    second.close()
    if not is_postgres(path):
        with sqlite3.connect(path) as db:
            assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_mark_and_pending(store):
    store.claim("a", "Fn", {}, now=1.0)
    store.claim("b", "Fn", {}, now=2.0)
    store.mark("a", "done", 1)
    store.mark("b", "pending", 1, ERROR)
    [row] = store.pending()
    assert (row.event_id, row.attempts, row.last_error, row.first_seen) == ("b", 1, ERROR, 2.0)


def test_baseline_rows_are_seen_but_never_pending(store):
    assert store.marker("m") is None
    assert store.record_baseline("m", [("x#1", "Fn", {"key": "x"})]) == 1
    assert store.marker("m") is not None
    assert store.pending() == []
    assert store.get("x#1").status == "skipped"
    assert store.claim("x#1", "Fn", {}) is False


# --- schedules ------------------------------------------------------------------

MOMENT = datetime(2026, 1, 1, 0, 0, tzinfo=UTC)  # a Thursday


def fn(events: dict, resources: dict | None = None) -> dict[str, FunctionSpec]:
    """The template's functions: one, ``Digest``, with these ``Events``."""
    doc = {"Resources": {"Digest": {"Type": "AWS::Serverless::Function",
                                    "Properties": {"CodeUri": ".", "Handler": "app.handler", "Events": events}},
                         **(resources or {})}}
    return parse_template(doc).functions


@pytest.mark.parametrize("expression, period", [
    ("rate(1 minute)", 60), ("rate(5 minutes)", 300), ("rate(1 hour)", 3600), ("rate(2 hours)", 7200),
    ("rate(1 day)", 86400), ("rate(3 days)", 3 * 86400), ("rate(2 seconds)", 2), ("RATE(10 Minutes)", 600),
])
def test_rate_expressions(expression, period):
    assert parse_schedule(expression) == RateSchedule(period)


@pytest.mark.parametrize("expression", ["rate(1 minutes)", "rate(5 minute)", "rate(0 minutes)",
                                        "rate(5 weeks)", "rate(minutes)", "every 5 minutes"])
def test_bad_rate_expressions(expression):
    with pytest.raises(ValueError):
        parse_schedule(expression)


def test_rate_fires_on_multiples_of_its_period():
    five = parse_schedule("rate(5 minutes)")
    assert five.next_after(datetime(2026, 1, 1, 0, 3, 7, tzinfo=UTC)) == datetime(
        2026, 1, 1, 0, 5, tzinfo=UTC)
    assert five.next_after(datetime(2026, 1, 1, 0, 5, tzinfo=UTC)) == datetime(
        2026, 1, 1, 0, 10, tzinfo=UTC)


@pytest.mark.parametrize("expression, croniter_form, firings", [
    ("cron(0 12 * * ? *)", "0 12 * * * 0 *",
     ["2026-01-01T12:00", "2026-01-02T12:00", "2026-01-03T12:00"]),
    # Last Friday of each month in 2026 (AWS: 6 = FRI).
    ("cron(15 10 ? * 6L 2026)", "15 10 * * L5 0 2026",
     ["2026-01-30T10:15", "2026-02-27T10:15", "2026-03-27T10:15"]),
    ("cron(0/5 8-17 ? * MON-FRI *)", "0/5 8-17 * * MON-FRI 0 *",
     ["2026-01-01T08:00", "2026-01-01T08:05", "2026-01-01T08:10"]),
    # Monday to Friday by number (AWS 2-6), at 18:00: Thursday, Friday, then Monday.
    ("cron(0 18 ? * 2-6 *)", "0 18 * * 1-5 0 *",
     ["2026-01-01T18:00", "2026-01-02T18:00", "2026-01-05T18:00"]),
    ("cron(0 0 ? * 6#3 *)", "0 0 * * 5#3 0 *",  # third Friday
     ["2026-01-16T00:00", "2026-02-20T00:00", "2026-03-20T00:00"]),
    ("cron(0 8 1 * ? *)", "0 8 1 * * 0 *", ["2026-01-01T08:00", "2026-02-01T08:00", "2026-03-01T08:00"]),
    ("cron(0 0 L * ? *)", "0 0 L * * 0 *", ["2026-01-31T00:00", "2026-02-28T00:00", "2026-03-31T00:00"]),
])
def test_aws_cron_expressions(expression, croniter_form, firings):
    schedule = parse_schedule(expression)
    assert schedule == CronSchedule(croniter_form)
    moment, got = MOMENT, []
    for _ in firings:
        moment = schedule.next_after(moment)
        got.append(moment.strftime("%Y-%m-%dT%H:%M"))
    assert got == firings


def test_cron_with_no_future_firing():
    assert parse_schedule("cron(0 0 1 1 ? 2020)").next_after(MOMENT) is None


@pytest.mark.parametrize("fields", ["0 12 * * *", "0 12 * * * *", "0 12 ? * ? *", "0 12 ? * 8 *",
                                    "61 12 * * ? *", "0 0 LW * ? *"])
def test_bad_cron_expressions(fields):
    with pytest.raises(ValueError):
        aws_cron_to_croniter(fields)


def test_schedule_entries_from_the_template():
    entries = schedule_entries(fn({
        "Hourly": {"Type": "Schedule", "Properties": {"Schedule": "rate(1 hour)"}},
        "Off": {"Type": "Schedule", "Properties": {"Schedule": "rate(1 hour)", "Enabled": False}},
        "Named": {"Type": "Schedule", "Properties": {"Schedule": "cron(0 12 * * ? *)", "Name": "noon",
                                                     "Input": '{"report": "daily"}'}},
        "Web": {"Type": "HttpApi", "Properties": {"Path": "/x"}},
    }))
    hourly, off, named = entries
    assert (hourly.function, hourly.event, hourly.rule, hourly.enabled) == ("Digest", "Hourly", "DigestHourly", True)
    assert off.enabled is False
    assert named.rule == "noon" and named.input == {"report": "daily"}
    assert named.event_for(MOMENT) == {"report": "daily"}
    event = hourly.event_for(MOMENT)
    assert event["detail-type"] == "Scheduled Event" and event["source"] == "aws.events"
    assert event["time"] == "2026-01-01T00:00:00Z"
    assert event["resources"] == ["arn:aws:events:us-east-1:123456789012:rule/DigestHourly"]
    assert hourly.event_id(MOMENT) == "schedule:Digest:Hourly:2026-01-01T00:00:00+00:00"


def test_schedule_template_errors_name_the_property():
    with pytest.raises(TemplateError, match=r"Events\.Bad\.Properties\.Schedule"):
        fn({"Bad": {"Type": "Schedule", "Properties": {"Schedule": "rate(1 week)"}}})
    with pytest.raises(TemplateError, match=r"Input"):
        fn({"Bad": {"Type": "Schedule", "Properties": {"Schedule": "rate(1 hour)", "Input": "{not json"}}})


class RecordingSubmit:
    """Stands in for AsyncInvoker.submit: records hand-overs, dedupes by event id."""

    def __init__(self):
        self.calls: list[tuple[str, object, str]] = []
        self.fired = asyncio.Event()

    async def __call__(self, function, event, *, event_id):
        if any(eid == event_id for _, _, eid in self.calls):
            return False
        self.calls.append((function, event, event_id))
        self.fired.set()
        return True


async def test_scheduler_fires_enabled_entries_and_skips_disabled_ones():
    on, off, with_input = schedule_entries(fn({
        "Tick": {"Type": "Schedule", "Properties": {"Schedule": "rate(1 second)"}},
        "Off": {"Type": "Schedule", "Properties": {"Schedule": "rate(1 second)", "Enabled": False}},
        "In": {"Type": "Schedule", "Properties": {"Schedule": "rate(1 second)", "Input": '{"k": 1}'}},
    }))
    submit = RecordingSubmit()
    scheduler = Scheduler([on, off, with_input], submit)
    await scheduler.start()
    try:
        await wait_until_async(lambda: {c[2].split(":")[2] for c in submit.calls} >= {"Tick", "In"}, 5)
    finally:
        await scheduler.close()
    events = {eid.split(":")[2]: (function, event) for function, event, eid in submit.calls}
    assert "Off" not in events
    assert events["In"] == ("Digest", {"k": 1})
    function, event = events["Tick"]
    assert function == "Digest" and event["detail-type"] == "Scheduled Event"
    tick_id = next(eid for _, _, eid in submit.calls if ":Tick:" in eid)
    fire_time = datetime.fromisoformat(tick_id.split(":", 3)[3])
    assert fire_time.microsecond == 0 and event["time"] == fire_time.strftime("%Y-%m-%dT%H:%M:%SZ")


async def test_a_firing_is_submitted_once_even_if_fired_twice():
    [entry] = schedule_entries(fn({"Noon": {"Type": "Schedule", "Properties": {"Schedule": "cron(0 12 * * ? *)"}}}))
    submit = RecordingSubmit()
    scheduler = Scheduler([entry], submit)
    noon = datetime(2026, 1, 1, 12, tzinfo=UTC)
    assert await scheduler.fire(entry, noon) is True
    assert await scheduler.fire(entry, noon) is False  # e.g. a restart inside the same minute


# --- S3 rules from the template ---------------------------------------------------

def test_s3_rules_resolve_buckets_and_filters():
    resources = {"DocsBucket": {"Type": "AWS::S3::Bucket"},
                 "Named": {"Type": "AWS::S3::Bucket", "Properties": {"BucketName": "my-docs"}}}
    functions = fn({
        "Upload": {"Type": "S3", "Properties": {
            "Bucket": {"Ref": "DocsBucket"}, "Events": "s3:ObjectCreated:*",
            "Filter": {"S3Key": {"Rules": [{"Name": "prefix", "Value": "incoming/"},
                                           {"Name": "Suffix", "Value": ".txt"}]}}}},
        "Named": {"Type": "S3", "Properties": {"Bucket": {"Ref": "Named"}, "Events": ["s3:ObjectCreated:Put"]}},
        "Removed": {"Type": "S3", "Properties": {"Bucket": "plain", "Events": "s3:ObjectRemoved:*"}},
        "Plain": {"Type": "S3", "Properties": {"Bucket": "plain"}},
    }, resources)
    assert s3_rules(functions) == [
        S3Rule("Digest", "docsbucket", ["s3:ObjectCreated:*"], "incoming/", ".txt"),
        S3Rule("Digest", "my-docs", ["s3:ObjectCreated:Put"], "", ""),
        S3Rule("Digest", "plain", ["s3:ObjectCreated:*"], "", ""),
    ]
    with pytest.raises(TemplateError, match=r"Events\.Upload\.Properties\.Bucket: .*Missing"):
        fn({"Upload": {"Type": "S3", "Properties": {"Bucket": {"Ref": "Missing"}}}})
    with pytest.raises(TemplateError, match=r"Events\.Upload\.Properties\.Bucket: .*AWS::S3::Bucket"):
        fn({"Upload": {"Type": "S3", "Properties": {"Bucket": {"Ref": "Digest"}}}})
    with pytest.raises(TemplateError, match=r"Events\.Upload\.Properties\.Bucket: required"):
        fn({"Upload": {"Type": "S3", "Properties": {}}})
