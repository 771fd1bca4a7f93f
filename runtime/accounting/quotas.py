"""Quotas and rate limits per (function or key) x model: requests and tokens per
minute over exact sliding windows, and token budgets per UTC day and month.

TPM reserves ``prompt_tokens + max_tokens`` before dispatch and settles to the
real count after the call. A budget counts what calls spent plus what calls in
flight reserved, and admits a call while anything is left of that; a call
that never settles (its gateway died) keeps its reservation on the budget, so
a crash never gives a budget back. Counters live in the process (``MemoryCounters``,
exact because the event loop admits one request at a time) or in Redis
(``RedisCounters``, one Lua script per decision, so several gateways hold one
limit). Budgets are rebuilt from the ledger on first use after a start."""
from __future__ import annotations

import asyncio
import collections
import math
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

from runtime.accounting.status import ServiceType
from runtime.errors import QuotaExhausted, RateLimited

WINDOW_S = 60.0


@dataclass(frozen=True)
class Limits:
    rpm: int | None = None
    tpm: int | None = None
    daily_tokens: int | None = None
    monthly_tokens: int | None = None

    def __bool__(self) -> bool:
        return any(v is not None for v in (self.rpm, self.tpm, self.daily_tokens, self.monthly_tokens))

    def tighten(self, other: Limits) -> Limits:
        """Field by field, the stricter of two limits."""
        pick = lambda a, b: b if a is None else a if b is None else min(a, b)  # noqa: E731
        return Limits(pick(self.rpm, other.rpm), pick(self.tpm, other.tpm),
                      pick(self.daily_tokens, other.daily_tokens),
                      pick(self.monthly_tokens, other.monthly_tokens))


@dataclass
class Decision:
    """What the counters said about one request (all figures after admitting it)."""
    admitted: bool
    reason: str = ""  # "rpm" | "tpm" | "tpm_too_large" | "daily" | "monthly"
    requests_left: int | None = None
    tokens_left: int | None = None
    reset_requests_s: float = 0.0
    reset_tokens_s: float = 0.0
    budget_left: dict[str, int] = field(default_factory=dict)


@dataclass
class Grant:
    """An admitted request's reservation, settled once when the call ends."""
    id: str
    subject: str
    limits: Limits
    reserved: int
    decision: Decision
    settled: bool = False

    def headers(self) -> dict[str, str]:
        return rate_headers(self.limits, self.decision)


def rate_headers(limits: Limits, d: Decision) -> dict[str, str]:
    h: dict[str, str] = {}
    if limits.rpm is not None:
        h["x-ratelimit-limit-requests"] = str(limits.rpm)
        h["x-ratelimit-remaining-requests"] = str(max(0, d.requests_left or 0))
        h["x-ratelimit-reset-requests"] = _duration(d.reset_requests_s)
    if limits.tpm is not None:
        h["x-ratelimit-limit-tokens"] = str(limits.tpm)
        h["x-ratelimit-remaining-tokens"] = str(max(0, d.tokens_left or 0))
        h["x-ratelimit-reset-tokens"] = _duration(d.reset_tokens_s)
    return h


def _duration(seconds: float) -> str:
    """OpenAI's reset format: ``1s``, ``6m0s``, ``250ms``."""
    if seconds < 1:
        return f"{max(0, int(seconds * 1000))}ms"
    whole = math.ceil(seconds)
    return f"{whole // 60}m{whole % 60}s" if whole >= 60 else f"{whole}s"


def periods(now: float) -> tuple[str, str]:
    day = datetime.fromtimestamp(now, UTC)
    return day.strftime("%Y-%m-%d"), day.strftime("%Y-%m")


def period_start(now: float, which: str) -> float:
    d = datetime.fromtimestamp(now, UTC)
    d = d.replace(hour=0, minute=0, second=0, microsecond=0)
    if which == "month":
        d = d.replace(day=1)
    return d.timestamp()


