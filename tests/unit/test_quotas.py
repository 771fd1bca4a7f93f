"""Quota arithmetic on in-process counters with a fake clock (the Redis twin is
tested against a real redis-server in tests/integration/test_accounting.py and tests/e2e/)."""
from __future__ import annotations

import asyncio

import pytest

from runtime.accounting.quotas import Limits, MemoryCounters, QuotaPolicy
from runtime.errors import QuotaExhausted, RateLimited


class Clock:
    def __init__(self, t: float = 1_800_000_000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def _policy(clock=None, spent_since=None):
    clock = clock or Clock()
    return QuotaPolicy(MemoryCounters(clock), spent_since=spent_since, clock=clock), clock


async def test_rpm_admits_exactly_r_under_concurrency():
    policy, clock = _policy()
    limits = Limits(rpm=5)

    async def one():
        try:
            await policy.reserve("key", "k1", "m", limits, 10)
            return "ok"
        except RateLimited as err:
            return err

    results = await asyncio.gather(*(one() for _ in range(20)))
    assert results.count("ok") == 5
    err = next(r for r in results if r != "ok")
    assert err.status == 429 and err.type == "rate_limit_exceeded"
    assert err.headers["x-ratelimit-limit-requests"] == "5"
    assert err.headers["x-ratelimit-remaining-requests"] == "0"
    assert int(err.headers["Retry-After"]) == 60
    clock.t += 59.9
    with pytest.raises(RateLimited):
        await policy.reserve("key", "k1", "m", limits, 10)
    clock.t += 0.2  # the first five leave the 60-second window
    assert (await policy.reserve("key", "k1", "m", limits, 10)).decision.admitted


async def test_rpm_is_per_resource_and_model():
    policy, _ = _policy()
    limits = Limits(rpm=1)
    await policy.reserve("key", "a", "m1", limits, 1)
    await policy.reserve("key", "a", "m2", limits, 1)
    await policy.reserve("function", "a", "m1", limits, 1)
    with pytest.raises(RateLimited):
        await policy.reserve("key", "a", "m1", limits, 1)


async def test_tpm_reserves_then_settles_to_the_real_count():
    policy, clock = _policy()
    limits = Limits(tpm=1000)
    g1 = await policy.reserve("key", "k", "m", limits, 600)
    assert g1.headers()["x-ratelimit-remaining-tokens"] == "400"
    with pytest.raises(RateLimited) as exc:
        await policy.reserve("key", "k", "m", limits, 600)
    assert exc.value.headers["x-ratelimit-limit-tokens"] == "1000"
    await policy.settle(g1, 100)  # it used far less than it reserved: the rest is free again
    g2 = await policy.reserve("key", "k", "m", limits, 600)
    assert g2.headers()["x-ratelimit-remaining-tokens"] == "300"
    clock.t += 61
    g3 = await policy.reserve("key", "k", "m", limits, 1000)
    assert g3.headers()["x-ratelimit-remaining-tokens"] == "0"


async def test_request_larger_than_tpm_is_refused_with_a_clear_message():
    policy, _ = _policy()
    with pytest.raises(RateLimited, match="max_tokens"):
        await policy.reserve("key", "k", "m", Limits(tpm=100), 101)


async def test_daily_budget_is_insufficient_quota_without_retry_after():
    policy, _ = _policy()
    limits = Limits(daily_tokens=50)
    g = await policy.reserve("function", "Fn", "m", limits, 40)
    await policy.settle(g, 60)
    with pytest.raises(QuotaExhausted) as exc:
        await policy.reserve("function", "Fn", "m", limits, 1)
    err = exc.value
    assert err.status == 429 and err.code == "insufficient_quota" and "Retry-After" not in err.headers
    assert "daily" in err.message and "'Fn'" in err.message and "'m'" in err.message
    assert await policy.remaining("function", "Fn", "m", limits) == 0


async def test_budgets_renew_on_a_new_day_and_month():
    policy, clock = _policy(Clock(1_800_000_000.0))  # 2027-01-15 08:00 UTC
    limits = Limits(daily_tokens=10, monthly_tokens=25)
    for _ in range(2):
        g = await policy.reserve("key", "k", "m", limits, 1)
        await policy.settle(g, 10)
        clock.t += 86_400
    g = await policy.reserve("key", "k", "m", limits, 1)
    await policy.settle(g, 10)
    clock.t += 86_400
    with pytest.raises(QuotaExhausted, match="monthly"):
        await policy.reserve("key", "k", "m", limits, 1)


async def test_budgets_start_from_the_ledger():
    calls = []

    async def spent_since(kind, resource, model, since):
        calls.append((resource, model))
        return 45

    policy, _ = _policy(spent_since=spent_since)
    limits = Limits(daily_tokens=50)
    assert await policy.remaining("key", "k", "m", limits) == 5
    g = await policy.reserve("key", "k", "m", limits, 3)
    await policy.settle(g, 5)
    with pytest.raises(QuotaExhausted):
        await policy.reserve("key", "k", "m", limits, 1)
    assert calls == [("k", "m")]  # read once per period, not per call


async def test_a_budget_counts_what_calls_in_flight_reserved():
    policy, _ = _policy()
    limits = Limits(daily_tokens=100)
    first = await policy.reserve("key", "k", "m", limits, 60)
    second = await policy.reserve("key", "k", "m", limits, 50)  # 40 were left: admitted
    with pytest.raises(QuotaExhausted):
        await policy.reserve("key", "k", "m", limits, 1)  # 60 + 50 reserved: nothing left
    await policy.settle(first, 10)
    await policy.settle(second, 20)
    assert (await policy.reserve("key", "k", "m", limits, 1)).decision.budget_left["daily"] == 70


async def test_a_reservation_never_settled_stays_on_the_budget():
    """What a call whose gateway died reserved is never given back."""
    policy, _ = _policy()
    limits = Limits(daily_tokens=100, tpm=1000)
    await policy.reserve("key", "k", "m", limits, 100)  # never settled
    with pytest.raises(QuotaExhausted):
        await policy.reserve("key", "k", "m", limits, 1)


def test_limits_tighten():
    assert Limits(rpm=10, tpm=None).tighten(Limits(rpm=5, tpm=100)) == Limits(rpm=5, tpm=100)
    assert not Limits()
