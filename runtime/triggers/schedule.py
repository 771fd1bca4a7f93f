"""Schedule triggers: a function's ``Schedule`` events (EventBridge rules), fired
at the times of their ``rate(...)`` and ``cron(...)`` expressions (the grammar
is ``runtime.template.schedule_expressions``).

Firings missed while the service was down are not caught up (EventBridge
does not either). Each firing is handed to ``submit`` with the event id
``schedule:{function}:{event}:{fire time}``; ``Input`` (a JSON string)
replaces the scheduled event, as with an EventBridge target. This module
computes times and builds events; it must not invoke functions itself.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from runtime.template import FunctionSpec, ScheduleEvent
from runtime.template.schedule_expressions import Schedule, parse_schedule
from runtime.triggers.delivery import Submit
from runtime.triggers.events import rule_arn, scheduled_event

log = logging.getLogger("llmfn.triggers")


@dataclass(frozen=True)
class ScheduleEntry:
    """One ``Schedule`` event of a function."""
    function: str
    event: str  # the event's name under the function's Events
    rule: str  # the EventBridge rule's name: Name, else FunctionEvent like SAM's logical id
    expression: str
    schedule: Schedule
    enabled: bool = True
    input: Any = None  # parsed Input; when set it replaces the scheduled event

    def event_for(self, fire_time: datetime) -> Any:
        if self.input is not None:
            return self.input
        return scheduled_event(rule_arn(self.rule), fire_time)

    def event_id(self, fire_time: datetime) -> str:
        return f"schedule:{self.function}:{self.event}:{fire_time.astimezone(UTC).isoformat()}"


def schedule_entries(functions: Mapping[str, FunctionSpec]) -> list[ScheduleEntry]:
    """Every ``Schedule`` event in the template, disabled ones included (``enabled=False``)."""
    return [ScheduleEntry(function=spec.name, event=event.name, rule=event.rule, expression=event.expression,
                          schedule=parse_schedule(event.expression), enabled=event.enabled, input=event.input)
            for spec in functions.values() for event in spec.events if isinstance(event, ScheduleEvent)]


class Scheduler:
    """Fires each enabled entry at its times, for as long as the service runs."""

    def __init__(self, entries: list[ScheduleEntry], submit: Submit, *,
                 clock: Callable[[], float] = time.time):
        self.entries = list(entries)
        self._submit = submit
        self._clock = clock
        self._tasks: list[asyncio.Task] = []

    async def start(self) -> None:
        for entry in self.entries:
            if not entry.enabled:
                log.info("schedule %s (%s) is disabled", entry.rule, entry.expression)
                continue
            self._tasks.append(asyncio.create_task(self._run(entry), name=f"llmfn-schedule:{entry.rule}"))

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()

    async def fire(self, entry: ScheduleEntry, fire_time: datetime) -> bool:
        """Hand one firing to ``submit``; False when that firing was submitted before."""
        return await self._submit(entry.function, entry.event_for(fire_time), event_id=entry.event_id(fire_time))

    async def _run(self, entry: ScheduleEntry) -> None:
        fire_time = entry.schedule.next_after(self._now())
        while fire_time is not None:
            await self._sleep_until(fire_time)
            try:
                await self.fire(entry, fire_time)
            except asyncio.CancelledError:
                raise
            except Exception:  # one failed hand-over must not stop the schedule
                log.exception("schedule %s: could not submit the firing at %s", entry.rule, fire_time)
            fire_time = entry.schedule.next_after(max(fire_time, self._now()))
        log.info("schedule %s (%s) has no more firings", entry.rule, entry.expression)

    async def _sleep_until(self, moment: datetime) -> None:
        # Sleep in bounded steps and re-read the clock: the loop's timer is monotonic,
        # the schedule is wall-clock time, and the two drift (suspend, NTP steps).
        while (delay := moment.timestamp() - self._clock()) > 0:
            await asyncio.sleep(min(delay, 30.0))

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self._clock(), UTC)

