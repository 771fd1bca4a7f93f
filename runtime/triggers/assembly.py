"""The event triggers of a long-lived service, put together: S3 uploads (a
durable poller), schedules and the Invoke API's Event invocations feed Lambda's
asynchronous invocation (retries, event age, an on-failure destination in S3)
over the function runtime it is given. ``runtime.server`` starts it for serve."""
from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from runtime.functions import FunctionHost
from runtime.settings import Settings
from runtime.template import Template
from runtime.triggers.asyncinvoke import AsyncInvoker, InvokeOutcome, async_config
from runtime.triggers.delivery import DeliveryStore
from runtime.triggers.s3 import S3Trigger, s3_rules
from runtime.triggers.schedule import Scheduler, schedule_entries

log = logging.getLogger("llmfn.triggers")


@dataclass
class Triggers:
    invoker: AsyncInvoker  # what the Lambda API's Event invocations are queued with
    close: Callable[[], Awaitable[None]]


def _invoker(functions: FunctionHost):
    async def invoke(function: str, event: dict) -> InvokeOutcome:
        result = await functions.invoke(function, event)
        async for _ in result.outcome.stream():
            pass
        report = await result.report
        inv = result.invocation
        if inv.failure is None and not result.is_error:
            return InvokeOutcome(ok=True)
        error = inv.failure or result.outcome.error()
        # An exhausted LLM budget will not have come back by the next try; capacity will.
        return InvokeOutcome(ok=False, error=error, retryable=not report.llm.errors.get("insufficient_quota"))
    return invoke


def _destination_writer(default: str, s3_filesystem: Callable[[], Any]
                        ) -> Callable[[str, str | None, dict], Awaitable[None]]:
    async def write(function: str, destination: str | None, record: dict) -> None:
        target = (destination or default).removeprefix("s3://").rstrip("/")
        bucket, _, prefix = target.partition("/")
        key = "/".join(p for p in (prefix, function, f"{record['requestContext']['requestId']}.json") if p)
        fs = s3_filesystem()
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, _put, fs, bucket, key, json.dumps(record).encode())
        log.warning("function %s: event sent to s3://%s/%s (%s)", function, bucket, key,
                    record["requestContext"]["condition"])
    return write


def _put(fs, bucket: str, key: str, data: bytes) -> None:
    if not fs.exists(bucket):
        fs.mkdir(bucket)
    fs.pipe_file(f"{bucket}/{key}", data)


def replica_id(settings: Settings) -> str:
    """This service's name as the owner of the events it delivers: its host and data
    dir, so a restarted service takes its own events back at once, while each replica
    (a host or a data dir of its own) leaves another's alone until their lease runs out."""
    data_dir = hashlib.sha256(str(settings.data_dir.resolve()).encode()).hexdigest()[:12]
    return f"{socket.gethostname()}:{data_dir}"


async def start_triggers(template: Template, settings: Settings, functions: FunctionHost, *,
                         s3_endpoint_url: str | None, s3_filesystem: Callable[[], Any]) -> Triggers:
    """The delivery store and the asynchronous invoker (which the Invoke API's Event
    invocations use too), then the S3 and schedule triggers."""
    rules = s3_rules(template.functions)
    entries = schedule_entries(template.functions)
    store = await asyncio.to_thread(DeliveryStore, settings.store("deliveries"), owner=replica_id(settings),
                                    lease_s=settings.delivery_lease_s)
    default = settings.failure_destination
    configs = {name: async_config(spec.invoke_config, default) for name, spec in template.functions.items()}
    invoker = AsyncInvoker(_invoker(functions), store=store,
                           failure_destination=_destination_writer(default, s3_filesystem),
                           configs=configs, retry_base_delay_s=settings.retry_delay_s,
                           queue_limit=settings.event_queue_limit)
    await invoker.start()
    s3 = S3Trigger(rules, submit=invoker.submit, store=store, endpoint_url=s3_endpoint_url,
                   interval=settings.s3_poll_s) if rules else None
    scheduler = Scheduler(entries, invoker.submit) if entries else None
    for part in (s3, scheduler):
        if part is not None:
            await part.start()
    for rule in rules:
        log.info("S3 trigger: s3://%s/%s*%s -> %s", rule.bucket, rule.prefix, rule.suffix, rule.function)
    for entry in entries:
        log.info("schedule %s: %s -> %s%s", entry.rule, entry.expression, entry.function,
                 "" if entry.enabled else " (disabled)")

    async def close() -> None:
        for part in (scheduler, s3):
            if part is not None:
                await part.close()
        await invoker.close(timeout=30)
        await asyncio.get_running_loop().run_in_executor(None, store.close)

    return Triggers(invoker, close)
