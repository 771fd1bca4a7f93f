"""What callers read of their spending: ``GET /v1/usage`` (reports from the
ledger), ``GET /v1/usage/calls`` (the ledger's rows), ``/v1/invocation/usage`` and ``/v1/invocation/quota`` (the calling
invocation's own). The reports themselves are built by ``runtime.accounting``."""
from __future__ import annotations

import asyncio
import time

from aiohttp import web

from runtime.accounting.call_log import DEFAULT_LIMIT, MAX_LIMIT, CallFilter, list_calls, parse_moment, to_csv
from runtime.accounting.ledger import Ledger
from runtime.accounting.reports import parse_period, usage_report
from runtime.accounting.status import LedgerStatus, ServiceType
from runtime.errors import InvalidRequest, NotFound, PermissionDenied
from runtime.gateway.auth import principal_of
from runtime.gateway.charging import ACCOUNTING
from runtime.gateway.state import INVOCATIONS

USAGE_QUERY = ("service_type", "resource", "model", "by", "since", "from", "to")


async def usage(request: web.Request) -> web.Response:
    """``GET /v1/usage``: the admin sees everything; a key or an invocation token
    only its own resource."""
    ledger = _ledger(request)
    q = request.query
    service_type, resource = _scope(request)
    by = q.get("by", "day")
    if by not in ("day", "model", "resource"):
        raise InvalidRequest("by must be day, model or resource", param="by")
    try:
        since, until = parse_period(q.get("since"), q.get("from"), q.get("to"), time.time())
    except ValueError as exc:
        raise InvalidRequest(str(exc), param="since") from None
    loop = asyncio.get_running_loop()
    report = await loop.run_in_executor(None, lambda: usage_report(
        ledger, service_type=service_type, resource=resource, model=q.get("model") or None,
        since=since, until=until, by=by))
    return web.json_response(report)


CALLS_QUERY = ("service_type", "resource", "model", "status", "since", "until", "limit", "cursor", "format")


async def calls(request: web.Request) -> web.Response:
    """``GET /v1/usage/calls``: ledger rows, newest first, a page at a time, as
    JSON or CSV (``format=csv`` or ``Accept: text/csv``). Who sees what is as
    for ``/v1/usage``."""
    ledger = _ledger(request)
    q = request.query
    service_type, resource = _scope(request)
    status = q.get("status") or None
    if status not in (None, *LedgerStatus):
        raise InvalidRequest("status must be success, failure or running", param="status")
    try:
        flt = CallFilter(service_type=service_type, resource=resource, model=q.get("model") or None,
                         status=status, since=_moment(q, "since"), until=_moment(q, "until"))
        limit = int(q.get("limit", DEFAULT_LIMIT))
    except ValueError as exc:
        raise InvalidRequest(str(exc), param="limit") from None
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidRequest(f"limit must be between 1 and {MAX_LIMIT}", param="limit")
    try:
        page = await asyncio.get_running_loop().run_in_executor(
            None, lambda: list_calls(ledger, flt, limit=limit, cursor=q.get("cursor") or None))
    except ValueError as exc:
        raise InvalidRequest(str(exc), param="cursor") from None
    if _wants_csv(request):
        headers = {"X-Next-Cursor": page["next_cursor"]} if page["next_cursor"] else {}
        return web.Response(text=to_csv(page["data"]), content_type="text/csv", headers=headers)
    return web.json_response(page)


def _ledger(request: web.Request) -> Ledger:
    ledger = request.app[ACCOUNTING].ledger
    if ledger is None:
        raise NotFound("No ledger is configured on this gateway")
    return ledger


def _scope(request: web.Request) -> tuple[str | None, str | None]:
    """(service type, resource) a usage read may cover: the admin (and functions
    allowed to) any; a key or an invocation token only its own."""
    q = request.query
    principal = principal_of(request)
    service_type, resource = q.get("service_type") or None, q.get("resource") or None
    if not principal.reads_all_usage:
        own_type, own = principal.subject
        if (resource and resource != own) or (service_type and service_type != own_type):
            raise PermissionDenied("A key or an invocation token can only read its own usage")
        service_type, resource = own_type, own
    if service_type not in (None, *ServiceType):
        raise InvalidRequest("service_type must be function or key", param="service_type")
    return service_type, resource


def _moment(query, name: str) -> float | None:
    text = query.get(name)
    if not text:
        return None
    try:
        return parse_moment(text)
    except ValueError as exc:
        raise InvalidRequest(str(exc), param=name) from None


def _wants_csv(request: web.Request) -> bool:
    fmt = request.query.get("format")
    if fmt not in (None, "json", "csv"):
        raise InvalidRequest("format must be json or csv", param="format")
    return fmt == "csv" or (fmt is None and "text/csv" in request.headers.get("Accept", ""))


async def invocation_quota(request: web.Request) -> web.Response:
    """Tokens left to the calling invocation."""
    principal = principal_of(request)
    if principal.invocation_id is None:
        raise NotFound("This route answers invocation tokens only")
    model = request.query.get("model")
    acct = request.app[ACCOUNTING]
    models = [model] if model else sorted(principal.models or [])
    remaining = [r for m in models if (r := await acct.remaining(principal, m)) is not None]
    return web.json_response({"remaining_tokens": min(remaining) if remaining else None,
                              "model": model})


async def invocation_usage(request: web.Request) -> web.Response:
    """What the calling invocation has used so far (``context.llm_usage``)."""
    principal = principal_of(request)
    if principal.invocation_id is None:
        raise NotFound("This route answers invocation tokens only")
    return web.json_response(request.app[INVOCATIONS].usage(principal.invocation_id).as_dict())
