"""What callers read of their spending: ``GET /v1/usage`` (reports from the
ledger), ``/v1/invocation/usage`` and ``/v1/invocation/quota`` (the calling
invocation's own). The reports themselves are built by ``runtime.accounting``."""
from __future__ import annotations

import asyncio
import time

from aiohttp import web

from runtime.accounting.reports import parse_period, usage_report
from runtime.accounting.status import ServiceType
from runtime.errors import InvalidRequest, NotFound, PermissionDenied
from runtime.gateway.auth import principal_of
from runtime.gateway.charging import ACCOUNTING
from runtime.gateway.state import INVOCATIONS

USAGE_QUERY = ("service_type", "resource", "model", "by", "since", "from", "to")


async def usage(request: web.Request) -> web.Response:
    """``GET /v1/usage``: the admin sees everything; a key or an invocation token
    only its own resource."""
    acct = request.app[ACCOUNTING]
    if acct.ledger is None:
        raise NotFound("No ledger is configured on this gateway")
    q = request.query
    principal = principal_of(request)
    service_type, resource = q.get("service_type") or None, q.get("resource") or None
    if not principal.reads_all_usage:  # everyone's usage is the admin's (and allowed functions')
        own_type, own = principal.subject
        if (resource and resource != own) or (service_type and service_type != own_type):
            raise PermissionDenied("A key or an invocation token can only read its own usage")
        service_type, resource = own_type, own
    if service_type not in (None, *ServiceType):
        raise InvalidRequest("service_type must be function or key", param="service_type")
    by = q.get("by", "day")
    if by not in ("day", "model", "resource"):
        raise InvalidRequest("by must be day, model or resource", param="by")
    try:
        since, until = parse_period(q.get("since"), q.get("from"), q.get("to"), time.time())
    except ValueError as exc:
        raise InvalidRequest(str(exc), param="since") from None
    loop = asyncio.get_running_loop()
    report = await loop.run_in_executor(None, lambda: usage_report(
        acct.ledger, service_type=service_type, resource=resource, model=q.get("model") or None,
        since=since, until=until, by=by))
    return web.json_response(report)


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
