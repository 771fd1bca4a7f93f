"""The control plane's routes (``/admin/*``): pools and API keys. Only the
admin key reaches them: ``auth_middleware`` checks it for every path under
``ADMIN_PREFIX``, so these handlers check nothing themselves."""
from __future__ import annotations

import asyncio

from aiohttp import web

from runtime.accounting.quotas import Limits
from runtime.errors import InvalidRequest, NotFound
from runtime.gateway.charging import ACCOUNTING
from runtime.gateway.http_errors import parse_body
from runtime.gateway.schemas import KeyCreateRequest
from runtime.gateway.state import POOLS


async def pools(request: web.Request) -> web.Response:
    """Every pool's state and configuration."""
    for pool in request.app[POOLS]:
        await pool.refresh_stats()
    return web.json_response({p.name: {**p.status(), "config": p.config.pool.model_dump()}
                              for p in request.app[POOLS]})


async def list_keys(request: web.Request) -> web.Response:
    store = request.app[ACCOUNTING].book.keys
    loop = asyncio.get_running_loop()
    records = await loop.run_in_executor(None, store.list) if store else []
    return web.json_response({"data": [r.public() for r in records]})


async def create_key(request: web.Request) -> web.Response:
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
    store = request.app[ACCOUNTING].book.keys
    loop = asyncio.get_running_loop()
    if store is None or not await loop.run_in_executor(None, store.revoke, request.match_info["name"]):
        raise NotFound(f"No active key named '{request.match_info['name']}'")
    return web.json_response({"name": request.match_info["name"], "revoked": True})
