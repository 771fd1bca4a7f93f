"""Ledger rows, quotas and usage reports through a real gateway over llama.cpp."""
from __future__ import annotations

import asyncio
import http.client
import json
import os
import signal
import sqlite3
import threading
import time
from contextlib import closing
from urllib.parse import urlparse

import pytest

from runtime.accounting.keys import KeyStore
from runtime.accounting.ledger import Ledger, LedgerRow
from runtime.accounting.quotas import Limits
from runtime.accounting.status import CallerKind
from runtime.errors import LedgerUnavailable
from runtime.gateway import GatewayConfig, build_app
from runtime.gateway.auth import Principal
from runtime.gateway.charging import ACCOUNTING
from runtime.gateway.state import POOLS
from runtime.pool import ModelStore
from tests.support.cli import wait_until
from tests.support.gateway import MODEL, call, model
from tests.support.outage import writes_refused

ADMIN = "admin-secret-key"


@pytest.fixture
def data(tmp_path):
    return {"ledger_at": tmp_path / "ledger.sqlite3", "keys_at": tmp_path / "keys.sqlite3",
            "admin_key": ADMIN}


def _rows(path) -> list[dict]:
    ledger = Ledger(path)
    try:
        cols = ["ts", "service_type", "resource", "invocation_id", "model", "prompt_tokens",
                "completion_tokens", "cached_tokens", "status", "error_type", "latency_ms", "ttft_ms"]
        return [dict(zip(cols, r)) for r in ledger.read(f"SELECT {', '.join(cols)} FROM calls ORDER BY ts")]
    finally:
        ledger.close()


def _bearer(key):
    return {"Authorization": f"Bearer {key}"}


def test_ledger_rows_for_success_and_each_failure(make_gateway, data):
    gw = make_gateway(model(max_workers=1), **data)
    url = gw.url
    ok = call(f"{url}/v1/completions", {"model": MODEL, "prompt": "Hello", "max_tokens": 3})
    assert ok.status == 200
    usage = ok.json()["usage"]
    assert call(f"{url}/v1/completions", {"model": MODEL, "prompt": "x", "temperature": 9}).status == 400
    assert call(f"{url}/v1/completions", {"model": MODEL, "prompt": "word " * 2000}).status == 400
    assert call(f"{url}/v1/completions", {"model": "ghost", "prompt": "x"}).status == 404
    # a worker killed mid-request
    result = {}
    t = threading.Thread(target=lambda: result.update(r=call(
        f"{url}/v1/completions", {"model": MODEL, "prompt": "Story:", "max_tokens": 900})))
    t.start()
    wait_until(lambda: gw.pool_status(MODEL)["in_flight"], 30)
    time.sleep(0.3)
    os.kill(gw.pool_status(MODEL)["pids"][0], signal.SIGKILL)
    t.join(60)
    assert result["r"].status == 502
    gw.__exit__(None, None, None)  # a clean shutdown flushes the ledger
    rows = _rows(data["ledger_at"])
    by_error = {r["error_type"]: r for r in rows}
    success = by_error[None]
    assert success["status"] == "success" and success["service_type"] == "key"
    assert success["resource"] == "anonymous" and success["model"] == MODEL
    assert (success["prompt_tokens"], success["completion_tokens"]) == (usage["prompt_tokens"], usage["completion_tokens"])
    assert success["latency_ms"] > 0 and success["ttft_ms"] is not None
    for error in ("invalid_value", "context_length_exceeded", "model_not_found", "upstream_error"):
        assert by_error[error]["status"] == "failure", error
    assert by_error["model_not_found"]["model"] == "unknown"  # a caller's name is never a row's value
    assert by_error["upstream_error"]["prompt_tokens"] > 0


