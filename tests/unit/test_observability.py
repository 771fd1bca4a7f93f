"""What an operator watches without a model running: liveness and readiness
(and the ledger breaking and mending under them), metrics per caller that stay
bounded whatever callers send, the key budget gauges, and ``/v1/usage/calls``
with its paging, filters, CSV and access rules; on a SQLite ledger and on a
PostgreSQL one (``db_target``)."""
from __future__ import annotations

import csv
import io
import json
import time

import pytest

from runtime.accounting.call_log import CallFilter, list_calls
from runtime.accounting.keys import KeyStore
from runtime.accounting.ledger import Ledger, LedgerRow
from runtime.accounting.quotas import Limits
from runtime.errors import LedgerUnavailable
from runtime.gateway import GatewayConfig, build_app
from runtime.gateway.charging import ACCOUNTING
from runtime.gateway.health import pool_readiness
from runtime.gateway.metrics import METRICS
from runtime.pool import ModelStore
from tests.support.cli import llmfn
from tests.support.gateway import model
from tests.support.outage import writes_refused

ADMIN = "sk-observability-admin"


def _row(resource: str, ts: float, *, model: str = "m1", status: str = "success", kind: str = "key",
         prompt: int = 3, completion: int = 2) -> LedgerRow:
    return LedgerRow(ts, kind, resource, None, model, prompt, completion, 0, status,
                     None if status == "success" else "model_not_found", 12.5, None,
                     request_id=f"req-{resource}-{ts}", endpoint="chat")


@pytest.fixture
def paths(db_target):
    return {"ledger_at": db_target("ledger.sqlite3"), "keys_at": db_target("keys.sqlite3")}


@pytest.fixture
def secret_of(paths):
    store = KeyStore(paths["keys_at"])
    return {"alice": store.create("alice", limits=Limits(daily_tokens=1000)), "bob": store.create("bob")}


@pytest.fixture
async def gateway(aiohttp_client, tmp_path, paths, secret_of):
    app = build_app(GatewayConfig(models=[], store=ModelStore(tmp_path / "cache"), admin_key=ADMIN, **paths))
    return await aiohttp_client(app)


def _auth(secret: str) -> dict:
    return {"Authorization": f"Bearer {secret}"}


def _seed(gateway, rows) -> None:
    ledger = gateway.app[ACCOUNTING].ledger
    for row in rows:
        ledger.record(row)
    ledger.flush()


# ---- health ----------------------------------------------------------------------

async def test_readiness_is_503_while_the_ledger_cannot_write_and_200_again_after(gateway):
    assert (await gateway.get("/health/ready")).status == 200
    ledger = gateway.app[ACCOUNTING].ledger
    with writes_refused(ledger):  # a full disk, or a PostgreSQL database that is down
        with pytest.raises(LedgerUnavailable):
            for i in range(2000):
                ledger.admit(LedgerRow(time.time(), "key", "filler", None, "m1", 1, 0, 0, "running", None,
                                       0.0, None, call_id=f"filler-{i}")).result(10)
        reply = await gateway.get("/health/ready")
        assert reply.status == 503
        body = await reply.json()
        assert body["status"] == "unavailable" and any(r.startswith("ledger:") for r in body["reasons"])
        assert (await gateway.get("/health/live")).status == 200  # alive all the same
    reply = await gateway.get("/health/ready")
    assert reply.status == 200 and (await reply.json())["reasons"] == []


async def test_health_routes_need_no_key_and_are_in_the_openapi_document(gateway):
    for path in ("/health", "/health/live", "/health/ready"):
        assert (await gateway.get(path)).status == 200
    paths = (await (await gateway.get("/openapi.json")).json())["paths"]
    assert {"/health/live", "/health/ready", "/v1/usage/calls"} <= set(paths)


async def test_readiness_is_503_once_the_gateway_shuts_down(gateway):
    await gateway.app.shutdown()
    reply = await gateway.get("/health/ready")
    assert reply.status == 503 and "shutting down" in " ".join((await reply.json())["reasons"])


