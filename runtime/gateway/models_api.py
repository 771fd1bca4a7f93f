"""``GET /v1/models`` and ``GET /v1/models/{model}``: the served models with
their pools' state and readiness."""
from __future__ import annotations

from aiohttp import web

from runtime.gateway import schemas as s
from runtime.gateway.health import LIFECYCLE, pool_readiness
from runtime.gateway.state import POOLS, STARTED


def _card(pool, created: int, stopping: bool) -> s.ModelCard:
    st = pool.status()
    ready, reason = pool_readiness(pool, stopping)
    return s.ModelCard(id=pool.name, created=created, context_length=pool.config.pool.n_ctx,
                       source=_public_source(pool.config.source),
                       pool=s.PoolStatus(state=st["state"], workers=st["workers"], queued=st["queued"],
                                         in_flight=st["in_flight"], placement=st["placement"],
                                         spare=st["spare"],
                                         last_cold_start=st["last_cold_start"], ready=ready,
                                         reason=reason))


def _public_source(source: str) -> str:
    # s3:// URLs carry no credentials; strip any query string (presigned-like) all the same.
    return source.split("?", 1)[0]


async def list_models(request: web.Request) -> web.Response:
    created = int(request.app[STARTED])
    stopping = request.app[LIFECYCLE].stopping
    body = s.ModelList(data=[_card(p, created, stopping) for p in request.app[POOLS]])
    return web.json_response(text=body.model_dump_json())


async def get_model(request: web.Request) -> web.Response:
    pool = request.app[POOLS].get(request.match_info["model"])
    card = _card(pool, int(request.app[STARTED]), request.app[LIFECYCLE].stopping)
    return web.json_response(text=card.model_dump_json())