def test_abandoned_stream_records_the_tokens_generated(make_gateway, data):
    gw = make_gateway(model(), **data)
    u = urlparse(gw.url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
    conn.request("POST", "/v1/completions", json.dumps(
        {"model": MODEL, "prompt": "Write a long story:", "max_tokens": 500, "stream": True}),
        {"Content-Type": "application/json"})
    resp = conn.getresponse()
    seen = 0
    while seen < 5:
        line = resp.fp.readline()
        if line.startswith(b"data: {"):
            seen += 1
    conn.close()  # the client goes away mid-stream
    wait_until(lambda: gw.pool_status(MODEL)["in_flight"] == 0, 20, message="the slot was never freed")
    gw.__exit__(None, None, None)
    [row] = _rows(data["ledger_at"])
    assert row["status"] == "failure" and row["error_type"] == "cancelled"
    assert 5 <= row["completion_tokens"] < 500


def test_rpm_admits_exactly_r_of_many_concurrent_clients(make_gateway, data):
    KeyStore(data["keys_at"]).create("team", limits=Limits(rpm=4))
    secret = KeyStore(data["keys_at"]).create("burst", limits=Limits(rpm=4))
    gw = make_gateway(model(), **data)
    replies = []

    def one():
        replies.append(call(f"{gw.url}/v1/embeddings", {"model": MODEL, "input": "hi"}, headers=_bearer(secret)))

    threads = [threading.Thread(target=one) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    statuses = sorted(r.status for r in replies)
    assert statuses.count(200) == 4 and statuses.count(429) == 8
    refused = next(r for r in replies if r.status == 429)
    err = refused.json()["error"]
    assert err["type"] == "rate_limit_exceeded" and "burst" in err["message"]
    assert int(refused.headers["Retry-After"]) >= 1
    assert refused.headers["x-ratelimit-limit-requests"] == "4"
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    assert refused.headers["x-ratelimit-reset-requests"].endswith("s")
    admitted = next(r for r in replies if r.status == 200)
    assert admitted.headers["x-ratelimit-limit-requests"] == "4"


def test_tpm_reserves_and_settles(make_gateway, data):
    secret = KeyStore(data["keys_at"]).create("tpm", limits=Limits(tpm=300))
    gw = make_gateway(model(), **data)
    body = {"model": MODEL, "prompt": "Hello", "max_tokens": 200, "stop": ["\n", "."], "temperature": 0}
    first = call(f"{gw.url}/v1/completions", body, headers=_bearer(secret))
    assert first.status == 200
    used = first.json()["usage"]["total_tokens"]
    assert used < 200  # it reserved prompt + 200, then settled to what it really used
    second = call(f"{gw.url}/v1/completions", body, headers=_bearer(secret))
    assert second.status == 200, "the unused part of the first reservation was given back"
    assert int(second.headers["x-ratelimit-remaining-tokens"]) <= 300 - used - 200
    too_big = call(f"{gw.url}/v1/completions", {**body, "max_tokens": 400}, headers=_bearer(secret))
    assert too_big.status == 429 and "max_tokens" in too_big.json()["error"]["message"]


def test_daily_budget_survives_a_restart(make_gateway, data):
    secret = KeyStore(data["keys_at"]).create("budget", limits=Limits(daily_tokens=30))
    gw = make_gateway(model(), **data)
    body = {"model": MODEL, "prompt": "Count: one two three", "max_tokens": 30}
    assert call(f"{gw.url}/v1/completions", body, headers=_bearer(secret)).status == 200
    spent = call(f"{gw.url}/v1/completions", body, headers=_bearer(secret))
    assert spent.status == 429
    err = spent.json()["error"]
    assert err["type"] == "insufficient_quota" and err["code"] == "insufficient_quota"
    assert "daily" in err["message"] and "budget" in err["message"] and MODEL in err["message"]
    assert "Retry-After" not in spent.headers
    gw.__exit__(None, None, None)
    again = make_gateway(model(), **data)  # same ledger: the budget is rebuilt from it
    still = call(f"{again.url}/v1/completions", body, headers=_bearer(secret))
    assert still.status == 429 and still.json()["error"]["code"] == "insufficient_quota"


def test_a_key_reads_only_its_own_usage(make_gateway, data):
    store = KeyStore(data["keys_at"])
    alice, bob = store.create("alice"), store.create("bob")
    gw = make_gateway(model(), **data)
    for key in (alice, bob, bob):
        assert call(f"{gw.url}/v1/embeddings", {"model": MODEL, "input": "x"}, headers=_bearer(key)).status == 200
    mine = call(f"{gw.url}/v1/usage?since=7d", method="GET", headers=_bearer(alice))
    assert mine.status == 200 and mine.json()["totals"]["calls"] == 1
    theirs = call(f"{gw.url}/v1/usage?resource=bob", method="GET", headers=_bearer(alice))
    assert theirs.status == 403 and theirs.json()["error"]["type"] == "permission_error"
    everyone = call(f"{gw.url}/v1/usage?by=resource", method="GET", headers=_bearer(ADMIN)).json()
    assert {r["resource"]: r["calls"] for r in everyone["rows"]} == {"alice": 1, "bob": 2}
    assert call(f"{gw.url}/v1/usage", method="GET").status == 401


def test_keys_admin_routes_and_revocation(make_gateway, data):
    gw = make_gateway(model(), **data)
    created = call(f"{gw.url}/admin/keys", {"name": "ci", "rpm": 100}, headers=_bearer(ADMIN))
    assert created.status == 201
    secret = created.json()["key"]
    listing = call(f"{gw.url}/admin/keys", method="GET", headers=_bearer(ADMIN)).json()["data"]
    assert [k["name"] for k in listing] == ["ci"] and secret not in json.dumps(listing)
    assert call(f"{gw.url}/v1/models", method="GET", headers=_bearer(secret)).status == 200
    assert call(f"{gw.url}/admin/keys", method="GET", headers=_bearer(secret)).status == 403
    assert call(f"{gw.url}/admin/keys/ci", method="DELETE", headers=_bearer(ADMIN)).status == 200
    assert call(f"{gw.url}/v1/models", method="GET", headers=_bearer(secret)).status == 401


def test_model_default_limits_apply_to_every_caller(make_gateway, data):
    from runtime.template.model_spec import ModelConfig, ModelLimits, PoolConfig

    limited = ModelConfig(name=MODEL, limits=ModelLimits(rpm=2), pool=PoolConfig(n_ctx=512, n_threads=2))
    store = KeyStore(data["keys_at"])
    a, b = store.create("a"), store.create("b")
    gw = make_gateway(limited, **data)
    body = {"model": MODEL, "input": "x"}
    for key in (a, b):  # each caller has its own window of the model's limit
        assert [call(f"{gw.url}/v1/embeddings", body, headers=_bearer(key)).status for _ in range(3)] == [200, 200, 429]


def _on_disk(path) -> dict[str, tuple]:
    """request id -> (status, prompt, completion), read on a connection of its own (no flush)."""
    with closing(sqlite3.connect(path)) as conn:
        return {r[0]: r[1:] for r in conn.execute(
            "SELECT request_id, status, prompt_tokens, completion_tokens FROM calls")}


def test_a_call_is_in_the_ledger_before_its_response_ends(make_gateway, data):
    gw = make_gateway(model(), **data)
    whole = call(f"{gw.url}/v1/completions", {"model": MODEL, "prompt": "Hello", "max_tokens": 3})
    usage = whole.json()["usage"]
    assert _on_disk(data["ledger_at"])[whole.headers["x-request-id"]] == (
        "success", usage["prompt_tokens"], usage["completion_tokens"])
    stream = call(f"{gw.url}/v1/completions", {"model": MODEL, "prompt": "Hi", "max_tokens": 3,
                                               "stream": True, "stream_options": {"include_usage": True}})
    usage = stream.events()[-2]["usage"]
    assert _on_disk(data["ledger_at"])[stream.headers["x-request-id"]] == (
        "success", usage["prompt_tokens"], usage["completion_tokens"])


def test_an_unwritable_ledger_refuses_calls_with_a_503_before_they_run(make_gateway, db_target):
    gw = make_gateway(model(), ledger_at=db_target("ledger.sqlite3"), admin_key=ADMIN)
    ledger = gw.app[ACCOUNTING].ledger
    body = {"model": MODEL, "prompt": "Hello", "max_tokens": 3}
    with writes_refused(ledger):  # a full disk, or a PostgreSQL database that is down
        with pytest.raises(LedgerUnavailable):
            for i in range(2000):
                ledger.admit(LedgerRow(time.time(), "key", "filler", None, MODEL, 1, 0, 0, "running", None,
                                       0.0, None, call_id=f"filler-{i}")).result(10)
        refused = call(f"{gw.url}/v1/completions", body)
        assert refused.status == 503
        error = refused.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert (error["type"], error["code"]) == ("server_error", "ledger_unavailable")
        assert ("full" if ledger.dialect.name == "sqlite" else "cannot connect") in error["message"]
        # A request on a cold pool starts a worker as it arrives (a head start on the cold
        # start); the refused call itself never reached it.
        wait_until(lambda: gw.pool_status(MODEL)["workers"]["starting"] == 0, timeout=60)
        assert all(e["prompt_tokens"] == 0 for e in gw.pool_status(MODEL)["engines"])
    assert call(f"{gw.url}/v1/completions", body).status == 200


def _metric(text: str, series: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.split(" ")[1])
    return None


def test_a_keys_call_shows_in_readiness_metrics_budget_gauge_and_call_list(make_gateway, data):
    secret = KeyStore(data["keys_at"]).create("carol", limits=Limits(daily_tokens=1000))
    gw = make_gateway(model(), **data)
    [card] = call(f"{gw.url}/v1/models", method="GET", headers=_bearer(secret)).json()["data"]
    assert card["pool"]["ready"] is True and "cold" in card["pool"]["reason"]
    reply = call(f"{gw.url}/v1/completions", {"model": MODEL, "prompt": "Hello", "max_tokens": 3},
                 headers=_bearer(secret))
    assert reply.status == 200
    usage = reply.json()["usage"]
    [card] = call(f"{gw.url}/v1/models", method="GET", headers=_bearer(secret)).json()["data"]
    assert (card["pool"]["ready"], card["pool"]["reason"]) == (True, "warm")
    assert call(f"{gw.url}/health/ready", method="GET").status == 200
    who = f'caller="carol",caller_kind="key",model="{MODEL}"'
    metrics = call(f"{gw.url}/metrics", method="GET").body.decode()
    assert _metric(metrics, f'llmfn_calls_total{{{who},status="success"}}') == 1
    assert _metric(metrics, f'llmfn_caller_tokens_total{{{who},type="prompt"}}') == usage["prompt_tokens"]
    assert _metric(metrics, f'llmfn_caller_tokens_total{{{who},type="completion"}}') == usage["completion_tokens"]
    gauge = f'llmfn_key_budget_remaining_tokens{{key="carol",model="{MODEL}",period="day"}}'
    wait_until(lambda: _metric(call(f"{gw.url}/metrics", method="GET").body.decode(), gauge)
               == 1000 - usage["total_tokens"], timeout=10)
    [row] = call(f"{gw.url}/v1/usage/calls", method="GET", headers=_bearer(secret)).json()["data"]
    assert (row["request_id"], row["status"], row["prompt_tokens"]) == (
        reply.headers["x-request-id"], "success", usage["prompt_tokens"])


async def test_a_budget_in_redis_keeps_what_a_crashed_gateway_reserved(redis_url):
    from runtime.accounting.quotas import QuotaPolicy, RedisCounters
    from runtime.errors import QuotaExhausted

    limits = Limits(daily_tokens=100)
    crashed = QuotaPolicy(RedisCounters(redis_url, prefix="t"))
    await crashed.reserve("key", "k", MODEL, limits, 60)
    await crashed.reserve("key", "k", MODEL, limits, 50)  # in flight when its gateway dies
    await crashed.counters.close()
    restarted = QuotaPolicy(RedisCounters(redis_url, prefix="t"))
    with pytest.raises(QuotaExhausted):
        await restarted.reserve("key", "k", MODEL, limits, 1)
    # a call that ends gives back what it did not use
    other = await restarted.reserve("key", "other", MODEL, limits, 90)
    await restarted.settle(other, 30)
    assert (await restarted.reserve("key", "other", MODEL, limits, 1)).decision.budget_left["daily"] == 70
    await restarted.counters.close()


@pytest.mark.llama
async def test_an_embeddings_call_whose_client_leaves_gives_its_reservation_back(model_cache, tmp_path,
                                                                               aiohttp_client):
    # The test server cancels a handler whose client disconnects, as a proxy in front would.
    secret = KeyStore(tmp_path / "keys.sqlite3").create("emb", limits=Limits(daily_tokens=60_000))
    store = ModelStore(model_cache, show_progress=False)
    client = await aiohttp_client(build_app(GatewayConfig(
        models=[model()], store=store, ledger_at=tmp_path / "ledger.sqlite3",
        keys_at=tmp_path / "keys.sqlite3")))
    texts = [f"document {i}: " + "the quick brown fox jumps over the lazy dog " * 6 for i in range(400)]
    request = asyncio.create_task(client.post("/v1/embeddings", json={"model": MODEL, "input": texts},
                                              headers=_bearer(secret)))
    pool = client.app[POOLS].get(MODEL)
    deadline = time.monotonic() + 60
    while pool.status()["in_flight"] == 0 and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    assert pool.status()["in_flight"] == 1, "the embeddings call never reached a worker"
    request.cancel()  # the client goes away while the worker embeds
    acct = client.app[ACCOUNTING]
    key = Principal(CallerKind.KEY, "emb")
    deadline = time.monotonic() + 5
    while await acct.remaining(key, MODEL) < 60_000 and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert await acct.remaining(key, MODEL) == 60_000  # the whole reservation came back
    ended = "SELECT status, error_type FROM calls WHERE status != 'running'"
    while not acct.ledger.read(ended) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert acct.ledger.read("SELECT status, error_type FROM calls") == [("failure", "cancelled")]
