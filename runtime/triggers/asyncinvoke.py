"""Lambda's asynchronous invocation, as S3 and schedule triggers and the Invoke
API's ``Event`` invocations get it.

It owns what happens to an event after a trigger hands it over: the event is
recorded in the ``DeliveryStore`` first (so a crash never loses it), leased to
this replica, then runs in the background while the replica renews its lease;
every third of a lease it also takes over the events whose lease ran out (a
replica that died mid-delivery) and runs them. A failed invocation is retried
with backoff (Lambda waits about one minute, then two) up to
``MaximumRetryAttempts`` times and never
once the event is older than ``MaximumEventAgeInSeconds``; a call refused for
an exhausted LLM budget is not retried. When the invoker gives up, it builds
Lambda's on-failure destination record and hands it to the
``failure_destination`` callable. It holds at most ``queue_limit`` events
from callers that can be told to retry (``bounded``): past that, ``QueueFull``.

It must not run handler code or write to S3 itself: ``invoke`` (the function
runtime) and ``failure_destination`` (the integrator) do those.
"""
from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from runtime.template.event_spec import MAX_EVENT_AGE_S, MAX_RETRY_ATTEMPTS, InvokeConfigSpec
from runtime.template.pseudo import LOCAL_ACCOUNT_ID
from runtime.triggers.delivery import Delivery, DeliveryStore, Status
from runtime.triggers.events import DEFAULT_REGION

log = logging.getLogger("llmfn.triggers")

Condition = Literal["RetriesExhausted", "EventAgeExceeded", "NotRetryable"]


@dataclass
class InvokeOutcome:
    """What one invocation of a function came to."""
    ok: bool
    error: dict[str, Any] | None = None  # the Lambda error: errorType, errorMessage, stackTrace
    retryable: bool = True  # False when the call was refused for an exhausted LLM budget


Invoke = Callable[[str, dict], Awaitable[InvokeOutcome]]
# (function, its on-failure destination "s3://bucket/prefix" or None when it has none, the record).
# The integrator writes the record there, e.g. one JSON object per failed event.
FailureDestination = Callable[[str, "str | None", dict], Awaitable[None]]

@dataclass(frozen=True)
class AsyncConfig:
    """How one function's events are retried and where they go when it gives up; the defaults are Lambda's."""
    maximum_retry_attempts: int = MAX_RETRY_ATTEMPTS
    maximum_event_age_s: float = MAX_EVENT_AGE_S
    destination: str | None = None  # on-failure destination, "s3://bucket/prefix"


def async_config(spec: InvokeConfigSpec, default_destination: str | None = None) -> AsyncConfig:
    """A function's ``EventInvokeConfig`` spec, its on-failure destination
    falling back to ``default_destination`` when the template names none."""
    return AsyncConfig(spec.maximum_retry_attempts, spec.maximum_event_age_s,
                       spec.on_failure or default_destination)


class QueueFull(Exception):
    """The asynchronous queue is at its limit: the event was not accepted (Lambda's 429)."""


@dataclass
class _Run:
    """One event's delivery in progress."""
    function: str
    event_id: str
    event: dict[str, Any]
    config: AsyncConfig
    first_seen: float
    attempts: int = 0
    last_error: dict[str, Any] | None = field(default=None)


