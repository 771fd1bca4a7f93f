"""The gateway application: its parts (pools, auth, accounting, metrics),
middlewares and lifecycle. Its routes are the table in ``runtime.gateway.routes``."""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

from aiohttp import web

from runtime.accounting.keys import REFRESH_S as KEYS_REFRESH_S
from runtime.accounting.keys import KeyStore
from runtime.accounting.ledger import Ledger
from runtime.accounting.quotas import Limits, MemoryCounters, QuotaPolicy, RedisCounters
from runtime.database import Target
from runtime.errors import LlmfnError
from runtime.gateway.auth import Authenticator, InvocationTokens, StaticKeys, auth_middleware, principal_of
from runtime.gateway.calls import CallRecord, Calls
from runtime.gateway.charging import ACCOUNTING, Accounting, QuotaBook
from runtime.gateway.health import LIFECYCLE, Lifecycle
from runtime.gateway.http_errors import LIMITS, REQUEST_ID, InputLimits, errors_middleware
from runtime.gateway.metrics import UNKNOWN_MODEL, Metrics
from runtime.gateway.routes import LLM_ENDPOINTS, add_routes
from runtime.gateway.state import AUTH, CALLS, INVOCATIONS, METER, METRICS, MODEL_HINT, POOLS, STARTED
from runtime.pool import ModelStore, Pools
from runtime.template.model_spec import ModelConfig

log = logging.getLogger(__name__)


@dataclass
class GatewayConfig:
    models: list[ModelConfig]
    store: ModelStore
    api_keys: frozenset[str] = field(default_factory=frozenset)
    admin_key: str | None = None  # None: the control plane (/admin/*) refuses everyone
    require_keys: bool | None = None  # None: once any key has been configured or created
    # a SQLite file or a postgresql:// URL (Settings.store)
    ledger_at: Target | None = None  # None: no ledger (no usage reports, budgets start at zero)
    keys_at: Target | None = None  # None: static keys only
    redis_url: str | None = None  # quota counters shared by gateways; None: in process
    function_quotas: dict[str, dict[str, Limits]] = field(default_factory=dict)
    ray_address: str | None = None  # the Ray cluster of pools whose backend is ray; None: RAY_ADDRESS or local
    limits: InputLimits = field(default_factory=InputLimits)


async def _refresh_keys(keys: KeyStore, budgets) -> None:
    """Keys created or revoked by ``llmfn keys`` or another gateway take effect here
    within ``REFRESH_S``, and the budget gauges follow them."""
    loop = asyncio.get_running_loop()
    while True:
        try:
            await budgets()
        except Exception:  # noqa: BLE001 - a Redis outage must not stop keys from reloading
            log.warning("key budget gauges not refreshed", exc_info=True)
        await asyncio.sleep(KEYS_REFRESH_S)
        try:
            await loop.run_in_executor(None, keys.reload)
        except Exception:  # noqa: BLE001 - the database is away: the last copy serves until it is back
            log.warning("API keys not reloaded", exc_info=True)


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


def _tally(invocations: InvocationTokens):
    def sink(call: CallRecord) -> None:
        if call.principal.invocation_id is not None:
            invocations.record(call.principal.invocation_id, call.prompt_tokens, call.completion_tokens,
                               call.error)
    return sink


def _accounting(config: GatewayConfig, keys: KeyStore | None) -> Accounting:
    ledger = Ledger(config.ledger_at) if config.ledger_at else None
    counters = RedisCounters(config.redis_url) if config.redis_url else MemoryCounters()

    async def spent_since(kind: str, resource: str, model: str, since: float) -> int:
        if ledger is None:
            return 0
        return await asyncio.get_running_loop().run_in_executor(
            None, lambda: ledger.totals(resource, model, since, service_type=kind))

    book = QuotaBook(model_defaults={m.name: Limits(m.limits.rpm, m.limits.tpm) for m in config.models},
                     functions=config.function_quotas, keys=keys)
    return Accounting(QuotaPolicy(counters, spent_since=spent_since), book, ledger)


@dataclass
class Gateway:
    """The gateway's application and the registries the function runtime and the
    Lambda API share with it: invocation tokens, and the authenticator."""
    app: web.Application
    invocations: InvocationTokens
    auth: Authenticator


def build_app(config: GatewayConfig) -> web.Application:
    return build_gateway(config).app


def build_gateway(config: GatewayConfig) -> Gateway:
    invocations = InvocationTokens()
    keys = KeyStore(config.keys_at) if config.keys_at else None
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
    pools = Pools(config.models, config.store, on_cold_start=metrics.observe_cold_start,
                  ray_address=config.ray_address)
    metrics.watch_pools(pools)
    app[METRICS] = metrics
    app[POOLS] = pools
    app[STARTED] = time.time()
    app[LIFECYCLE] = lifecycle_state = Lifecycle()
    add_routes(app)

    async def stopping(app: web.Application) -> None:
        lifecycle_state.stopping = True  # /health/ready answers 503 from here on

    app.on_shutdown.append(stopping)

    async def lifecycle(app: web.Application):
        await pools.start()
        refresher = None
        if keys:
            models = [m.name for m in config.models]
            refresher = asyncio.create_task(_refresh_keys(
                keys, lambda: metrics.refresh_budgets(acct, keys, models)))
        yield
        if refresher:
            refresher.cancel()
        await pools.close()
        await acct.policy.counters.close()
        if acct.ledger is not None:
            await asyncio.get_running_loop().run_in_executor(None, acct.ledger.close)
        if keys:
            await asyncio.get_running_loop().run_in_executor(None, keys.close)

    app.cleanup_ctx.append(lifecycle)
    return Gateway(app, invocations, auth)
