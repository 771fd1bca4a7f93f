"""Typed application keys shared by the gateway's modules."""
from __future__ import annotations

from aiohttp import web

from runtime.gateway.auth import Authenticator, InvocationTokens, principal_of
from runtime.gateway.calls import Calls
from runtime.gateway.http_errors import MODEL_HINT, REQUEST_ID  # noqa: F401 (re-exported)
from runtime.gateway.metrics import METRICS  # noqa: F401 (re-exported)
from runtime.pool import Pools

POOLS = web.AppKey("pools", Pools)
STARTED = web.AppKey("started", float)  # when the gateway started (the models' ``created``)
CALLS = web.AppKey("calls", Calls)
INVOCATIONS = web.AppKey("invocations", InvocationTokens)
AUTH = web.AppKey("auth", Authenticator)
METER = web.RequestKey("meter", object)


def pool_for(request: web.Request, model: str):
    """The model's pool, if the caller may use it (404 unknown model, 403 not allowed)."""
    pool = request.app[POOLS].get(model)
    principal = principal_of(request)
    if model != pool.name and principal.models is not None and model in principal.models:
        return pool  # allowed by the alias it was asked for
    principal.authorize(pool.name)
    return pool


def meter_for(request: web.Request, model: str, endpoint: str):
    meter = request.app[CALLS].meter(model, endpoint, principal_of(request), request.get(REQUEST_ID, ""))
    request[METER] = meter
    return meter
