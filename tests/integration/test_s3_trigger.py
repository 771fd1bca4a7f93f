"""The S3 trigger against moto's server over HTTP: one event per new object
version, none for keys outside the rule, none again after a restart."""
from __future__ import annotations

import asyncio
import uuid
from urllib.parse import unquote_plus

import boto3
import pytest

from runtime.triggers.asyncinvoke import AsyncInvoker, InvokeOutcome
from runtime.triggers.delivery import DeliveryStore
from runtime.triggers.s3 import S3Rule, S3Trigger
from tests.support.cli import wait_until_async


class RecordingSubmit:
    """Claims events in the store like AsyncInvoker.submit does, and records what was submitted."""

    def __init__(self, store: DeliveryStore):
        self.store = store
        self.calls: list[tuple[str, dict, str]] = []
        self.arrived = asyncio.Event()

    async def __call__(self, function, event, *, event_id):
        if not await asyncio.to_thread(self.store.claim, event_id, function, event):
            return False
        self.calls.append((function, event, event_id))
        self.arrived.set()
        return True

    def keys(self) -> list[str]:
        return sorted(unquote_plus(e["Records"][0]["s3"]["object"]["key"]) for _, e, _ in self.calls)


@pytest.fixture
def s3(s3_server):
    return boto3.client("s3", endpoint_url=s3_server)


@pytest.fixture
def store(db_target):
    s = DeliveryStore(db_target("deliveries.sqlite"))
    yield s
    s.close()


def rule(bucket: str, prefix: str = "incoming/", suffix: str = ".txt") -> S3Rule:
    return S3Rule("Summarize", bucket, ["s3:ObjectCreated:*"], prefix, suffix)


async def started(rules, store, s3_server, submit, *, interval=3600.0, **kw) -> S3Trigger:
    """A started trigger; by default its own loop stays idle, so the test drives poll_once()."""
    trigger = S3Trigger(rules, submit=submit, store=store, endpoint_url=s3_server, interval=interval, **kw)
    await trigger.start()
    return trigger


async def test_matching_objects_trigger_once_each(s3, s3_server, s3_bucket, store):
    submit = RecordingSubmit(store)
    trigger = await started([rule(s3_bucket)], store, s3_server, submit, interval=0.05)
    try:
        await asyncio.to_thread(s3.put_object, Bucket=s3_bucket, Key="incoming/a.txt", Body=b"alpha")
        await asyncio.to_thread(s3.put_object, Bucket=s3_bucket, Key="incoming/my notes.txt", Body=b"beta")
        await asyncio.to_thread(s3.put_object, Bucket=s3_bucket, Key="incoming/skip.csv", Body=b"no")
        await asyncio.to_thread(s3.put_object, Bucket=s3_bucket, Key="other/c.txt", Body=b"no")
        await wait_until_async(lambda: len(submit.calls) >= 2, 10)
        await trigger.poll_once()
        await trigger.poll_once()
    finally:
        await trigger.close()
    assert submit.keys() == ["incoming/a.txt", "incoming/my notes.txt"]
    function, event, event_id = next(c for c in submit.calls if "a.txt" in c[2])
    assert function == "Summarize" and event_id.startswith(f"s3:Summarize:{s3_bucket}/incoming/a.txt#")
    [record] = event["Records"]
    assert record["eventName"] == "ObjectCreated:Put" and record["eventSource"] == "aws:s3"
    assert record["s3"]["bucket"]["name"] == s3_bucket
    head = s3.head_object(Bucket=s3_bucket, Key="incoming/a.txt")
    assert record["s3"]["object"]["size"] == 5
    assert record["s3"]["object"]["eTag"] == head["ETag"].strip('"')
    assert record["eventTime"].startswith(head["LastModified"].strftime("%Y-%m-%dT%H:%M:%S"))


async def test_overwrite_triggers_again_and_restart_redelivers_nothing(s3, s3_server, s3_bucket, store):
    submit = RecordingSubmit(store)
    trigger = await started([rule(s3_bucket)], store, s3_server, submit)
    s3.put_object(Bucket=s3_bucket, Key="incoming/a.txt", Body=b"v1")
    assert await trigger.poll_once() == 1
    s3.put_object(Bucket=s3_bucket, Key="incoming/a.txt", Body=b"v2 is different")
    assert await trigger.poll_once() == 1
    assert await trigger.poll_once() == 0
    await trigger.close()
    etags = [c[1]["Records"][0]["s3"]["object"]["eTag"] for c in submit.calls]
    assert len(set(etags)) == 2

    # A restart: a new trigger on the same store file. An upload made while "down" is delivered.
    s3.put_object(Bucket=s3_bucket, Key="incoming/while-down.txt", Body=b"x")
    reopened = DeliveryStore(store.target)
    after = RecordingSubmit(reopened)
    restarted = await started([rule(s3_bucket)], reopened, s3_server, after)
    try:
        assert await restarted.poll_once() == 1
        assert await restarted.poll_once() == 0
    finally:
        await restarted.close()
        reopened.close()
    assert after.keys() == ["incoming/while-down.txt"]


