"""``GET /health/live``, ``GET /health/ready`` and ``GET /health``: whether the
gateway process serves, and whether it would admit a request now.

Ready means a call arriving now would be admitted: the ledger takes rows (an
unhealthy one is probed, so readiness comes back as soon as the disk does) and
every model's pool either has a warm worker or can cold-start one (it is not
shutting down, and it has a free slot or room in its queue). Otherwise 503 with the reasons, as
llama.cpp's server answers 503 while it loads. This module reads the pools and
the ledger; it never changes them.
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass

from aiohttp import web

from runtime.accounting.ledger import committed
from runtime.errors import LedgerUnavailable
from runtime.gateway.charging import ACCOUNTING
from runtime.gateway.state import POOLS
from runtime.pool.pool import PoolState, WorkerState

PROBE_TIMEOUT = 5.0  # a ledger probe slower than this counts as unavailable


@dataclass
class Lifecycle:
    stopping: bool = False  # set at shutdown: a balancer should stop sending calls


LIFECYCLE = web.AppKey("lifecycle", Lifecycle)


def pool_readiness(pool, stopping: bool = False) -> tuple[bool, str]:
    """(ready, why) of one model's pool."""
    if stopping:
        return False, "the gateway is shutting down"
    status = pool.status()
    config = pool.config.pool
    free = status["workers"][WorkerState.WARM] * config.slots - status["in_flight"]
    if free <= 0 and status["queued"] >= config.queue_limit:  # as the pool's admission decides
        return False, f"no free slot and {status['queued']} requests waiting (queue_limit {config.queue_limit})"
    state = status["state"]
    if state == PoolState.WARM:
        return True, "warm"
    if state == PoolState.STARTING:
        return True, "a worker is starting; calls wait for it"
    return True, "cold: the first call starts a worker"


async def ledger_problem(request: web.Request) -> str | None:
    """Why the ledger would refuse an admission now, or None."""
    ledger = request.app[ACCOUNTING].ledger
    if ledger is None:
        return None
    if ledger.backlogged:
        return f"the usage ledger is {ledger.max_pending} writes behind"
    if ledger.healthy:
        return None
    try:
        await asyncio.wait_for(committed(ledger.probe()), PROBE_TIMEOUT)
    except LedgerUnavailable as exc:
        return exc.message
    except TimeoutError:
        return f"the usage ledger did not write within {PROBE_TIMEOUT:g}s"
    return None


async def live(request: web.Request) -> web.Response:
    """200 while the process serves."""
    return web.json_response({"status": "ok"})


async def ready(request: web.Request) -> web.Response:
    """200 when a call would be admitted now; 503 with the reasons otherwise."""
    stopping = request.app[LIFECYCLE].stopping
    reasons = []
    problem = await ledger_problem(request)
    if problem:
        reasons.append(f"ledger: {problem}")
    models = {}
    for pool in request.app[POOLS]:
        ok, why = pool_readiness(pool, stopping)
        models[pool.name] = {"ready": ok, "reason": why}
        if not ok:
            reasons.append(f"model '{pool.name}': {why}")
    if stopping and not models:
        reasons.append("the gateway is shutting down")
    body = {"status": "unavailable" if reasons else "ok", "reasons": reasons, "models": models}
    return web.json_response(body, status=503 if reasons else 200)


async def health(request: web.Request) -> web.Response:
    """Liveness with the pools' states (kept as it was before ``/health/live``)."""
    return web.json_response({"status": "ok", "models": {p.name: p.state for p in request.app[POOLS]}})
