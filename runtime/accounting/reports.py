"""Usage reports over the ledger: calls, success / failure, tokens and p50
latencies, grouped per UTC day, model or resource, for the CLI
(``render_text``), ``GET /v1/usage`` and the usage page (the report dict).

The sums and the exact medians are computed in the database (window functions,
in SQL that SQLite and PostgreSQL read alike), so a three-month report never
loads its rows into Python. Calls still in flight are
left out until they end; calls interrupted by a crash are failures with the
tokens the ledger knew.
"""
from __future__ import annotations

import calendar
import re
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, Literal

from runtime.accounting.ledger import RUNNING, Ledger
from runtime.database import Dialect

DAY = 86400.0
MAX_PERIOD_DAYS = 92  # "up to 3 months": the longest three calendar months
DEFAULT_SINCE = "7d"
SERVICE_TYPES = ("function", "key")
GroupBy = Literal["day", "model", "resource"]

# a call's UTC day (YYYY-MM-DD), per database
UTC_DAY = {"sqlite": "strftime('%Y-%m-%d', ts, 'unixepoch')",
           "postgresql": "to_char(to_timestamp(ts) AT TIME ZONE 'UTC', 'YYYY-MM-DD')"}
# group key columns per grouping; days are UTC dates
KEYS: dict[str, tuple[tuple[str, str], ...]] = {
    "day": (("day", "UTC_DAY"),),
    "model": (("model", "model"),),
    "resource": (("service_type", "service_type"), ("resource", "resource")),
    "total": (),
}
STAT_NAMES = ("calls", "success", "failure", "input_tokens", "output_tokens", "cached_tokens")


# -- the report ---------------------------------------------------------------

def usage_report(ledger: Ledger, *, service_type: str | None = None, resource: str | None = None,
                 model: str | None = None, since: float, until: float,
                 by: GroupBy = "day") -> dict[str, Any]:
    """Usage in ``[since, until)``, grouped ``by`` day, model or resource.

    Blocking (database reads): call it from an executor on the event loop.
    """
    if by not in ("day", "model", "resource"):
        raise ValueError(f"by must be day, model or resource, not {by!r}")
    if service_type is not None and service_type not in SERVICE_TYPES:
        raise ValueError(f"service_type must be function or key, not {service_type!r}")
    if until <= since:
        raise ValueError("the period ends before it starts")
    where, params = _where(service_type, resource, model, since, until)
    per_model = _sorted(_grouped(ledger, "model", where, params))
    per_resource = _sorted(_grouped(ledger, "resource", where, params))
    rows = {"model": per_model, "resource": per_resource}.get(by)
    if rows is None:
        rows = _every_day(_grouped(ledger, "day", where, params), since, until)
    totals = _grouped(ledger, "total", where, params) or [_stats({})]
    return {
        "since": since, "until": until,
        "period": {"from": _utc_date(since).isoformat(), "to": _last_day(until).isoformat()},
        "by": by,
        "filters": {"service_type": service_type, "resource": resource, "model": model},
        "rows": rows,
        "totals": totals[0],
        "per_model": per_model,
        "per_resource": per_resource,
    }


def _where(service_type: str | None, resource: str | None, model: str | None,
           since: float, until: float) -> tuple[str, list[Any]]:
    clauses, params = ["ts >= ?", "ts < ?", f"status != '{RUNNING}'"], [since, until]
    for column, value in (("service_type", service_type), ("resource", resource), ("model", model)):
        if value is not None:
            clauses.append(f"{column} = ?")
            params.append(value)
    return " AND ".join(clauses), params


def _grouped(ledger: Ledger, grouping: str, where: str, params: list[Any]) -> list[dict[str, Any]]:
    """One dict per group: its key fields, then the stats."""
    keys = _keys(grouping, ledger.dialect)
    names = [name for name, _ in keys]
    sums = _sums(ledger, keys, where, params)
    latency = _medians(ledger, keys, "latency_ms", where, params)
    ttft = _medians(ledger, keys, "ttft_ms", where, params)
    out = []
    for key, values in sums.items():
        row = dict(zip(names, key))
        row.update(_stats(values, latency.get(key), ttft.get(key)))
        out.append(row)
    return out