async def test_objects_present_before_the_first_start_are_not_delivered(s3, s3_server, s3_bucket, store):
    s3.put_object(Bucket=s3_bucket, Key="incoming/old.txt", Body=b"old")
    submit = RecordingSubmit(store)
    trigger = await started([rule(s3_bucket)], store, s3_server, submit)
    try:
        assert await trigger.poll_once() == 0
        s3.put_object(Bucket=s3_bucket, Key="incoming/new.txt", Body=b"new")
        assert await trigger.poll_once() == 1
    finally:
        await trigger.close()
    assert submit.keys() == ["incoming/new.txt"]


async def test_deliver_existing_delivers_objects_already_there(s3, s3_server, s3_bucket, store):
    s3.put_object(Bucket=s3_bucket, Key="incoming/old.txt", Body=b"old")
    submit = RecordingSubmit(store)
    trigger = await started([rule(s3_bucket)], store, s3_server, submit, deliver_existing=True)
    try:
        assert await trigger.poll_once() == 1
    finally:
        await trigger.close()
    assert submit.keys() == ["incoming/old.txt"]


async def test_versioned_bucket_triggers_once_per_version(s3, s3_server, s3_bucket, store):
    s3.put_bucket_versioning(Bucket=s3_bucket, VersioningConfiguration={"Status": "Enabled"})
    submit = RecordingSubmit(store)
    trigger = await started([rule(s3_bucket)], store, s3_server, submit)
    try:
        versions = [s3.put_object(Bucket=s3_bucket, Key="incoming/a.txt", Body=b"same")["VersionId"]
                    for _ in range(2)]  # two puts between polls, same content: still two versions
        assert await trigger.poll_once() == 2
        assert await trigger.poll_once() == 0
    finally:
        await trigger.close()
    delivered = sorted(c[1]["Records"][0]["s3"]["object"]["versionId"] for c in submit.calls)
    assert delivered == sorted(versions)


async def test_missing_bucket_is_created(s3, s3_server, store):
    bucket = f"created-{uuid.uuid4().hex[:10]}"
    trigger = await started([rule(bucket, prefix="", suffix="")], store, s3_server, RecordingSubmit(store))
    await trigger.close()
    s3.head_bucket(Bucket=bucket)


async def test_paginated_listing_with_the_real_invoker(s3, s3_server, s3_bucket, store):
    invoked: list[str] = []

    async def fake_invoke(function, event):  # a fake function runtime: always succeeds
        invoked.append(unquote_plus(event["Records"][0]["s3"]["object"]["key"]))
        return InvokeOutcome(ok=True)

    async def no_destination(function, destination, record):
        raise AssertionError("nothing should fail")

    invoker = AsyncInvoker(fake_invoke, store=store, failure_destination=no_destination)
    trigger = await started([rule(s3_bucket, suffix="")], store, s3_server, invoker.submit, page_size=2)
    try:
        keys = [f"incoming/{i:02d}.json" for i in range(7)]
        for key in keys:
            s3.put_object(Bucket=s3_bucket, Key=key, Body=b"{}")
        assert await trigger.poll_once() == 7
        await invoker.drain()
    finally:
        await trigger.close()
        await invoker.close()
    assert sorted(invoked) == keys
    assert all(store.get(f"s3:Summarize:{s3_bucket}/{k}#" + _version(s3, s3_bucket, k)).status == "done"
               for k in keys)


async def test_polling_does_not_block_the_event_loop(s3, s3_server, s3_bucket, store):
    for i in range(20):
        s3.put_object(Bucket=s3_bucket, Key=f"incoming/{i}.txt", Body=b"x")
    trigger = await started([rule(s3_bucket)], store, s3_server, RecordingSubmit(store), page_size=5)
    ticks = 0

    async def ticker():
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0)
    try:
        before = ticks
        await trigger.poll_once()  # five pages and a versioning check: each an awaited HTTP request
        during = ticks - before
    finally:
        task.cancel()
        await trigger.close()
    # A blocking client would hold the loop for the whole poll: the ticker could not run.
    assert during >= 5


def _version(s3, bucket: str, key: str) -> str:
    head = s3.head_object(Bucket=bucket, Key=key)
    return f"{head['ETag'].strip(chr(34))}@{head['LastModified'].isoformat()}"