class Counters(Protocol):
    async def reserve(self, subject: str, limits: Limits, tokens: int, grant_id: str) -> Decision: ...
    async def settle(self, subject: str, limits: Limits, grant_id: str, reserved: int, actual: int) -> None: ...
    async def spent(self, subject: str, which: str) -> int: ...
    async def seed(self, subject: str, which: str, tokens: int) -> None: ...
    async def close(self) -> None: ...


class MemoryCounters:
    """In-process counters. Single event loop: each call runs to completion
    without awaiting, so check-and-record is atomic."""

    def __init__(self, clock: Callable[[], float] = time.time):
        self.clock = clock
        self._requests: dict[str, collections.deque[float]] = collections.defaultdict(collections.deque)
        # id -> [ts, n], in admission order (so the oldest is first), plus a running total:
        # each decision costs O(expired), not O(window).
        self._tokens: dict[str, dict[str, list[float]]] = collections.defaultdict(dict)
        self._token_sum: dict[str, int] = collections.defaultdict(int)
        self._spent: dict[tuple[str, str], int] = collections.defaultdict(int)
        # budget tokens reserved by calls in flight, per (subject, period), and per grant
        self._pending: dict[tuple[str, str], int] = collections.defaultdict(int)
        self._grants: dict[str, tuple[list[tuple[str, str]], int]] = {}

    def _expire(self, subject: str, now: float) -> None:
        reqs = self._requests[subject]
        while reqs and reqs[0] <= now - WINDOW_S:
            reqs.popleft()
        toks = self._tokens[subject]
        while toks:
            gid, (ts, n) = next(iter(toks.items()))
            if ts > now - WINDOW_S:
                break
            del toks[gid]
            self._token_sum[subject] -= n

    async def reserve(self, subject: str, limits: Limits, tokens: int, grant_id: str) -> Decision:
        now = self.clock()
        self._expire(subject, now)
        reqs, toks = self._requests[subject], self._tokens[subject]
        day, month = periods(now)
        used_tokens = self._token_sum[subject]
        d = Decision(admitted=False)
        if limits.rpm is not None:
            d.requests_left = limits.rpm - len(reqs)
            d.reset_requests_s = (reqs[0] + WINDOW_S - now) if reqs else 0.0
        if limits.tpm is not None:
            d.tokens_left = limits.tpm - used_tokens
            d.reset_tokens_s = (_oldest(toks) + WINDOW_S - now) if toks else 0.0
        budgets = [(which, (subject, key), cap) for which, key, cap in
                   (("daily", day, limits.daily_tokens), ("monthly", month, limits.monthly_tokens))
                   if cap is not None]
        for which, period, cap in budgets:
            left = cap - self._spent[period] - self._pending[period]
            d.budget_left[which] = left
            if left <= 0:
                d.reason = which
                return d
        if limits.rpm is not None and len(reqs) >= limits.rpm:
            d.reason = "rpm"
            return d
        if limits.tpm is not None:
            if tokens > limits.tpm:
                d.reason = "tpm_too_large"
                return d
            if used_tokens + tokens > limits.tpm:
                d.reason = "tpm"
                d.reset_tokens_s = _tokens_free_at(toks, limits.tpm - tokens, now) - now
                return d
        d.admitted = True
        for _, period, _ in budgets:
            self._pending[period] += tokens
        if budgets:
            self._grants[grant_id] = ([period for _, period, _ in budgets], tokens)
        if limits.rpm is not None:
            reqs.append(now)
            d.requests_left = limits.rpm - len(reqs)
            d.reset_requests_s = reqs[0] + WINDOW_S - now
        if limits.tpm is not None:
            toks[grant_id] = [now, tokens]
            self._token_sum[subject] += tokens
            d.tokens_left = limits.tpm - used_tokens - tokens
            d.reset_tokens_s = _oldest(toks) + WINDOW_S - now
        return d

    async def settle(self, subject: str, limits: Limits, grant_id: str, reserved: int, actual: int) -> None:
        entry = self._tokens[subject].get(grant_id)
        if entry is not None:
            self._token_sum[subject] += actual - entry[1]
            entry[1] = actual  # the window keeps its place, with the real count
        held, reserved = self._grants.pop(grant_id, ([], 0))
        for period in held:
            self._pending[period] -= reserved
        day, month = periods(self.clock())
        self._spent[(subject, day)] += actual
        self._spent[(subject, month)] += actual

    async def spent(self, subject: str, which: str) -> int:
        day, month = periods(self.clock())
        return self._spent[(subject, day if which == "daily" else month)]

    async def seed(self, subject: str, which: str, tokens: int) -> None:
        day, month = periods(self.clock())
        self._spent[(subject, day if which == "daily" else month)] = tokens

    async def close(self) -> None:
        pass


