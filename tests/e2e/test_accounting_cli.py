"""Accounting as a user sees it: REPORT lines and ledger rows agree, function
budgets from the template, ``llmfn usage`` and ``llmfn keys``, two gateways
sharing one limit through a real Redis, and the usage page in headless Chromium."""
from __future__ import annotations

import json
import subprocess
import threading
import time

import pytest

from runtime.accounting.ledger import Ledger
from tests.support.cli import Server, llmfn, need_binary, reports, result
from tests.support.gateway import call

APP = "tests/e2e/app/template.yaml"
MODEL = "gemma3-270m"


@pytest.mark.llama  # its llmfn commands serve the model
def test_ledger_rows_of_an_invocation_equal_its_report(env, tmp_path):
    cp = llmfn("invoke", "CallsFunction", "--template", APP, "-e", "-", stdin='{"n": 2}', env=env)
    result(cp)
    [rep] = reports(cp.stderr)
    ledger = Ledger(tmp_path / "data" / "ledger.sqlite3")
    rows = ledger.read("SELECT resource, service_type, prompt_tokens, completion_tokens FROM calls "
                       "WHERE invocation_id = ?", (rep["id"],))
    ledger.close()
    assert len(rows) == rep["calls"] == 3
    assert {(r[0], r[1]) for r in rows} == {("CallsFunction", "function")}
    assert (sum(r[2] for r in rows), sum(r[3] for r in rows)) == (rep["prompt"], rep["completion"])
    report = json.loads(llmfn("usage", "--function", "CallsFunction", "--json", env=env).stdout)
    assert report["totals"]["calls"] == 3
    assert report["totals"]["input_tokens"] == rep["prompt"]


@pytest.mark.llama  # its llmfn commands serve the model
def test_function_budget_from_the_template_survives_restarts(env):
    first = result(llmfn("invoke", "BudgetFunction", "--template", APP, env=env))
    assert first["before"] == 40 and first["after"] == 40 - first["used"]
    # Each invocation is a new gateway process: what was spent comes back from the ledger.
    # A budget admits calls while anything is left, so it runs out within four more calls.
    outcomes = [result(llmfn("invoke", "BudgetFunction", "--template", APP, env=env)) for _ in range(4)]
    admitted = [o for o in outcomes if "refused" not in o]
    assert [o["before"] for o in admitted] == [40 - sum(x["used"] for x in [first, *admitted][:i + 1])
                                               for i in range(len(admitted))]
    refused = outcomes[-1]
    assert refused["refused"] == "insufficient_quota" and "BudgetFunction" in refused["message"]
    assert refused["before"] == 0


def test_keys_cli_prints_the_secret_once(env):
    cp = llmfn("keys", "create", "ci-bot", "--models", MODEL, "--rpm", "10", env=env)
    secret = cp.stdout.strip()
    assert secret.startswith("sk-llmfn-") and cp.returncode == 0
    listing = llmfn("keys", "list", env=env).stdout
    assert "ci-bot" in listing and secret not in listing and "active" in listing
    assert llmfn("keys", "revoke", "ci-bot", env=env).returncode == 0
    assert "revoked" in llmfn("keys", "list", env=env).stdout
    again = llmfn("keys", "revoke", "ci-bot", env=env)
    assert again.returncode == 2 and "no active key" in again.stderr


@pytest.mark.llama  # its llmfn commands serve the model
def test_two_gateways_sharing_redis_hold_one_limit(env, redis_url):
    secret = llmfn("keys", "create", "shared", "--rpm", "5", env=env).stdout.strip()
    gateways = [Server("serve", "--gateway-port", "0", "--redis-url", redis_url, "--model", "embedded",
                       "--n-ctx", "512", ready="gateway", env=env) for _ in range(2)]
    try:
        replies = []

        def one(i):
            url = gateways[i % 2].url
            replies.append(call(f"{url}/v1/embeddings", {"model": MODEL, "input": f"text {i}"},
                                headers={"Authorization": f"Bearer {secret}"}))

        threads = [threading.Thread(target=one, args=(i,)) for i in range(14)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        statuses = [r.status for r in replies]
        assert statuses.count(200) == 5 and statuses.count(429) == 9, statuses
    finally:
        for gw in gateways:
            gw.stop()


@pytest.mark.llama  # its llmfn commands serve the model
def test_usage_page_in_headless_chromium_shows_the_cli_numbers(env, tmp_path):
    chromium = need_binary("chromium")
    gw = Server("serve", "--gateway-port", "0", "--model", "embedded", "--n-ctx", "512", ready="gateway",
                env={**env, "LLMFN_ADMIN_KEY": "adm"})
    try:
        for prompt in ("Hello", "One two three", "The sky is"):
            assert call(f"{gw.url}/v1/completions", {"model": MODEL, "prompt": prompt, "max_tokens": 4}).status == 200
        assert call(f"{gw.url}/v1/completions", {"model": MODEL, "prompt": "x", "top_p": 0}).status == 400
        time.sleep(0.5)  # the ledger writer's batch interval
        cli = json.loads(llmfn("usage", "--since", "7d", "--json", env=env).stdout)["totals"]
        dom = subprocess.run(
            [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             "--no-first-run", "--disable-background-networking", "--disable-component-update",
             "--disable-sync", f"--user-data-dir={tmp_path / 'chrome'}", "--virtual-time-budget=8000",
             "--dump-dom", f"{gw.url}/usage?key=adm&since=7d"],
            capture_output=True, text=True, timeout=120).stdout
    finally:
        gw.stop()
    assert 'data-state="ready"' in dom, dom[:2000]
    for element, value in (("total-calls", cli["calls"]), ("total-input-tokens", cli["input_tokens"]),
                           ("total-output-tokens", cli["output_tokens"]), ("total-failure", cli["failure"])):
        assert f'id="{element}" data-value="{value}"' in dom or _value(dom, element) == value, element
    assert cli["calls"] == 4 and cli["failure"] == 1
    assert 'id="chart-calls"' in dom and "<svg" in dom and 'id="table-models"' in dom


def _value(dom: str, element_id: str) -> int | None:
    import re
    m = re.search(rf'<[^>]*id="{element_id}"[^>]*>', dom)
    if not m:
        return None
    v = re.search(r'data-value="(\d+)"', m.group(0))
    return int(v.group(1)) if v else None