class _Pool:
    """What readiness reads of a pool: its status and its configuration."""

    def __init__(self, state: str, warm: int, in_flight: int, queued: int, **pool):
        self.config = model(**pool)
        self._status = {"state": state, "workers": {"starting": 0, "warm": warm, "draining": 0},
                        "in_flight": in_flight, "queued": queued}

    def status(self) -> dict:
        return self._status


@pytest.mark.parametrize(("pool", "ready", "reason"), [
    (_Pool("cold", 0, 0, 0), True, "cold"),
    (_Pool("warm", 1, 0, 0), True, "warm"),
    (_Pool("warm", 1, 2, 3, slots=2, queue_limit=3), False, "queue_limit 3"),
    (_Pool("warm", 1, 1, 3, slots=2, queue_limit=3), True, "warm"),  # a free slot takes it
    (_Pool("starting", 0, 0, 64), False, "queue_limit 64"),
])
def test_a_model_is_ready_unless_its_slots_and_queue_are_full(pool, ready, reason):
    ok, why = pool_readiness(pool)
    assert ok is ready and reason in why
    assert pool_readiness(pool, stopping=True)[0] is False


# ---- metrics ---------------------------------------------------------------------

def _series(text: str, name: str) -> set[str]:
    return {line.split(" ")[0] for line in text.splitlines() if line.startswith(name + "{")}


async def test_calls_are_counted_per_caller_and_unknown_callers_add_no_series(gateway, secret_of):
    body = json.dumps({"model": "ghost", "prompt": "x"})
    assert (await gateway.post("/v1/completions", data=body, headers=_auth(secret_of["alice"]))).status == 404
    text = await (await gateway.get("/metrics")).text()
    series = _series(text, "llmfn_calls_total")
    assert ('llmfn_calls_total{caller="alice",caller_kind="key",model="unknown",'
            'status="error:model_not_found"}') in series
    for i in range(1000):
        reply = await gateway.post("/v1/completions", data=body, headers=_auth(f"sk-unknown-{i}"))
        assert reply.status == 401
    after = await (await gateway.get("/metrics")).text()
    for name in ("llmfn_calls_total", "llmfn_caller_tokens_total", "llmfn_requests_total"):
        assert _series(after, name) == _series(text, name)


async def test_key_budgets_are_gauges_of_what_is_left_today_and_this_month(tmp_path, paths, secret_of):
    ledger = Ledger(paths["ledger_at"])
    ledger.record(_row("alice", time.time(), prompt=300, completion=100))
    ledger.close()
    app = build_app(GatewayConfig(models=[], store=ModelStore(tmp_path / "cache"), **paths))
    acct, keys = app[ACCOUNTING], KeyStore(paths["keys_at"])
    try:
        await app[METRICS].refresh_budgets(acct, keys, ["m1"])
        assert app[METRICS].budgets.left == {("alice", "m1", "day"): 600}  # bob has no budget
    finally:
        acct.ledger.close()


# ---- /v1/usage/calls ------------------------------------------------------------

