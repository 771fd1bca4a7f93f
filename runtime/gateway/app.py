"""The gateway application: routes, middlewares and the pools' lifecycle."""
from __future__ import annotations

import time
from dataclasses import dataclass, field

from aiohttp import web

from runtime.app.models import ModelConfig
from runtime.gateway import embeddings, generation
from runtime.gateway import schemas as s
from runtime.gateway.auth import Authenticator, InvocationTokens, StaticKeys, auth_middleware, principal_of
from runtime.gateway.calls import CallRecord, Calls
from runtime.gateway.errors import errors_middleware
from runtime.gateway.metrics import Metrics, metrics_handler
from runtime.gateway.openapi import openapi_document
from runtime.gateway.state import CALLS, INVOCATIONS, METRICS, POOLS
from runtime.errors import NotFound
from runtime.pool import ModelStore, Pools

STARTED = web.AppKey("started", float)


@dataclass
class GatewayConfig:
    models: list[ModelConfig]
    store: ModelStore
    api_keys: frozenset[str] = field(default_factory=frozenset)


def _card(pool, created: int) -> s.ModelCard:
    st = pool.status()
    return s.ModelCard(id=pool.name, created=created, context_length=pool.config.pool.n_ctx,
                       source=_public_source(pool.config.source),
                       pool=s.PoolStatus(state=st["state"], workers=st["workers"], queued=st["queued"],
                                         in_flight=st["in_flight"], last_cold_start=st["last_cold_start"]))


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


async def admin_pools(request: web.Request) -> web.Response:
    return web.json_response({p.name: {**p.status(), "config": p.config.pool.model_dump()}
                              for p in request.app[POOLS]})


async def invocation_usage(request: web.Request) -> web.Response:
    """What the calling invocation has used so far (``context.llm_usage``)."""
    principal = principal_of(request)
    if principal.invocation_id is None:
        raise NotFound("This route answers invocation tokens only")
    return web.json_response(request.app[INVOCATIONS].usage(principal.invocation_id).as_dict())


async def invocation_quota(request: web.Request) -> web.Response:
    principal = principal_of(request)
    if principal.invocation_id is None:
        raise NotFound("This route answers invocation tokens only")
    return web.json_response({"remaining_tokens": None})


async def health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok", "models": {p.name: p.state for p in request.app[POOLS]}})


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(openapi_document())


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/v1/models", list_models)
    r.add_get("/v1/models/{model:.+}", get_model)
    r.add_post("/v1/chat/completions", generation.chat_completions)
    r.add_post("/v1/completions", generation.completions)
    r.add_post("/v1/embeddings", embeddings.embeddings)
    for path in ("/score", "/v1/score"):
        r.add_post(path, embeddings.score)
    for path in ("/rerank", "/v1/rerank", "/v2/rerank"):
        r.add_post(path, embeddings.rerank)
    r.add_get("/health", health)
    r.add_get("/openapi.json", openapi)
    r.add_get("/admin/pools", admin_pools)
    r.add_get("/v1/invocation/usage", invocation_usage)
    r.add_get("/v1/invocation/quota", invocation_quota)
    r.add_get("/metrics", metrics_handler(app[METRICS]))


def _tally(invocations: InvocationTokens):
    def sink(call: CallRecord) -> None:
        if call.principal.invocation_id is not None:
            invocations.record(call.principal.invocation_id, call.prompt_tokens, call.completion_tokens)
    return sink


def build_app(config: GatewayConfig) -> web.Application:
    invocations = InvocationTokens()
    auth = Authenticator(StaticKeys(config.api_keys), invocations)
    app = web.Application(middlewares=[errors_middleware, auth_middleware(auth)],
                          client_max_size=32 * 1024 * 1024)
    metrics = Metrics()
    calls = Calls()
    calls.sinks.append(metrics.observe_call)
    calls.sinks.append(_tally(invocations))
    calls.on_first_token.append(metrics.observe_ttft)
    app[CALLS] = calls
    app[INVOCATIONS] = invocations
    pools = Pools(config.models, config.store, on_cold_start=metrics.observe_cold_start)
    metrics.watch_pools(pools)
    app[METRICS] = metrics
    app[POOLS] = pools
    app[STARTED] = time.time()
    add_routes(app)

    async def lifecycle(app: web.Application):
        await pools.start()
        yield
        await pools.close()

    app.cleanup_ctx.append(lifecycle)
    return app
