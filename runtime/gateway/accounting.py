"""The gateway's side of accounting: which limits apply to a caller and model,
admitting a call (quota, then its ledger row) and settling it, the ledger
journal, and the usage,
quota and key routes. The arithmetic lives in ``runtime.accounting``."""
from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import Future
from dataclasses import dataclass, field, replace

from aiohttp import web

from runtime.accounting.keys import KeyStore
from runtime.accounting.ledger import Ledger, LedgerRow
from runtime.accounting.quotas import Grant, Limits, QuotaPolicy
from runtime.accounting.status import CallerKind, ServiceType
from runtime.accounting.reports import parse_period, usage_report
from runtime.errors import InvalidRequest, NotFound, PermissionDenied
from runtime.gateway.auth import Principal, principal_of
from runtime.gateway.calls import CallMeter, CallRecord
from runtime.gateway.errors import parse_body
from runtime.gateway.schemas import KeyCreateRequest

log = logging.getLogger("llmfn.gateway")


@dataclass
class QuotaBook:
    """Where limits come from: the model's defaults (for everyone), the
    function's ``Metadata.llmfn.quotas`` and the key's own limits."""
    model_defaults: dict[str, Limits] = field(default_factory=dict)
    functions: dict[str, dict[str, Limits]] = field(default_factory=dict)  # model or "*"
    keys: KeyStore | None = None

    def limits(self, principal: Principal, model: str) -> Limits:
        limits = self.model_defaults.get(model, Limits())
        if principal.kind is CallerKind.FUNCTION:
            per_model = self.functions.get(principal.name, {})
            limits = limits.tighten(per_model.get(model) or per_model.get("*") or Limits())
        elif principal.kind is CallerKind.KEY and self.keys is not None:
            record = self.keys.get(principal.name)
            if record is not None:
                limits = limits.tighten(record.limits)
        return limits


class Accounting:
    def __init__(self, policy: QuotaPolicy, book: QuotaBook, ledger: Ledger | None):
        self.policy, self.book, self.ledger = policy, book, ledger
        self.journal = LedgerJournal(ledger) if ledger is not None else None

    async def admit(self, meter: CallMeter, tokens: int, prompt_tokens: int = 0, *,
                    wait: bool = True) -> Grant | None:
        """Admit a call before it is dispatched: reserve ``tokens`` against the
        caller's limits (429s), then wait until the ledger has its row (503 when
        it cannot). A refused call gives its reservation back. ``wait=False``
        only queues the row: the caller must ``meter.confirm()`` before any byte
        of the response leaves (a generation overlaps the write with its prompt)."""
        grant = await self.reserve(meter.principal, meter.model, tokens)
        try:
            meter.begin(tokens, prompt_tokens)
            # A ledger whose last write failed is waited for: its refusal comes before any work.
            if wait or (self.ledger is not None and not self.ledger.healthy):
                await meter.confirm()
        except BaseException:
            await self.settle(grant, 0)
            raise
        return grant

    async def reserve(self, principal: Principal, model: str, tokens: int) -> Grant | None:
        limits = self.book.limits(principal, model)
        if not limits:
            return None
        kind, resource = principal.subject
        return await self.policy.reserve(kind, resource, model, limits, tokens)

    async def settle(self, grant: Grant | None, actual: int) -> None:
        if grant is not None:
            await self.policy.settle(grant, actual)

    async def remaining(self, principal: Principal, model: str) -> int | None:
        kind, resource = principal.subject
        return await self.policy.remaining(kind, resource, model, self.book.limits(principal, model))


class LedgerJournal:
    """A call's life in the ledger (``runtime.gateway.calls.Journal``): its row
    at admission, its progress, its end; a call never admitted is one row."""

    def __init__(self, ledger: Ledger):
        self.ledger = ledger

    def admit(self, record: CallRecord) -> Future:
        return self.ledger.admit(LedgerRow.from_call(record))

    def progress(self, record: CallRecord) -> None:
        self.ledger.progress(LedgerRow.from_call(record))

    def end(self, record: CallRecord, admitted: bool) -> Future | None:
        row = LedgerRow.from_call(record)
        if admitted:
            return self.ledger.complete(row)
        try:
            self.ledger.record(replace(row, call_id=None, reserved_tokens=0))  # refused, never ran
        except RuntimeError:  # closed: the gateway is stopping
            log.warning("the ledger is closed; a refused call was not recorded")
        return None


ACCOUNTING = web.AppKey("accounting", Accounting)


# ---- routes ------------------------------------------------------------------

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
    principal = principal_of(request)
    if principal.invocation_id is None:
        raise NotFound("This route answers invocation tokens only")
    model = request.query.get("model")
    acct = request.app[ACCOUNTING]
    models = [model] if model else sorted(principal.models or [])
    remaining = [r for m in models if (r := await acct.remaining(principal, m)) is not None]
    return web.json_response({"remaining_tokens": min(remaining) if remaining else None,
                              "model": model})


def _require_admin(request: web.Request) -> None:
    if principal_of(request).kind != "admin":
        raise PermissionDenied("This route needs the admin key")


async def list_keys(request: web.Request) -> web.Response:
    _require_admin(request)
    store = request.app[ACCOUNTING].book.keys
    loop = asyncio.get_running_loop()
    records = await loop.run_in_executor(None, store.list) if store else []
    return web.json_response({"data": [r.public() for r in records]})


async def create_key(request: web.Request) -> web.Response:
    _require_admin(request)
    store = request.app[ACCOUNTING].book.keys
    if store is None:
        raise NotFound("No key store is configured on this gateway")
    body = await parse_body(request, KeyCreateRequest)
    limits = Limits(body.rpm, body.tpm, body.daily_tokens, body.monthly_tokens)
    loop = asyncio.get_running_loop()
    try:
        secret = await loop.run_in_executor(None, lambda: store.create(
            body.name, models=body.models, limits=limits))
    except (KeyError, ValueError) as exc:
        raise InvalidRequest(f"cannot create the key: {exc}", param="name") from None
    return web.json_response({"name": body.name, "key": secret}, status=201)


async def revoke_key(request: web.Request) -> web.Response:
    _require_admin(request)
    store = request.app[ACCOUNTING].book.keys
    loop = asyncio.get_running_loop()
    if store is None or not await loop.run_in_executor(None, store.revoke, request.match_info["name"]):
        raise NotFound(f"No active key named '{request.match_info['name']}'")
    return web.json_response({"name": request.match_info["name"], "revoked": True})


def add_routes(app: web.Application) -> None:
    from runtime.accounting.page import static_routes, usage_page

    app.router.add_get("/v1/usage", usage)
    app.router.add_get("/v1/invocation/quota", invocation_quota)
    app.router.add_get("/admin/keys", list_keys)
    app.router.add_post("/admin/keys", create_key)
    app.router.add_delete("/admin/keys/{name}", revoke_key)
    app.router.add_get("/usage", usage_page)
    static_routes(app)
