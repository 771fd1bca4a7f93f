"""Schedule expressions of ``Schedule`` events (EventBridge rules): ``rate(...)``
and ``cron(...)``, in UTC like EventBridge. The template reader checks them at
load time; the scheduler computes firings with them.

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
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from croniter import CroniterBadCronError, CroniterBadDateError, croniter

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
        return datetime.fromtimestamp(ts, UTC)


@dataclass(frozen=True)
class CronSchedule:
    expression: str  # in croniter's syntax, seven fields

    def next_after(self, moment: datetime) -> datetime | None:
        try:
            it = croniter(self.expression, moment.astimezone(UTC),
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
