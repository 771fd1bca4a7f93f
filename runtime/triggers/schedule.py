"""Schedule triggers: a function's ``Schedule`` events (EventBridge rules), fired
on ``rate(...)`` and ``cron(...)`` expressions, in UTC like EventBridge.

Grammar:
- ``rate(N unit)``: unit ``minute``/``hour``/``day`` when N is 1, ``minutes``/
  ``hours``/``days`` otherwise, as EventBridge requires. llmfn extension (for
  tests and demos; EventBridge would reject it): ``second``/``seconds``.
  Rates fire at whole multiples of the period since the Unix epoch (``rate(5
  minutes)`` at :00, :05, ...), not from when the service started, so a
  restart does not shift them and a firing repeated by a restart has the same
  event id (and is claimed once).
- ``cron(min hour day-of-month month day-of-week year)``: AWS's six fields,
  evaluated by croniter after conversion: ``?`` becomes ``*``, day-of-week
  ``1-7`` (SUN-SAT) becomes croniter's ``0-6``, ``6L`` (last Friday) becomes
  ``L5``, ``6#3`` becomes ``5#3``, and the year goes to croniter's seventh
  field. As in AWS, one of day-of-month and day-of-week must be ``?``.

Firings missed while the service was down are not caught up (EventBridge
does not either). Each firing is handed to ``submit`` with the event id
``schedule:{function}:{event}:{fire time}``; ``Input`` (a JSON string)
replaces the scheduled event, as with an EventBridge target. This module
computes times and builds events; it must not invoke functions itself.
"""
from __future__ import annotations

import asyncio
import json
import logging
import math
import re
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable, Mapping, Protocol

from croniter import CroniterBadCronError, CroniterBadDateError, croniter

from runtime.app.functions import FunctionSpec, TemplateError
from runtime.triggers.events import rule_arn, scheduled_event
from runtime.triggers.delivery import Submit

log = logging.getLogger("llmfn.triggers")

_RATE = re.compile(r"^rate\(\s*(\d+)\s+([a-z]+)\s*\)$", re.IGNORECASE)
_CRON = re.compile(r"^cron\((.*)\)$", re.IGNORECASE)
_UNITS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}
# How far ahead croniter looks before saying there is no firing (AWS allows years up to 2199).
_MAX_YEARS_AHEAD = 200


class Schedule(Protocol):
    def next_after(self, moment: datetime) -> datetime | None:
        """The first firing strictly after ``moment`` (UTC); None when there is none."""


@dataclass(frozen=True)
class RateSchedule:
    period_s: int

    def next_after(self, moment: datetime) -> datetime | None:
        ts = (math.floor(moment.timestamp() / self.period_s) + 1) * self.period_s
        return datetime.fromtimestamp(ts, timezone.utc)


@dataclass(frozen=True)
class CronSchedule:
    expression: str  # in croniter's syntax, seven fields

    def next_after(self, moment: datetime) -> datetime | None:
        try:
            it = croniter(self.expression, moment.astimezone(timezone.utc),
                          max_years_between_matches=_MAX_YEARS_AHEAD)
            return it.get_next(datetime)
        except CroniterBadDateError:
            return None


def parse_schedule(expression: str) -> RateSchedule | CronSchedule:
    """A ``rate(...)`` or ``cron(...)`` expression; ``ValueError`` says what is wrong."""
    text = expression.strip()
    if rate := _RATE.match(text):
        return _rate(int(rate.group(1)), rate.group(2).lower(), text)
    if cron := _CRON.match(text):
        return CronSchedule(aws_cron_to_croniter(cron.group(1)))
    raise ValueError(f"{expression!r}: expected rate(N unit) or cron(min hour dom month dow year)")


def _rate(value: int, unit: str, text: str) -> RateSchedule:
    singular = unit.removesuffix("s")
    if singular not in _UNITS:
        raise ValueError(f"{text!r}: the unit must be minute(s), hour(s) or day(s) (or llmfn's second(s))")
    if value < 1:
        raise ValueError(f"{text!r}: the value must be a positive whole number")
    if (value == 1) != (unit == singular):
        raise ValueError(f"{text!r}: use the singular unit for 1 and the plural otherwise, "
                         f"e.g. rate(1 {singular}) or rate({max(value, 2)} {singular}s)")
    return RateSchedule(value * _UNITS[singular])


