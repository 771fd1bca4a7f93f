"""S3 triggers: a function's ``S3`` events, fired when objects land in a bucket.

Why a poller and not notifications: moto's server (the embedded S3) cannot
push notifications to an HTTP endpoint, real S3 pushes only to SNS, SQS or
Lambda, and MinIO can push to a webhook. Listing the bucket every ``interval``
seconds works the same against all three. A MinIO webhook receiver (or an SQS
consumer for real S3) could feed the same ``submit`` later, as a lower-latency
option; the poller would stay as the fallback.

Exactly once per object version, across restarts: each version has an event id
``s3:{function}:{bucket}/{key}#{version}`` where the version is the S3
``VersionId`` on a versioned bucket (``ListObjectVersions``), else the object's
``ETag@LastModified`` (so overwriting an object is a new version). ``submit``
claims that id in the ``DeliveryStore`` before anything else, and the store
is durable and shared by replicas, so neither a restarted poller nor another
replica polling the same bucket delivers anything delivered before.

Objects that exist when a rule first starts are not delivered, as in AWS
where a new notification configuration does not fire for old objects: the
first poll of a rule records every version it sees as ``skipped`` (the rule's
baseline, kept in the store, taken by one replica only). Anything written after that is delivered, also
when it was written while the service was down ("upload, then restart").
``deliver_existing=True`` delivers the pre-existing objects instead.

Only ``ObjectCreated`` events are emulated, all with the eventName
``ObjectCreated:Put`` (a listing cannot tell a copy or a multipart upload from
a put, nor see deletions). This module lists buckets and builds events; it
must not invoke functions itself: ``submit`` (the async invoker) does.
"""
from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import logging
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from aiobotocore.session import AioSession
from botocore.exceptions import ClientError

from runtime.template import FunctionSpec, S3Event
from runtime.triggers.delivery import DeliveryStore, Submit
from runtime.triggers.events import s3_event, s3_put_record

log = logging.getLogger("llmfn.triggers")

CREATED_EVENT = "s3:ObjectCreated:Put"


@dataclass
class S3Rule:
    """One ``S3`` event of a function: which bucket, which keys, which event names."""
    function: str
    bucket: str
    events: list[str] = field(default_factory=lambda: ["s3:ObjectCreated:*"])
    prefix: str = ""
    suffix: str = ""

    def matches(self, key: str) -> bool:
        return key.startswith(self.prefix) and key.endswith(self.suffix)

    def wants_created(self) -> bool:
        return any(fnmatch.fnmatchcase(CREATED_EVENT, pattern) for pattern in self.events)

    @property
    def id_prefix(self) -> str:
        return f"s3:{self.function}:{self.bucket}/"

    @property
    def baseline_marker(self) -> str:
        return f"s3-baseline:{self.function}:{self.bucket}:{self.prefix}:{self.suffix}"


def s3_rules(functions: Mapping[str, FunctionSpec]) -> list[S3Rule]:
    """Every ``S3`` event of the template's functions that the poller can serve."""
    rules = []
    for spec in functions.values():
        for event in spec.events:
            if not isinstance(event, S3Event):
                continue
            rule = S3Rule(function=spec.name, bucket=event.bucket, events=list(event.events),
                          prefix=event.prefix, suffix=event.suffix)
            if rule.wants_created():
                rules.append(rule)
            else:
                log.warning("%s.%s: only ObjectCreated events are emulated; %s never fires",
                            spec.name, event.name, ", ".join(rule.events))
    return rules


@dataclass(frozen=True)
class ObjectVersion:
    """One version of an object as a listing shows it."""
    key: str
    size: int
    etag: str
    last_modified: datetime
    version_id: str | None = None  # None on an unversioned bucket (S3's "null" version)

    @property
    def version(self) -> str:
        if self.version_id:
            return self.version_id
        return f"{self.etag}@{self.last_modified.isoformat()}"

    def event_id(self, rule: S3Rule) -> str:
        return f"{rule.id_prefix}{self.key}#{self.version}"


