"""Event triggers of ``llmfn serve``: S3 uploads (a durable poller),
schedules and the Invoke API's Event invocations feed Lambda's asynchronous
invocation (retries, event age, an on-failure destination in S3), over the
service's function runtime."""
from __future__ import annotations

import asyncio
import json
import logging
import os
from typing import TYPE_CHECKING, Awaitable, Callable

from runtime.triggers.asyncinvoke import AsyncInvoker, InvokeOutcome, async_config
from runtime.triggers.delivery import DeliveryStore
from runtime.triggers.s3 import S3Trigger, s3_rules
from runtime.triggers.schedule import Scheduler, schedule_entries

if TYPE_CHECKING:
    from runtime.service import Service

log = logging.getLogger("llmfn.triggers")
DEFAULT_FAILURE_DESTINATION = "s3://llmfn-failures/async"


def _invoker(service: "Service"):
    async def invoke(function: str, event: dict) -> InvokeOutcome:
        result = await service.stack.functions.invoke(function, event)
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


def _destination_writer(service: "Service") -> Callable[[str, str | None, dict], Awaitable[None]]:
    async def write(function: str, destination: str | None, record: dict) -> None:
        target = (destination or DEFAULT_FAILURE_DESTINATION).removeprefix("s3://").rstrip("/")
        bucket, _, prefix = target.partition("/")
        key = "/".join(p for p in (prefix, function, f"{record['requestContext']['requestId']}.json") if p)
        fs = service._s3fs()
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, _put, fs, bucket, key, json.dumps(record).encode())
        log.warning("function %s: event sent to s3://%s/%s (%s)", function, bucket, key,
                    record["requestContext"]["condition"])
    return write


def _put(fs, bucket: str, key: str, data: bytes) -> None:
    if not fs.exists(bucket):
        fs.mkdir(bucket)
    fs.pipe_file(f"{bucket}/{key}", data)


async def start_triggers(service: "Service") -> Callable[[], Awaitable[None]]:
    """The delivery store and the asynchronous invoker (``service.events``, which the
    Invoke API's Event invocations use too), then the S3 and schedule triggers."""
    template = service.stack.template
    rules = s3_rules(template.functions)
    entries = schedule_entries(template.functions)
    settings = service.stack.settings
    store = DeliveryStore(settings.data_dir / "deliveries.sqlite3")
    default = os.environ.get("LLMFN_FAILURE_DESTINATION", DEFAULT_FAILURE_DESTINATION)
    configs = {name: async_config(spec.invoke_config, default) for name, spec in template.functions.items()}
    invoker = AsyncInvoker(_invoker(service), store=store, failure_destination=_destination_writer(service),
                           configs=configs, retry_base_delay_s=float(os.environ.get("LLMFN_RETRY_DELAY_S", "60")),
                           queue_limit=settings.event_queue_limit)
    service.events = invoker
    await invoker.resume()
    s3 = S3Trigger(rules, submit=invoker.submit, store=store, endpoint_url=service.s3_endpoint_url,
                   interval=float(os.environ.get("LLMFN_S3_POLL_S", "1.0"))) if rules else None
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

    return close
