"""Prometheus metrics (``GET /metrics``): a sink of finished calls plus pool gauges.

Every label takes a bounded set of values: models are the served ones (any
other name is ``unknown``), endpoints and statuses are the gateway's own, and
callers are the identities the gateway itself knows: the template's functions
(invocation tokens are minted for them only), the key store's keys, the static
keys (``key-N``), ``admin`` and ``anonymous``. A caller's token never becomes a
label: an unknown token is refused or is ``anonymous``."""
from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily

from runtime.accounting.status import CallerKind, ServiceType, call_label
from runtime.gateway.auth import Principal

if TYPE_CHECKING:
    from runtime.accounting.keys import KeyStore
    from runtime.gateway.calls import CallRecord
    from runtime.gateway.charging import Accounting
    from runtime.pool import Pools

UNKNOWN_MODEL = "unknown"
_LATENCY = (.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.models: frozenset[str] | None = None  # the served models, once pools are watched
        r = self.registry
        self.requests = Counter("llmfn_requests", "LLM requests by model, endpoint and outcome.",
                                ["model", "endpoint", "status"], registry=r)
        self.prompt_tokens = Counter("llmfn_prompt_tokens", "Prompt (input) tokens.", ["model"], registry=r)
        self.completion_tokens = Counter("llmfn_completion_tokens", "Completion (output) tokens.",
                                         ["model"], registry=r)
        self.cached_tokens = Counter("llmfn_cached_tokens", "Prompt tokens served from the KV cache.",
                                     ["model"], registry=r)
        self.ttft = Histogram("llmfn_time_to_first_token_seconds", "Time to first token.", ["model"],
                              buckets=_LATENCY, registry=r)
        self.latency = Histogram("llmfn_request_duration_seconds", "Request duration.",
                                 ["model", "endpoint"], buckets=_LATENCY, registry=r)
        self.calls = Counter("llmfn_calls", "LLM calls by model, caller and outcome.",
                             ["model", "caller_kind", "caller", "status"], registry=r)
        self.caller_tokens = Counter("llmfn_caller_tokens", "Tokens by model, caller and type.",
                                     ["model", "caller_kind", "caller", "type"], registry=r)
        self.budgets = _BudgetCollector()
        r.register(self.budgets)
        self.cold_starts = Counter("llmfn_cold_starts", "Worker cold starts.", ["model"], registry=r)
        # llama.cpp server's own series, so its dashboards work on llmfn as they are.
        self.llamacpp_prompt = Counter("llamacpp:prompt_tokens", "Prompt tokens processed (not cached).",
                                       ["model"], registry=r)
        self.llamacpp_predicted = Counter("llamacpp:tokens_predicted", "Generated tokens.", ["model"],
                                          registry=r)
        self.cold_start_seconds = Histogram("llmfn_cold_start_seconds", "Cold start duration to ready.",
                                            ["model"], buckets=(.5, 1, 2, 5, 10, 30, 60, 120, 300),
                                            registry=r)

    def model(self, name: str) -> str:
        """The label of a model: a served one, or ``unknown`` (a label per caller's string
        would grow ``/metrics`` without end)."""
        return name if self.models is None or name in self.models else UNKNOWN_MODEL

    def observe_cold_start(self, model: str, info: dict) -> None:
        self.cold_starts.labels(self.model(model)).inc()
        self.cold_start_seconds.labels(self.model(model)).observe(info["ready_s"])

    def watch_pools(self, pools: Pools) -> None:
        self.models = frozenset(pool.name for pool in pools)
        self.registry.register(_PoolCollector(pools))

    async def refresh_budgets(self, acct: Accounting, keys: KeyStore, models: list[str]) -> None:
        """Refresh ``llmfn_key_budget_remaining_tokens`` from the quota counters (seeded
        once per period from the ledger's totals), so a scrape never scans the ledger."""
        left = {}
        for record in keys.active():
            if record.limits.daily_tokens is None and record.limits.monthly_tokens is None:
                continue
            principal = Principal(CallerKind.KEY, record.name)
            for model in models:
                budgets = await acct.policy.budgets(ServiceType.KEY, record.name, model,
                                                    acct.book.limits(principal, model))
                for which, tokens in budgets.items():
                    left[(record.name, model, "day" if which == "daily" else "month")] = tokens
        self.budgets.left = left

    def observe_ttft(self, model: str, seconds: float) -> None:
        self.ttft.labels(self.model(model)).observe(seconds)

    def observe_call(self, call: CallRecord) -> None:
        model, status = self.model(call.model), call_label(call.status, call.error)
        self.requests.labels(model, call.endpoint, status).inc()
        self.latency.labels(model, call.endpoint).observe(call.latency_s)
        who = (call.principal.kind, call.principal.name)
        self.calls.labels(model, *who, status).inc()
        for kind, n in (("prompt", call.prompt_tokens), ("completion", call.completion_tokens)):
            if n:
                self.caller_tokens.labels(model, *who, kind).inc(n)
        for counter, n in ((self.prompt_tokens, call.prompt_tokens),
                           (self.completion_tokens, call.completion_tokens),
                           (self.cached_tokens, call.cached_tokens)):
            if n:
                counter.labels(model).inc(n)
        if call.endpoint in ("chat", "completions"):
            if call.prompt_tokens > call.cached_tokens:
                self.llamacpp_prompt.labels(model).inc(call.prompt_tokens - call.cached_tokens)
            if call.completion_tokens:
                self.llamacpp_predicted.labels(model).inc(call.completion_tokens)


class _BudgetCollector:
    """Tokens left per key, model and budget period: a snapshot the gateway
    refreshes every few seconds, so a scrape reads no ledger nor Redis."""

    def __init__(self) -> None:
        self.left: dict[tuple[str, str, str], int] = {}  # (key, model, "day"|"month") -> tokens

    def collect(self) -> Iterable[GaugeMetricFamily]:
        gauge = GaugeMetricFamily("llmfn_key_budget_remaining_tokens",
                                  "Tokens left in a key's daily or monthly budget for a model.",
                                  labels=["key", "model", "period"])
        for labels, tokens in sorted(self.left.items()):
            gauge.add_metric(list(labels), tokens)
        yield gauge


class _PoolCollector:
    """Queue lengths and workers per state, read from the pools at scrape time."""

    def __init__(self, pools: Pools):
        self.pools = pools

    def collect(self) -> Iterable[GaugeMetricFamily]:
        queue = GaugeMetricFamily("llmfn_queue_length", "Requests waiting for a slot.", labels=["model"])
        workers = GaugeMetricFamily("llmfn_workers", "Worker processes by state.", labels=["model", "state"])
        in_flight = GaugeMetricFamily("llmfn_in_flight", "Sequences being generated.", labels=["model"])
        processing = GaugeMetricFamily("llamacpp:requests_processing", "Sequences being processed.",
                                       labels=["model"])
        deferred = GaugeMetricFamily("llamacpp:requests_deferred", "Requests waiting for a slot.",
                                     labels=["model"])
        kv = GaugeMetricFamily("llamacpp:kv_cache_usage_ratio", "KV cache use (1 = full).", labels=["model"])
        for pool in self.pools:
            st = pool.status()
            queue.add_metric([pool.name], st["queued"])
            in_flight.add_metric([pool.name], st["in_flight"])
            processing.add_metric([pool.name], st["in_flight"])
            deferred.add_metric([pool.name], st["queued"])
            kv.add_metric([pool.name], st["kv_cache_usage_ratio"])
            for state, n in st["workers"].items():
                workers.add_metric([pool.name, state], n)
        yield from (queue, workers, in_flight, processing, deferred, kv)


METRICS = web.AppKey("metrics", Metrics)


async def metrics(request: web.Request) -> web.Response:
    """Prometheus metrics."""
    resp = web.Response(body=generate_latest(request.app[METRICS].registry))
    resp.content_type = CONTENT_TYPE_LATEST.split(";")[0]
    return resp