def _sums(ledger: Ledger, keys, where: str, params: list[Any]) -> dict[tuple, dict[str, int]]:
    exprs = [expr for _, expr in keys]
    group = f" GROUP BY {', '.join(exprs)}" if exprs else ""
    sql = (f"SELECT {''.join(e + ', ' for e in exprs)}"
           "COUNT(*), SUM(CASE WHEN status = 'success' THEN 1 ELSE 0 END),"
           " SUM(CASE WHEN status = 'success' THEN 0 ELSE 1 END),"
           " SUM(prompt_tokens), SUM(completion_tokens), SUM(cached_tokens)"
           f" FROM calls WHERE {where}{group}")
    result = {}
    for row in ledger.read(sql, params):
        key, values = tuple(row[:len(exprs)]), row[len(exprs):]
        if values[0]:  # an ungrouped COUNT over no rows still returns one row
            result[key] = dict(zip(STAT_NAMES, values))
    return result


def _medians(ledger: Ledger, keys, column: str, where: str,
             params: list[Any]) -> dict[tuple, float]:
    """Exact median of ``column`` per group: the middle value, or the mean of
    the two middle values when a group has an even count."""
    exprs = [expr for _, expr in keys] or ["0"]  # one partition for the totals
    aliases = [f"k{i}" for i in range(len(exprs))]
    partition = ", ".join(exprs)
    sql = (f"WITH v AS (SELECT {', '.join(f'{e} AS {a}' for e, a in zip(exprs, aliases))},"
           f" {column} AS x,"
           f" ROW_NUMBER() OVER (PARTITION BY {partition} ORDER BY {column}) AS rn,"
           f" COUNT(*) OVER (PARTITION BY {partition}) AS n"
           f" FROM calls WHERE {where} AND {column} IS NOT NULL)"
           f" SELECT {', '.join(aliases)}, AVG(x) FROM v"
           f" WHERE rn IN ((n + 1) / 2, (n + 2) / 2) GROUP BY {', '.join(aliases)}")
    width = len(keys)
    return {tuple(row[:width]): row[-1] for row in ledger.read(sql, params)}


def _keys(grouping: str, dialect: Dialect) -> tuple[tuple[str, str], ...]:
    return tuple((name, UTC_DAY[dialect.name] if expr == "UTC_DAY" else expr) for name, expr in KEYS[grouping])


def _stats(values: dict[str, int], p50_latency: float | None = None,
           p50_ttft: float | None = None) -> dict[str, Any]:
    stats = {name: int(values.get(name) or 0) for name in STAT_NAMES}
    tokens = stats["input_tokens"] + stats["output_tokens"]
    # over every call, failures included: what a request costs on average
    stats["avg_tokens_per_request"] = round(tokens / stats["calls"], 2) if stats["calls"] else 0.0
    stats["p50_latency_ms"] = None if p50_latency is None else round(p50_latency, 3)
    stats["p50_ttft_ms"] = None if p50_ttft is None else round(p50_ttft, 3)
    return stats


