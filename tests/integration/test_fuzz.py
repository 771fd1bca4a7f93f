"""Generated requests at every route of ``/openapi.json`` (schemathesis, valid
and invalid bodies) of a real ``llmfn serve``: none gets a 5xx, and the
service and its worker live through all of them.

The served model's name is filled into most bodies (so the model really runs)
and ``max_tokens`` is kept small, so the run fits CI on two cores.
"""
from __future__ import annotations

import collections
import re

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from tests.support.cli import Server
from tests.support.gateway import MODEL, call

pytestmark = [pytest.mark.llama, pytest.mark.timeout(900)]

ADMIN = "fuzz-admin-key"  # a test secret: the fuzzer reaches the admin routes too
# Examples per operation and generation mode: routes that run the model get fewer,
# the others more; about 1,700 requests in all.
EXAMPLES, MODEL_EXAMPLES = 120, 20
MAX_TOKENS = 4
SENT: collections.Counter = collections.Counter()  # requests per (method, path)
GENERATING = {"/v1/chat/completions", "/v1/completions"}
RUNS_THE_MODEL = GENERATING | {"/v1/embeddings", "/score", "/v1/score", "/rerank", "/v1/rerank", "/v2/rerank"}


@pytest.fixture(scope="module")
def fuzzed(model_cache, tmp_path_factory):
    env = {"LLMFN_CACHE_DIR": str(model_cache), "LLMFN_DATA_DIR": str(tmp_path_factory.mktemp("fuzz")),
           "LLMFN_ADMIN_KEY": ADMIN}
    server = Server("serve", "--gateway-port", "0", "--model", "embedded", "--n-ctx", "256", "--slots", "2",
                    "--max-workers", "1", ready="gateway", env=env)
    try:
        yield server
    finally:
        server.stop()


def _aimed(case) -> None:
    """Most bodies name the served model (a quarter keep the generated name, an
    unknown model); generating ones ask for a few tokens at most."""
    body = case.body
    if not isinstance(body, dict):
        return
    if "model" in body and len(str(body["model"])) % 4:
        body["model"] = MODEL
    if case.path in GENERATING:
        for key in ("max_tokens", "max_completion_tokens"):
            value = body.get(key, MAX_TOKENS)
            if isinstance(value, int) and not isinstance(value, bool) and value > MAX_TOKENS:
                body[key] = MAX_TOKENS
        body.setdefault("max_tokens", MAX_TOKENS)


def _send(gw, case, failures: list) -> None:
    _aimed(case)
    response = case.call(base_url=gw.url, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=120)
    SENT[(case.method.upper(), case.path)] += 1
    if response.status_code >= 500:
        failures.append((response.status_code, case.method, case.path, case.body, response.text[:300]))
    elif response.status_code >= 400 and "json" in response.headers.get("content-type", ""):
        error = response.json().get("error") if isinstance(response.json(), dict) else None
        if error is not None and set(error) != {"message", "type", "param", "code"}:
            failures.append(("shape", case.method, case.path, case.body, response.text[:300]))


def _fuzz(gw, strategy, examples: int, failures: list) -> None:
    # Failures are collected, not raised: no shrinking, and every 5xx is reported at once.
    @settings(max_examples=examples, deadline=None, database=None, derandomize=True,
              phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    @given(strategy)
    def run(case):
        _send(gw, case, failures)
    run()


def test_no_generated_request_gets_a_server_error(fuzzed):
    schema = schemathesis.openapi.from_url(f"{fuzzed.url}/openapi.json")
    SENT[("GET", "/openapi.json")] += 1  # schemathesis reads the document; it has nothing to vary
    failures: list = []
    for result in schema.get_all_operations():
        operation = result.ok()
        examples = MODEL_EXAMPLES if operation.path in RUNS_THE_MODEL else EXAMPLES
        _fuzz(fuzzed, operation.as_strategy(generation_mode=GenerationMode.POSITIVE), examples, failures)
        try:
            _fuzz(fuzzed, operation.as_strategy(generation_mode=GenerationMode.NEGATIVE), examples, failures)
        except Unsatisfiable:
            pass  # nothing to make invalid (a GET without parameters)
    assert not failures, f"{len(failures)} bad responses, first: {failures[:5]}"


def test_every_route_was_fuzzed_and_the_gateway_and_its_worker_live(fuzzed):
    doc = call(f"{fuzzed.url}/openapi.json", method="GET").json()
    routes = {(method.upper(), path) for path, ops in doc["paths"].items() for method in ops}
    assert routes - set(SENT) == set(), "routes the fuzzer never reached"
    assert sum(SENT.values()) >= 1000, SENT
    assert fuzzed.proc.poll() is None, fuzzed.stderr[-3000:]
    assert call(f"{fuzzed.url}/health", method="GET", timeout=10).status == 200
    reply = call(f"{fuzzed.url}/v1/completions", {"model": MODEL, "prompt": "Hello", "max_tokens": 2},
                 headers={"Authorization": f"Bearer {ADMIN}"})
    assert reply.status == 200, reply.body
    # The one worker started once and was never replaced: nothing killed it.
    metrics = call(f"{fuzzed.url}/metrics", method="GET").body.decode()
    starts = re.search(rf'llmfn_cold_starts_total{{model="{MODEL}"}} (\S+)', metrics)
    assert starts and float(starts.group(1)) == 1.0, starts
    pools = call(f"{fuzzed.url}/admin/pools", method="GET", headers={"Authorization": f"Bearer {ADMIN}"})
    assert pools.json()[MODEL]["workers"].get("warm", 0) >= 1
