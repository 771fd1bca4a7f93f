"""``GET /v1/models``, ``GET /v1/models/{model}`` and ``GET /health``: the
served models with their pools' state."""
from __future__ import annotations

from aiohttp import web

from runtime.gateway import schemas as s
from runtime.gateway.state import POOLS, STARTED


def _card(pool, created: int) -> s.ModelCard:
    st = pool.status()
    return s.ModelCard(id=pool.name, created=created, context_length=pool.config.pool.n_ctx,
                       source=_public_source(pool.config.source),
                       pool=s.PoolStatus(state=st["state"], workers=st["workers"], queued=st["queued"],
                                         in_flight=st["in_flight"], spare=st["spare"],
                                         last_cold_start=st["last_cold_start"]))


def _public_source(source: str) -> str:
    # s3:// URLs carry no credentials; strip any query string (presigned-like) all the same.
    return source.split("?", 1)[0]


async def list_models(request: web.Request) -> web.Response:
    created = int(request.app[STARTED])
    body = s.ModelList(data=[_card(p, created) for p in request.app[POOLS]])
    return web.json_response(text=body.model_dump_json())


async def get_model(request: web.Request) -> web.Response:
    pool = request.app[POOLS].get(request.match_info["model"])
    return web.json_response(text=_card(pool, int(request.app[STARTED])).model_dump_json())


async def health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok", "models": {p.name: p.state for p in request.app[POOLS]}})
