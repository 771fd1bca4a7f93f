"""Typed application keys shared by the gateway's modules."""
from __future__ import annotations

from aiohttp import web

from runtime.gateway.metrics import Metrics
from runtime.pool import Pools

POOLS = web.AppKey("pools", Pools)
METRICS = web.AppKey("metrics", Metrics)