def _oldest(toks: dict[str, list[float]]) -> float:
    return next(iter(toks.values()))[0]


def _tokens_free_at(toks: dict[str, list[float]], allowed: int, now: float) -> float:
    """When enough reservations leave the window for ``allowed`` tokens to remain."""
    total = sum(n for _, n in toks.values())
    for ts, n in sorted(toks.values()):
        if total <= allowed:
            return ts
        total -= n
        if total <= allowed:
            return ts + WINDOW_S
    return now + WINDOW_S


class QuotaPolicy:
    """Admits or refuses a call for a subject (``function:Name`` or ``key:name``)
    and a model, and settles it afterwards."""

    def __init__(self, counters: Counters,
                 spent_since: Callable[[str, str, str, float], Awaitable[int]] | None = None,
                 clock: Callable[[], float] = time.time):
        self.counters = counters
        self.spent_since = spent_since  # (kind, resource, model, since) -> tokens, from the ledger
        self.clock = clock
        self._seeded: set[tuple[str, str, str]] = set()
        self._seed_lock = asyncio.Lock()

    @staticmethod
    def subject(kind: str, resource: str, model: str) -> str:
        return f"{kind}:{resource}|{model}"

    async def _seed(self, kind: str, resource: str, model: str, limits: Limits) -> None:
        """Budgets survive restarts: the first use in a period starts from the ledger."""
        if self.spent_since is None:
            return
        now = self.clock()
        day, month = periods(now)
        for which, key, cap in (("daily", day, limits.daily_tokens), ("monthly", month, limits.monthly_tokens)):
            mark = (self.subject(kind, resource, model), which, key)
            if cap is None or mark in self._seeded:
                continue
            async with self._seed_lock:
                if mark in self._seeded:
                    continue
                since = period_start(now, "day" if which == "daily" else "month")
                spent = await self.spent_since(kind, resource, model, since)
                await self.counters.seed(mark[0], which, spent)
                self._seeded.add(mark)

    async def reserve(self, kind: str, resource: str, model: str, limits: Limits, tokens: int) -> Grant:
        subject = self.subject(kind, resource, model)
        await self._seed(kind, resource, model, limits)
        grant = Grant(uuid.uuid4().hex, subject, limits, tokens, Decision(admitted=True))
        grant.decision = d = await self.counters.reserve(subject, limits, tokens, grant.id)
        if d.admitted:
            return grant
        who = f"{ServiceType(kind)} '{resource}'"
        headers = rate_headers(limits, d)
        if d.reason in ("daily", "monthly"):
            cap = limits.daily_tokens if d.reason == "daily" else limits.monthly_tokens
            raise QuotaExhausted(f"The {d.reason} token budget of {who} for model '{model}' "
                                 f"({cap} tokens) is spent. It renews at the start of the next "
                                 f"{'day' if d.reason == 'daily' else 'month'} (UTC).",
                                 code="insufficient_quota", headers=headers)
        if d.reason == "tpm_too_large":
            raise RateLimited(f"Request too large for {who} on model '{model}': it reserves {tokens} "
                              f"tokens, over the limit of {limits.tpm} tokens per minute. Set a lower "
                              "max_tokens.", code="rate_limit_exceeded", headers=headers)
        wait = d.reset_requests_s if d.reason == "rpm" else d.reset_tokens_s
        what = (f"{limits.rpm} requests per minute" if d.reason == "rpm"
                else f"{limits.tpm} tokens per minute")
        headers["Retry-After"] = str(max(1, math.ceil(wait)))
        raise RateLimited(f"Rate limit reached for {who} on model '{model}': {what}. "
                          f"Try again in {_duration(wait)}.", code="rate_limit_exceeded", headers=headers)

    async def settle(self, grant: Grant, actual: int) -> None:
        if grant.settled:
            return
        grant.settled = True
        await self.counters.settle(grant.subject, grant.limits, grant.id, grant.reserved, actual)

    async def remaining(self, kind: str, resource: str, model: str, limits: Limits) -> int | None:
        """Tokens left in the tighter budget (None: no budget)."""
        left = await self.budgets(kind, resource, model, limits)
        return min(left.values()) if left else None

    async def budgets(self, kind: str, resource: str, model: str, limits: Limits) -> dict[str, int]:
        """Tokens left per budget this subject has: ``{"daily": n, "monthly": m}``."""
        await self._seed(kind, resource, model, limits)
        subject = self.subject(kind, resource, model)
        left = {}
        for which, cap in (("daily", limits.daily_tokens), ("monthly", limits.monthly_tokens)):
            if cap is not None:
                left[which] = max(0, cap - await self.counters.spent(subject, which))
        return left


_RESERVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local win = tonumber(ARGV[7])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - win)
local old = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now - win)
for _, id in ipairs(old) do
  redis.call('ZREM', KEYS[2], id)
  redis.call('HDEL', KEYS[3], id)
end
local rpm, tpm = tonumber(ARGV[1]), tonumber(ARGV[2])
local daily, monthly = tonumber(ARGV[3]), tonumber(ARGV[4])
local tokens, id = tonumber(ARGV[5]), ARGV[6]
local nreq = redis.call('ZCARD', KEYS[1])
local used = 0
for _, v in ipairs(redis.call('HVALS', KEYS[3])) do used = used + tonumber(v) end
local function oldest(key)
  local o = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
  if #o == 0 then return now end
  return tonumber(o[2])
end
-- a budget is what was spent plus what calls in flight reserved (KEYS[6], KEYS[7])
local spent_d = tonumber(redis.call('GET', KEYS[4]) or '0') + tonumber(redis.call('GET', KEYS[6]) or '0')
local spent_m = tonumber(redis.call('GET', KEYS[5]) or '0') + tonumber(redis.call('GET', KEYS[7]) or '0')
local reason = ''
if daily >= 0 and daily - spent_d <= 0 then reason = 'daily'
elseif monthly >= 0 and monthly - spent_m <= 0 then reason = 'monthly'
elseif rpm >= 0 and nreq >= rpm then reason = 'rpm'
elseif tpm >= 0 and tokens > tpm then reason = 'tpm_too_large'
elseif tpm >= 0 and used + tokens > tpm then reason = 'tpm' end
if reason == '' then
  redis.call('ZADD', KEYS[1], now, id)
  redis.call('ZADD', KEYS[2], now, id)
  redis.call('HSET', KEYS[3], id, tokens)
  for i = 1, 3 do redis.call('EXPIRE', KEYS[i], math.ceil(win * 2)) end
  if daily >= 0 then
    redis.call('INCRBY', KEYS[6], tokens)
    redis.call('EXPIRE', KEYS[6], 172800)
  end
  if monthly >= 0 then
    redis.call('INCRBY', KEYS[7], tokens)
    redis.call('EXPIRE', KEYS[7], 2764800)
  end
  nreq = nreq + 1
  used = used + tokens
