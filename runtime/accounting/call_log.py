"""Individual calls from the ledger, newest first, a page at a time: what
``GET /v1/usage/calls`` and ``llmfn usage --calls`` list, as JSON rows or CSV.

Paging is by cursor (the last row's ``(ts, row id)``: SQLite's rowid, or the
ascending id a PostgreSQL ledger gives its rows), so a page stays right
while new calls are being written. Who may list whose calls is decided by the
caller (the gateway's access rules), not here.
"""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from runtime.accounting.ledger import Ledger
from runtime.accounting.status import LedgerStatus, ServiceType

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
FIELDS = ("ts", "time", "service_type", "resource", "invocation_id", "model", "endpoint", "status",
          "error_type", "prompt_tokens", "completion_tokens", "cached_tokens", "reserved_tokens",
          "latency_ms", "ttft_ms", "request_id", "call_id")
_SELECTED = tuple(f for f in FIELDS if f != "time")


@dataclass(frozen=True)
class CallFilter:
    service_type: ServiceType | None = None
    resource: str | None = None
    model: str | None = None
    status: LedgerStatus | None = None
    since: float | None = None
    until: float | None = None


def list_calls(ledger: Ledger, flt: CallFilter, *, limit: int = DEFAULT_LIMIT,
               cursor: str | None = None) -> dict[str, Any]:
    """One page: ``{"data": [row, ...], "next_cursor": str | None}``. Blocking
    (database reads): call it from an executor on the event loop.

    Raises ``ValueError`` for a limit out of range or a cursor it did not make.
    """
    if not 1 <= limit <= MAX_LIMIT:
        raise ValueError(f"limit must be between 1 and {MAX_LIMIT}")
    row_id = ledger.dialect.row_id_name
    clauses, params = _where(flt)
    if cursor:
        clauses.append(f"(ts, {row_id}) < (?, ?)")
        params += _parse_cursor(cursor)
    where = " AND ".join(clauses) or "1 = 1"
    rows = ledger.read(f"SELECT {', '.join(_SELECTED)}, {row_id} FROM calls WHERE {where}"
                       f" ORDER BY ts DESC, {row_id} DESC LIMIT ?", [*params, limit + 1])
    page = [_row(r) for r in rows[:limit]]
    last = rows[limit - 1] if len(rows) > limit else None
    return {"object": "list", "data": page,
            "next_cursor": f"{last[0]!r}:{last[-1]}" if last else None}


def to_csv(rows: list[dict[str, Any]]) -> str:
    """The rows as CSV with a header line (the columns of ``FIELDS``)."""
    out = io.StringIO()
    writer = csv.DictWriter(out, FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def _where(flt: CallFilter) -> tuple[list[str], list[Any]]:
    clauses: list[str] = []
    params: list[Any] = []
    for column, value in (("resource", flt.resource), ("service_type", flt.service_type),
                          ("model", flt.model), ("status", flt.status)):
        if value is not None:
            clauses.append(f"{column} = ?")
            params.append(str(value))
    if flt.since is not None:
        clauses.append("ts >= ?")
        params.append(flt.since)
    if flt.until is not None:
        clauses.append("ts < ?")
        params.append(flt.until)
    return clauses, params


def _parse_cursor(cursor: str) -> list[Any]:
    ts, _, rowid = cursor.partition(":")
    try:
        position = [float(ts), int(rowid)]
    except ValueError:
        position = None
    if position is None or not 0 <= position[1] < 2 ** 63:  # row ids are 64-bit on both databases
        raise ValueError(f"{cursor!r} is not a cursor from an earlier page")
    return position


def _row(values: tuple) -> dict[str, Any]:
    row = dict(zip(_SELECTED, values[:-1]))
    row["time"] = datetime.fromtimestamp(row["ts"], UTC).isoformat()
    return {name: row[name] for name in FIELDS}


TEXT_COLUMNS = ("time", "service_type", "resource", "model", "endpoint", "status", "error_type",
                "prompt_tokens", "completion_tokens", "latency_ms")


def render_text(rows: list[dict[str, Any]]) -> str:
    """The rows as a fixed-width table (``llmfn usage --calls``)."""
    cells = [list(TEXT_COLUMNS)] + [["-" if r[c] is None else _cell(r[c]) for c in TEXT_COLUMNS]
                                    for r in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(TEXT_COLUMNS))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in cells]
    return "\n".join(lines + ([] if rows else ["(no calls)"])) + "\n"


def _cell(value: Any) -> str:
    return f"{value:.1f}" if isinstance(value, float) else str(value)


def parse_moment(text: str, *, end: bool = False) -> float:
    """Seconds since the epoch, or an ISO date / datetime (UTC unless it says).
    A bare date is its midnight, or the next one for an (inclusive) ``end``."""
    try:
        return float(text)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text.strip())
        if end and len(text.strip()) == 10:
            moment += timedelta(days=1)
        return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()
    except (ValueError, OverflowError):
        raise ValueError(f"{text!r} is neither seconds since the epoch nor an ISO date") from None