def _sorted(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Busiest first; ties by name, so the order is stable."""
    return sorted(rows, key=lambda r: (-r["calls"], r.get("service_type", ""),
                                       r.get("resource", ""), r.get("model", "")))


def _every_day(rows: list[dict[str, Any]], since: float, until: float) -> list[dict[str, Any]]:
    """Every UTC day of the period in order, zeros where nothing ran."""
    by_day = {row["day"]: row for row in rows}
    day, last = _utc_date(since), _last_day(until)
    out = []
    while day <= last:
        out.append(by_day.get(day.isoformat()) or {"day": day.isoformat(), **_stats({})})
        day += timedelta(days=1)
    return out


def _utc_date(ts: float) -> date:
    return datetime.fromtimestamp(ts, UTC).date()


def _last_day(until: float) -> date:
    """The last day the half-open period touches: an ``until`` at midnight
    ends the day before."""
    day = _utc_date(until)
    midnight = datetime.combine(day, time(), UTC).timestamp()
    return day - timedelta(days=1) if until == midnight else day


# -- the period -------------------------------------------------------------

RELATIVE = re.compile(r"^(\d+)\s*([dwm])$")


def parse_period(since: str | None, from_: str | None, to: str | None,
                 now: float) -> tuple[float, float]:
    """``(since_ts, until_ts)`` of a half-open period, from either a relative
    ``since`` (``7d``, ``2w``, ``3m``: whole UTC days up to and including
    the end's day) or ISO dates / datetimes (``from_``, and ``to``, inclusive
    when a bare date). Without an end, the period ends ``now``.

    Raises ``ValueError`` for a bad value or a period over 3 months.
    """
    if since and from_:
        raise ValueError("give either since or from, not both")
    until = _parse_iso(to, end=True) if to else now
    start = since or from_ or DEFAULT_SINCE
    if RELATIVE.match(start.strip().lower()):
        since_ts = _relative_start(start.strip().lower(), until)
    else:
        since_ts = _parse_iso(start, end=False)
    if since_ts >= until:
        raise ValueError("the period ends before it starts")
    if until - since_ts > MAX_PERIOD_DAYS * DAY:
        raise ValueError(f"a usage period covers at most 3 months ({MAX_PERIOD_DAYS} days)")
    return since_ts, until


def _relative_start(text: str, until: float) -> float:
    count, unit = RELATIVE.match(text).groups()
    n = int(count)
    if n < 1:
        raise ValueError(f"the period {text!r} is empty")
    last = _last_day(until)
    if unit == "m":
        first = _months_before(last, n) + timedelta(days=1)
    else:
        days = n * (7 if unit == "w" else 1)
        if days > MAX_PERIOD_DAYS:
            raise ValueError(f"a usage period covers at most 3 months ({MAX_PERIOD_DAYS} days),"
                             f" not {text}")
        first = last - timedelta(days=days - 1)
    return datetime.combine(first, time(), UTC).timestamp()


def _months_before(day: date, n: int) -> date:
    """The same day of the month ``n`` months earlier, clamped to that
    month's length (May 31 - 3 months = Feb 28/29)."""
    if n > 3:
        raise ValueError(f"a usage period covers at most 3 months, not {n}")
    year, month0 = divmod(day.year * 12 + day.month - 1 - n, 12)
    last_of_month = calendar.monthrange(year, month0 + 1)[1]
    return date(year, month0 + 1, min(day.day, last_of_month))


def _parse_iso(text: str, *, end: bool) -> float:
    """A bare date is midnight UTC (the next midnight for an inclusive end);
    a datetime without a zone is UTC."""
    text = text.strip()
    try:
        if len(text) == 10:
            day = date.fromisoformat(text) + timedelta(days=1 if end else 0)
            return datetime.combine(day, time(), UTC).timestamp()
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{text!r} is neither a period like 7d, 2w, 3m nor an ISO date") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


# -- text ---------------------------------------------------------------------

COLUMNS = (("calls", "calls"), ("success", "success"), ("failure", "failure"),
           ("input", "input_tokens"), ("output", "output_tokens"), ("cached", "cached_tokens"),
           ("avg tok/req", "avg_tokens_per_request"), ("p50 ms", "p50_latency_ms"),
           ("p50 ttft ms", "p50_ttft_ms"))


def render_text(report: dict[str, Any]) -> str:
    """The report as a fixed-width table with a totals line (``llmfn usage``)."""
    by = report["by"]
    label = {"day": "day (UTC)", "model": "model", "resource": "resource"}[by]
    header = [label] + [title for title, _ in COLUMNS]
    body = [[_row_label(by, row)] + [_cell(row[key]) for _, key in COLUMNS]
            for row in report["rows"]]
    total = ["total"] + [_cell(report["totals"][key]) for _, key in COLUMNS]
    widths = [max(len(line[i]) for line in [header, *body, total]) for i in range(len(header))]
    rule = "  ".join("-" * w for w in widths)
    lines = [_title(report), "", _line(header, widths), rule]
    lines += [_line(cells, widths) for cells in body] or ["(no calls)"]
    lines += [rule, _line(total, widths)]
    return "\n".join(lines) + "\n"


def _title(report: dict[str, Any]) -> str:
    period = report["period"]
    filters = ", ".join(f"{k}={v}" for k, v in report["filters"].items() if v is not None)
    return (f"Usage {period['from']} .. {period['to']} (UTC), by {report['by']}"
            + (f"; {filters}" if filters else ""))


def _row_label(by: str, row: dict[str, Any]) -> str:
    if by == "resource":
        return f"{row['service_type']}:{row['resource']}"
    return str(row[by])


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.1f}"
    return f"{value:,}"


def _line(cells: list[str], widths: list[int]) -> str:
    # labels to the left, numbers to the right
    first = cells[0].ljust(widths[0])
    return "  ".join([first] + [c.rjust(w) for c, w in zip(cells[1:], widths[1:])]).rstrip()