async def test_calls_are_listed_newest_first_a_page_at_a_time(gateway):
    now = time.time()
    _seed(gateway, [_row("alice", now - 100 + i) for i in range(5)])
    seen, cursor = [], None
    while True:
        query = {"limit": "2", **({"cursor": cursor} if cursor else {})}
        page = await (await gateway.get("/v1/usage/calls", params=query, headers=_auth(ADMIN))).json()
        seen += [row["ts"] for row in page["data"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == sorted(seen, reverse=True) and len(seen) == 5
    too_many = await gateway.get("/v1/usage/calls", params={"limit": "5000"}, headers=_auth(ADMIN))
    assert too_many.status == 400 and (await too_many.json())["error"]["param"] == "limit"


async def test_calls_are_filtered_by_model_status_and_period(gateway):
    now = time.time()
    _seed(gateway, [_row("alice", now - 50, model="m1"), _row("alice", now - 40, model="m2"),
                    _row("bob", now - 30, model="m1", status="failure"), _row("bob", now - 5000)])

    async def listed(**query) -> list[tuple]:
        page = await (await gateway.get("/v1/usage/calls", params=query, headers=_auth(ADMIN))).json()
        return [(r["resource"], r["model"], r["status"]) for r in page["data"]]

    assert await listed(model="m2") == [("alice", "m2", "success")]
    assert await listed(status="failure") == [("bob", "m1", "failure")]
    assert len(await listed(since=str(now - 100))) == 3
    assert await listed(until=str(now - 1000)) == [("bob", "m1", "success")]
    assert await listed(resource="alice", service_type="key", model="m1") == [("alice", "m1", "success")]


async def test_calls_export_as_csv(gateway):
    _seed(gateway, [_row("alice", time.time())])
    for kwargs in ({"params": {"format": "csv"}}, {"headers": {"Accept": "text/csv"}}):
        headers = {**_auth(ADMIN), **kwargs.get("headers", {})}
        reply = await gateway.get("/v1/usage/calls", params=kwargs.get("params"), headers=headers)
        assert reply.status == 200 and reply.content_type == "text/csv"
        [row] = list(csv.DictReader(io.StringIO(await reply.text())))
        assert (row["resource"], row["model"], row["prompt_tokens"]) == ("alice", "m1", "3")


async def test_a_key_lists_only_its_own_calls_and_the_admin_all(gateway, secret_of):
    now = time.time()
    _seed(gateway, [_row("alice", now - 2), _row("bob", now - 1)])
    own = await (await gateway.get("/v1/usage/calls", headers=_auth(secret_of["alice"]))).json()
    assert {r["resource"] for r in own["data"]} == {"alice"}
    other = await gateway.get("/v1/usage/calls", params={"resource": "bob"}, headers=_auth(secret_of["alice"]))
    assert other.status == 403
    everyone = await (await gateway.get("/v1/usage/calls", headers=_auth(ADMIN))).json()
    assert {r["resource"] for r in everyone["data"]} == {"alice", "bob"}
    assert (await gateway.get("/v1/usage/calls")).status == 401


def test_a_ledger_of_the_previous_format_gets_the_listing_index(tmp_path):
    ledger = Ledger(tmp_path / "l.sqlite3")
    ledger._writer.execute("DROP INDEX calls_resource_ts")
    ledger._writer.execute("PRAGMA user_version = 2")
    ledger.close()
    ledger = Ledger(tmp_path / "l.sqlite3")
    try:
        names = {r[0] for r in ledger.read("SELECT name FROM sqlite_master WHERE type = 'index'")}
        assert "calls_resource_ts" in names
        plan = " ".join(str(r) for r in ledger.read(
            "EXPLAIN QUERY PLAN SELECT rowid FROM calls WHERE resource = ? ORDER BY ts DESC", ["a"]))
        assert "calls_resource_ts" in plan
        assert list_calls(ledger, CallFilter(resource="a"))["data"] == []
    finally:
        ledger.close()


def test_usage_calls_command_prints_csv_and_json(tmp_path):
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    ledger = Ledger(data / "ledger.sqlite3")
    now = time.time()
    for i in range(3):
        ledger.record(_row("alice" if i else "bob", now - 10 + i))
    ledger.close()
    env = {"LLMFN_DATA_DIR": str(data)}
    out = llmfn("usage", "--calls", "--key", "alice", "--format", "csv", env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    rows = list(csv.DictReader(io.StringIO(out.stdout)))
    assert [r["resource"] for r in rows] == ["alice", "alice"]
    out = llmfn("usage", "--calls", "--limit", "1", "--format", "json", env=env, timeout=60)
    page = json.loads(out.stdout)
    assert [r["resource"] for r in page["data"]] == ["alice"] and page["next_cursor"]
    assert "--cursor" in out.stderr
    out = llmfn("usage", "--calls", "--cursor", page["next_cursor"], env=env, timeout=60)
    assert out.returncode == 0 and "alice" in out.stdout and "bob" in out.stdout
