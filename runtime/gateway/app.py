"""The gateway application: routes, middlewares and the pools' lifecycle."""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from runtime.app.models import ModelConfig
from runtime.accounting.keys import KeyStore
from runtime.accounting.ledger import Ledger
from runtime.accounting.quotas import Limits, MemoryCounters, QuotaPolicy, RedisCounters
from runtime.gateway import accounting, embeddings, generation
from runtime.gateway.accounting import ACCOUNTING, Accounting, QuotaBook
from runtime.gateway import schemas as s
from runtime.gateway.auth import Authenticator, InvocationTokens, StaticKeys, auth_middleware, principal_of
from runtime.gateway.calls import CallRecord, Calls
from runtime.gateway.errors import LIMITS, REQUEST_ID, InputLimits, errors_middleware
from runtime.gateway.metrics import UNKNOWN_MODEL, Metrics, metrics_handler
from runtime.gateway.openapi import openapi_handler
from runtime.gateway.state import AUTH, CALLS, INVOCATIONS, METER, METRICS, MODEL_HINT, POOLS
from runtime.errors import LlmfnError, NotFound
from runtime.pool import ModelStore, Pools

STARTED = web.AppKey("started", float)


@dataclass
class GatewayConfig:
    models: list[ModelConfig]
    store: ModelStore
    api_keys: frozenset[str] = field(default_factory=frozenset)
    admin_key: str | None = None  # None: the control plane (/admin/*) refuses everyone
    require_keys: bool | None = None  # None: once any key has been configured or created
    ledger_path: Path | None = None  # None: no ledger (no usage reports, budgets start at zero)
    keys_path: Path | None = None  # None: static keys only
    redis_url: str | None = None  # quota counters shared by gateways; None: in process
    function_quotas: dict[str, dict[str, Limits]] = field(default_factory=dict)
    limits: InputLimits = field(default_factory=InputLimits)


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


async def admin_pools(request: web.Request) -> web.Response:
    for pool in request.app[POOLS]:
        await pool.refresh_stats()
    return web.json_response({p.name: {**p.status(), "config": p.config.pool.model_dump()}
                              for p in request.app[POOLS]})


async def invocation_usage(request: web.Request) -> web.Response:
    """What the calling invocation has used so far (``context.llm_usage``)."""
    principal = principal_of(request)
    if principal.invocation_id is None:
        raise NotFound("This route answers invocation tokens only")
    return web.json_response(request.app[INVOCATIONS].usage(principal.invocation_id).as_dict())


async def health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok", "models": {p.name: p.state for p in request.app[POOLS]}})


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
    r.add_get("/openapi.json", openapi_handler(r))
    r.add_get("/admin/pools", admin_pools)
    r.add_get("/v1/invocation/usage", invocation_usage)
    r.add_get("/metrics", metrics_handler(app[METRICS]))
    accounting.add_routes(app)


async def _refresh_keys(keys: KeyStore) -> None:
    """Keys created or revoked by ``llmfn keys`` in another process take effect here."""
    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(2.0)
        await loop.run_in_executor(None, keys.reload)


@web.middleware
async def failed_calls_middleware(request: web.Request, handler):
    """A call refused before it reached a model (bad input, context too long,
    quota) is still a ledger row."""
    try:
        return await handler(request)
    except LlmfnError as err:
        endpoint = LLM_ENDPOINTS.get(request.path)
        if endpoint is not None:
            meter = request.get(METER) or request.app[CALLS].meter(
                _model_label(request), endpoint, principal_of(request), request.get(REQUEST_ID, ""))
            meter.failed(err)
        raise


def _model_label(request: web.Request) -> str:
    """The pool a refused call named; any other name (it may be 100 KB) is recorded
    as ``unknown``, so ledger rows and metric labels stay bounded."""
    hint = request.get(MODEL_HINT, "")
    pools = request.app[POOLS]
    name = pools.aliases.get(hint, hint)
    return name if name in pools.by_name else UNKNOWN_MODEL


LLM_ENDPOINTS = {"/v1/chat/completions": "chat", "/v1/completions": "completions",
                 "/v1/embeddings": "embeddings", "/score": "score", "/v1/score": "score",
                 "/rerank": "rerank", "/v1/rerank": "rerank", "/v2/rerank": "rerank"}


def _tally(invocations: InvocationTokens):
    def sink(call: CallRecord) -> None:
        if call.principal.invocation_id is not None:
            invocations.record(call.principal.invocation_id, call.prompt_tokens, call.completion_tokens,
                               call.error)
    return sink


def _accounting(config: GatewayConfig, keys: KeyStore | None) -> Accounting:
    ledger = Ledger(config.ledger_path) if config.ledger_path else None
    counters = RedisCounters(config.redis_url) if config.redis_url else MemoryCounters()

    async def spent_since(kind: str, resource: str, model: str, since: float) -> int:
        if ledger is None:
            return 0
        return await asyncio.get_running_loop().run_in_executor(
            None, lambda: ledger.totals(resource, model, since, service_type=kind))

    book = QuotaBook(model_defaults={m.name: Limits(m.limits.rpm, m.limits.tpm) for m in config.models},
                     functions=config.function_quotas, keys=keys)
    return Accounting(QuotaPolicy(counters, spent_since=spent_since), book, ledger)


def build_app(config: GatewayConfig) -> web.Application:
    invocations = InvocationTokens()
    keys = KeyStore(config.keys_path) if config.keys_path else None
    auth = Authenticator(StaticKeys(config.api_keys), invocations, store=keys, admin_key=config.admin_key,
                         require_keys=config.require_keys)
    app = web.Application(middlewares=[errors_middleware, auth_middleware(auth), failed_calls_middleware],
                          client_max_size=config.limits.max_body_bytes)
    app[LIMITS] = config.limits
    metrics = Metrics()
    acct = _accounting(config, keys)
    calls = Calls()
    calls.sinks += [metrics.observe_call, _tally(invocations)]
    calls.journal = acct.journal
    calls.on_first_token.append(metrics.observe_ttft)
    app[CALLS] = calls
    app[INVOCATIONS] = invocations
    app[AUTH] = auth
    app[ACCOUNTING] = acct
    pools = Pools(config.models, config.store, on_cold_start=metrics.observe_cold_start)
    metrics.watch_pools(pools)
    app[METRICS] = metrics
    app[POOLS] = pools
    app[STARTED] = time.time()
    add_routes(app)

    async def lifecycle(app: web.Application):
        await pools.start()
        refresher = asyncio.create_task(_refresh_keys(keys)) if keys else None
        yield
        if refresher:
            refresher.cancel()
        await pools.close()
        await acct.policy.counters.close()
        if acct.ledger is not None:
            await asyncio.get_running_loop().run_in_executor(None, acct.ledger.close)

    app.cleanup_ctx.append(lifecycle)
    return app