def aws_cron_to_croniter(fields_text: str) -> str:
    """AWS's six cron fields as croniter's seven (minute hour dom month dow second year)."""
    fields = fields_text.split()
    if len(fields) != 6:
        raise ValueError(f"cron({fields_text}): AWS cron has six fields: minutes hours day-of-month "
                         "month day-of-week year")
    minute, hour, dom, month, dow, year = fields
    if (dom == "?") == (dow == "?"):
        raise ValueError(f"cron({fields_text}): one of day-of-month and day-of-week must be '?'")
    if dom.upper() == "LW":
        raise ValueError(f"cron({fields_text}): 'LW' (last weekday of the month) is not supported")
    dom = "*" if dom == "?" else dom
    dow = "*" if dow == "?" else ",".join(_aws_dow(item, fields_text) for item in dow.split(","))
    expression = f"{minute} {hour} {dom} {month} {dow} 0 {year}"
    try:
        croniter(expression)
    except (CroniterBadCronError, ValueError) as exc:
        raise ValueError(f"cron({fields_text}): {exc}") from None
    return expression


def _aws_dow(item: str, text: str) -> str:
    """One day-of-week list item: AWS numbers days 1-7 from Sunday, croniter 0-6."""
    upper = item.upper()
    if upper == "L":  # the last day of the week: Saturday
        return "6"
    if last := re.fullmatch(r"(\w+)L", upper):
        return f"L{_aws_day(last.group(1), text)}"
    if nth := re.fullmatch(r"(\w+)#(\d)", upper):
        return f"{_aws_day(nth.group(1), text)}#{nth.group(2)}"
    base, _, step = upper.partition("/")
    start, dash, end = base.partition("-")
    converted = _aws_day(start, text) + (f"-{_aws_day(end, text)}" if dash else "")
    return converted + (f"/{step}" if step else "")


def _aws_day(token: str, text: str) -> str:
    if token == "*" or not token.isdigit():
        return token  # names (MON) mean the same in both
    if not 1 <= int(token) <= 7:
        raise ValueError(f"cron({text}): day-of-week numbers run from 1 (SUN) to 7 (SAT)")
    return str(int(token) - 1)


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
        return f"schedule:{self.function}:{self.event}:{fire_time.astimezone(timezone.utc).isoformat()}"


def schedule_entries(functions: Mapping[str, FunctionSpec]) -> list[ScheduleEntry]:
    """Every ``Schedule`` event in the template, disabled ones included (``enabled=False``)."""
    entries = []
    for spec in functions.values():
        for event in spec.events:
            if event.type == "Schedule":
                entries.append(_entry(spec.name, event.name, event.properties))
    return entries


def _entry(function: str, event: str, props: Mapping[str, Any]) -> ScheduleEntry:
    where = f"Resources.{function}.Properties.Events.{event}.Properties"
    expression = props.get("Schedule")
    if not isinstance(expression, str):
        raise TemplateError(f"{where}.Schedule: required, rate(...) or cron(...)")
    try:
        schedule = parse_schedule(expression)
    except ValueError as exc:
        raise TemplateError(f"{where}.Schedule: {exc}") from None
    return ScheduleEntry(function=function, event=event, rule=str(props.get("Name") or f"{function}{event}"),
                         expression=expression, schedule=schedule, enabled=_enabled(props),
                         input=_input(props.get("Input"), where))


def _enabled(props: Mapping[str, Any]) -> bool:
    enabled = props.get("Enabled", True)
    if isinstance(enabled, str):
        enabled = enabled.strip().lower() != "false"
    return bool(enabled) and str(props.get("State", "ENABLED")).upper() != "DISABLED"


def _input(raw: Any, where: str) -> Any:
    if raw is None or isinstance(raw, (dict, list)):
        return raw  # a mapping in YAML is not SAM, but means the same
    try:
        return json.loads(raw)
    except (TypeError, ValueError):
        raise TemplateError(f"{where}.Input: must be a JSON string") from None


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
        return datetime.fromtimestamp(self._clock(), timezone.utc)