end
return {reason, tostring(rpm - nreq), tostring(tpm - used),
        tostring(oldest(KEYS[1]) + win - now), tostring(oldest(KEYS[2]) + win - now),
        tostring(daily - spent_d), tostring(monthly - spent_m)}
"""

_SETTLE = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) end
-- the reservation leaves the budgets it was held on (KEYS[4], KEYS[5]: its periods')
if ARGV[4] == '1' then redis.call('DECRBY', KEYS[4], ARGV[3]) end
if ARGV[5] == '1' then redis.call('DECRBY', KEYS[5], ARGV[3]) end
redis.call('INCRBY', KEYS[2], ARGV[2])
redis.call('EXPIRE', KEYS[2], 172800)
redis.call('INCRBY', KEYS[3], ARGV[2])
redis.call('EXPIRE', KEYS[3], 2764800)
return 1
"""


class RedisCounters:
    """Counters in Redis, shared by every gateway that points at the same server.
    Each decision is one Lua script on Redis's own clock (``TIME``), so the
    check and the record are atomic across processes."""

    def __init__(self, url: str, prefix: str = "llmfn:q"):
        import redis.asyncio as redis

        self.redis = redis.from_url(url)
        self.prefix = prefix
        self._reserve = self.redis.register_script(_RESERVE)
        self._settle = self.redis.register_script(_SETTLE)
        self._held: dict[str, list[str]] = {}  # grant id -> its budgets' reservation keys

    def _keys(self, subject: str) -> list[str]:
        day, month = periods(time.time())
        p = f"{self.prefix}:{{{subject}}}"  # one hash slot per subject (Redis Cluster)
        return [f"{p}:req", f"{p}:tok", f"{p}:tokn", f"{p}:spent:{day}", f"{p}:spent:{month}",
                f"{p}:held:{day}", f"{p}:held:{month}"]

    async def reserve(self, subject: str, limits: Limits, tokens: int, grant_id: str) -> Decision:
        opt = lambda v: -1 if v is None else v  # noqa: E731
        keys = self._keys(subject)
        raw = await self._reserve(keys=keys, args=[
            opt(limits.rpm), opt(limits.tpm), opt(limits.daily_tokens), opt(limits.monthly_tokens),
            tokens, grant_id, WINDOW_S])
        reason, req_left, tok_left, reset_req, reset_tok, day_left, month_left = (
            v.decode() if isinstance(v, bytes) else str(v) for v in raw)
        d = Decision(admitted=not reason, reason=reason,
                     requests_left=int(float(req_left)) if limits.rpm is not None else None,
                     tokens_left=int(float(tok_left)) if limits.tpm is not None else None,
                     reset_requests_s=max(0.0, float(reset_req)), reset_tokens_s=max(0.0, float(reset_tok)))
        if limits.daily_tokens is not None:
            d.budget_left["daily"] = int(float(day_left))
        if limits.monthly_tokens is not None:
            d.budget_left["monthly"] = int(float(month_left))
        if d.admitted:
            self._held[grant_id] = keys[5:]  # settled on the periods it was reserved in
        return d

    async def settle(self, subject: str, limits: Limits, grant_id: str, reserved: int, actual: int) -> None:
        keys = self._keys(subject)
        held = self._held.pop(grant_id, keys[5:])
        await self._settle(keys=[keys[2], keys[3], keys[4], *held], args=[
            grant_id, actual, reserved, int(limits.daily_tokens is not None),
            int(limits.monthly_tokens is not None)])

    async def spent(self, subject: str, which: str) -> int:
        key = self._keys(subject)[3 if which == "daily" else 4]
        return int(await self.redis.get(key) or 0)

    async def seed(self, subject: str, which: str, tokens: int) -> None:
        key = self._keys(subject)[3 if which == "daily" else 4]
        # Another gateway may have counted this period already: only fill a missing counter.
        await self.redis.set(key, tokens, nx=True, ex=172800 if which == "daily" else 2764800)

    async def close(self) -> None:
        await self.redis.aclose()