class S3Trigger:
    """Polls the rules' buckets and submits one event per new object version."""

    def __init__(self, rules: list[S3Rule], *, submit: Submit, store: DeliveryStore,
                 endpoint_url: str | None = None, interval: float = 1.0,
                 s3_options: Mapping[str, Any] | None = None, deliver_existing: bool = False,
                 page_size: int = 1000, region: str | None = None):
        self.rules = list(rules)
        self._submit = submit
        self._store = store
        self._endpoint_url = endpoint_url
        self._interval = interval
        self._options = dict(s3_options or {})
        self._deliver_existing = deliver_existing
        self._page_size = page_size
        self._region = region
        self._exit = contextlib.AsyncExitStack()
        self._client: Any = None
        self._seen: dict[str, set[str]] = {}  # per rule id prefix: event ids already claimed
        self._task: asyncio.Task | None = None
        self._last_error: str | None = None
        self._polling = asyncio.Lock()

    async def start(self) -> None:
        """Connect, create missing buckets, take each new rule's baseline, then poll in the background."""
        self._client = await self._exit.enter_async_context(
            AioSession().create_client("s3", **_client_kwargs(self._options, self._endpoint_url, self._region)))
        try:
            for bucket in sorted({rule.bucket for rule in self.rules}):
                await self._ensure_bucket(bucket)
            for rule in self.rules:
                await self._load_seen(rule)
        except BaseException:
            await self.close()
            raise
        self._task = asyncio.create_task(self._run(), name="llmfn-s3-trigger")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        await self._exit.aclose()
        self._client = None

    async def poll_once(self) -> int:
        """One pass over every rule; returns how many events were submitted."""
        submitted = 0
        async with self._polling:  # one pass at a time: overlapping passes would list twice
            for rule in self.rules:
                submitted += await self._poll_rule(rule)
        return submitted

    async def _run(self) -> None:
        while True:
            # start() has just taken the baselines, so the first pass can wait an interval.
            await asyncio.sleep(self._interval)
            try:
                await self.poll_once()
                self._last_error = None
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # S3 down or a bucket gone: keep polling, say so once
                if str(exc) != self._last_error:
                    log.warning("S3 trigger: polling failed: %s", exc)
                self._last_error = str(exc)

    async def _ensure_bucket(self, bucket: str) -> None:
        try:
            await self._client.head_bucket(Bucket=bucket)
            return
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in ("404", "NoSuchBucket", "NotFound"):
                raise
        region = self._client.meta.region_name
        extra = {} if region in (None, "us-east-1") else {"CreateBucketConfiguration": {"LocationConstraint": region}}
        try:
            await self._client.create_bucket(Bucket=bucket, **extra)
        except ClientError as exc:  # another replica starting at the same moment created it
            if exc.response.get("Error", {}).get("Code") != "BucketAlreadyOwnedByYou":
                raise
            return
        log.info("S3 trigger: created bucket %s", bucket)

    async def _load_seen(self, rule: S3Rule) -> None:
        """Remember what the store already holds; on a rule's first start, take its baseline."""
        if await asyncio.to_thread(self._store.marker, rule.baseline_marker) is None:
            rows = []
            if not self._deliver_existing:
                rows = [(obj.event_id(rule), rule.function, {"bucket": rule.bucket, "key": obj.key})
                        async for obj in self._versions(rule)]
            added = await asyncio.to_thread(self._store.record_baseline, rule.baseline_marker, rows)
            if rows and added is not None:  # None: another replica took the baseline first
                log.info("S3 trigger: %s: %d object version(s) already in s3://%s/%s are not delivered",
                         rule.function, len(rows), rule.bucket, rule.prefix)
        self._seen[rule.id_prefix] = await asyncio.to_thread(self._store.seen_keys, rule.id_prefix)

    async def _poll_rule(self, rule: S3Rule) -> int:
        seen = self._seen.setdefault(rule.id_prefix, set())
        submitted = 0
        async for obj in self._versions(rule):
            event_id = obj.event_id(rule)
            if event_id in seen:
                continue
            if await self._submit(rule.function, self._event(rule, obj), event_id=event_id):
                submitted += 1
            seen.add(event_id)
        return submitted

    def _event(self, rule: S3Rule, obj: ObjectVersion) -> dict[str, Any]:
        region = self._client.meta.region_name or "us-east-1"
        return s3_event(s3_put_record(rule.bucket, obj.key, obj.size, obj.etag, obj.last_modified,
                                      region=region, version_id=obj.version_id))

    async def _versions(self, rule: S3Rule) -> AsyncIterator[ObjectVersion]:
        """Every object version under the rule's prefix whose key matches the rule."""
        if await self._versioned(rule.bucket):
            pages = self._client.get_paginator("list_object_versions").paginate(
                Bucket=rule.bucket, Prefix=rule.prefix, PaginationConfig={"PageSize": self._page_size})
            async for page in pages:
                for item in page.get("Versions", []):
                    if rule.matches(item["Key"]):
                        version = item.get("VersionId")
                        yield _version(item, None if version in (None, "null") else version)
            return
        pages = self._client.get_paginator("list_objects_v2").paginate(
            Bucket=rule.bucket, Prefix=rule.prefix, PaginationConfig={"PageSize": self._page_size})
        async for page in pages:
            for item in page.get("Contents", []):
                if rule.matches(item["Key"]):
                    yield _version(item, None)

    async def _versioned(self, bucket: str) -> bool:
        # Asked on every poll: versioning can be switched on while the service runs. Versions
        # written before that keep the "null" id, so their event ids do not change.
        status = await self._client.get_bucket_versioning(Bucket=bucket)
        return status.get("Status") == "Enabled"


def _version(item: Mapping[str, Any], version_id: str | None) -> ObjectVersion:
    return ObjectVersion(key=item["Key"], size=int(item.get("Size", 0)), etag=str(item.get("ETag", "")).strip('"'),
                         last_modified=item["LastModified"], version_id=version_id)


def _client_kwargs(options: Mapping[str, Any], endpoint_url: str | None, region: str | None) -> dict[str, Any]:
    """aiobotocore client arguments from s3fs-style options (the same ``s3_options`` the model store takes)."""
    kwargs: dict[str, Any] = dict(options.get("client_kwargs") or {})
    for s3fs_name, boto_name in (("key", "aws_access_key_id"), ("secret", "aws_secret_access_key"),
                                 ("token", "aws_session_token"), ("endpoint_url", "endpoint_url")):
        if options.get(s3fs_name):
            kwargs.setdefault(boto_name, options[s3fs_name])
    if endpoint_url:
        kwargs["endpoint_url"] = endpoint_url
    if region:
        kwargs["region_name"] = region
    return kwargs