class AsyncInvoker:
    """Runs submitted events in the background with Lambda's retry and destination rules."""

    def __init__(self, invoke: Invoke, *, store: DeliveryStore, failure_destination: FailureDestination,
                 configs: Mapping[str, AsyncConfig] | None = None, clock: Callable[[], float] = time.time,
                 retry_base_delay_s: float = 60.0, concurrency: int = 8, queue_limit: int = 1000,
                 region: str = DEFAULT_REGION, account_id: str = LOCAL_ACCOUNT_ID):
        self._invoke = invoke
        self._store = store
        self._failure_destination = failure_destination
        self._configs = dict(configs or {})
        self._clock = clock
        self._base_delay = retry_base_delay_s
        self._slots = asyncio.Semaphore(concurrency)
        self._region, self._account = region, account_id
        self._tasks: dict[str, asyncio.Task] = {}
        self._queue_limit = queue_limit
        self._claiming = 0  # bounded submissions between the check and their task
        self._closed = False
        self._started_own = False  # this replica's own events from before a restart are taken back once
        self._leases: asyncio.Task | None = None

    def config_for(self, function: str) -> AsyncConfig:
        return self._configs.get(function) or AsyncConfig()

    async def submit(self, function: str, event: dict[str, Any], *, event_id: str,
                     config: AsyncConfig | None = None, bounded: bool = False) -> bool:
        """Accept an event (Lambda's 202); False when ``event_id`` was accepted before.

        The event is durable once this returns; it runs in a background task.
        After ``close()`` it is still recorded and runs on the next ``resume()``.
        ``bounded`` (the Invoke API's events) raises ``QueueFull`` rather than hold
        more than ``queue_limit`` events; triggers that re-deliver from their
        source (S3, schedules) are not refused.
        """
        if bounded and len(self._tasks) + self._claiming >= self._queue_limit:
            raise QueueFull(f"{self._queue_limit} asynchronous invocations are already waiting or running")
        self._claiming += bounded
        try:
            now = self._clock()
            if not await asyncio.to_thread(self._store.claim, event_id, function, event, now=now):
                return False
            if not self._closed:
                self._start(_Run(function, event_id, event, config or self.config_for(function), now))
            return True
        finally:
            self._claiming -= bounded

    async def start(self) -> None:
        """Take over what is left to run (``resume``), then keep this replica's leases
        and take over expired ones every third of a lease, until ``close()``."""
        await self.resume()
        self._leases = asyncio.create_task(self._keep_leases(), name="llmfn-async-leases")

    async def resume(self) -> int:
        """Run the events whose lease ran out (a replica that stopped or died, at least
        once) and, the first time, this replica's own from before a restart; how many."""
        own, self._started_own = not self._started_own, True
        room = max(0, self._queue_limit - len(self._tasks))
        if self._closed or not room:
            return 0
        taken = await asyncio.to_thread(self._store.take_over, own=own, limit=room)
        started = 0
        for row in taken:
            if row.event_id not in self._tasks and not self._closed:
                self._start(self._resumed(row))
                started += 1
        if started:
            log.info("taking over %d pending event(s)", started)
        return started

    async def _keep_leases(self) -> None:
        while True:
            await asyncio.sleep(self._store.lease_s / 3)
            try:
                await asyncio.to_thread(self._store.renew, list(self._tasks))
                await self.resume()
            except asyncio.CancelledError:
                raise
            except Exception:  # the database may come back; the leases are renewed at the next round
                log.exception("could not renew or take over event leases in %s", self._store.name)

    async def drain(self) -> None:
        """Wait until every event submitted so far is finished (done or failed)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks.values()), return_exceptions=True)

    async def close(self, timeout: float = 10.0) -> None:
        """Stop taking work; let in-flight events finish for up to ``timeout`` seconds.

        Whatever is still running then is cancelled and stays pending in the
        store, its lease given up, so another replica or the next start runs it again.
        """
        self._closed = True
        running = dict(self._tasks)
        # leases are kept while in-flight events finish, then given up
        _, unfinished = await asyncio.wait(running.values(), timeout=timeout) if running else ((), ())
        if self._leases is not None:
            self._leases.cancel()
            await asyncio.gather(self._leases, return_exceptions=True)
        for task in unfinished:
            task.cancel()
        if unfinished:
            log.info("%d event(s) still running at shutdown stay pending for another replica or the next start",
                     len(unfinished))
            await asyncio.gather(*unfinished, return_exceptions=True)
            left = [event_id for event_id, task in running.items() if task in unfinished]
            await asyncio.to_thread(self._store.release, left)

    def _resumed(self, row: Delivery) -> _Run:
        return _Run(row.function, row.event_id, row.payload, self.config_for(row.function), row.first_seen,
                    attempts=row.attempts, last_error=row.last_error)

    def _start(self, run: _Run) -> None:
        task = asyncio.create_task(self._deliver(run), name=f"llmfn-async:{run.event_id}")
        self._tasks[run.event_id] = task
        task.add_done_callback(lambda _: self._tasks.pop(run.event_id, None))

    async def _deliver(self, run: _Run) -> None:
        while True:
            if run.attempts > run.config.maximum_retry_attempts:  # resumed after its last try
                return await self._give_up(run, "RetriesExhausted")
            if self._too_old(run, self._clock()):
                return await self._give_up(run, "EventAgeExceeded")
            outcome = await self._attempt(run)
            if outcome.ok:
                await self._mark(run, "done")
                return
            run.last_error = outcome.error or {"errorType": "Unknown", "errorMessage": "invocation failed"}
            if not await self._mark(run, "pending"):
                return
            if not outcome.retryable:
                return await self._give_up(run, "NotRetryable")
            if run.attempts > run.config.maximum_retry_attempts:
                return await self._give_up(run, "RetriesExhausted")
            delay = self._base_delay * 2 ** (run.attempts - 1)
            # Lambda drops an event that would be too old by its next try; no point waiting for that.
            if self._too_old(run, self._clock() + delay):
                return await self._give_up(run, "EventAgeExceeded")
            log.info("%s: attempt %d failed (%s); retrying in %.1fs", run.function, run.attempts,
                     run.last_error.get("errorType"), delay)
            await asyncio.sleep(delay)

    async def _attempt(self, run: _Run) -> InvokeOutcome:
        async with self._slots:  # held while invoking only, never while waiting to retry
            run.attempts += 1
            try:
                return await self._invoke(run.function, run.event)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a runtime fault is a failed attempt, not a lost event
                log.exception("%s: invoke raised", run.function)
                return InvokeOutcome(ok=False, error={"errorType": type(exc).__name__, "errorMessage": str(exc)})

    def _too_old(self, run: _Run, moment: float) -> bool:
        return moment - run.first_seen > run.config.maximum_event_age_s

    async def _give_up(self, run: _Run, condition: Condition) -> None:
        record = self._record(run, condition)
        log.warning("%s: event %s not delivered (%s after %d attempt(s))", run.function, run.event_id,
                    condition, run.attempts)
        try:
            await self._failure_destination(run.function, run.config.destination, record)
        except asyncio.CancelledError:
            raise
        except Exception:
            # The event is still marked failed: re-running the function would not fix the destination.
            log.exception("%s: could not write the on-failure record for %s", run.function, run.event_id)
        await self._mark(run, "failed")

    async def _mark(self, run: _Run, status: Status) -> bool:
        """Record where ``run`` stands; False when another replica took its lease over
        (this one stalled past it), which then owns the rest of the delivery."""
        error = None if status == "done" else run.last_error
        if await asyncio.to_thread(self._store.mark, run.event_id, status, run.attempts, error):
            return True
        log.warning("%s: event %s was taken over by another replica; leaving it to that one",
                    run.function, run.event_id)
        return False

    def _record(self, run: _Run, condition: Condition) -> dict[str, Any]:
        """Lambda's on-failure destination record for an event given up on."""
        arn = f"arn:aws:lambda:{self._region}:{self._account}:function:{run.function}:$LATEST"
        record: dict[str, Any] = {
            "version": "1.0",
            "timestamp": _iso(self._clock()),
            "requestContext": {
                # Lambda keeps one request id across an async event's retries.
                "requestId": str(uuid.uuid5(uuid.NAMESPACE_URL, f"llmfn:{run.event_id}")),
                "functionArn": arn,
                "condition": condition,
                "approximateInvokeCount": run.attempts,
            },
            "requestPayload": run.event,
        }
        if run.attempts:
            record["responseContext"] = {"statusCode": 200, "executedVersion": "$LATEST",
                                         "functionError": "Unhandled"}
            record["responsePayload"] = run.last_error
        return record


def _iso(ts: float) -> str:
    moment = datetime.fromtimestamp(ts, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
