"""``llmfn start-api`` and ``llmfn start-lambda`` with real HTTP clients and boto3."""
from __future__ import annotations

import base64
import http.client
import json
import os
import threading
import time
from urllib.parse import urlparse

import boto3
import pytest
from botocore.config import Config

from tests.support.cli import Server, wait_until
from tests.support.gateway import call

# every test here starts an llmfn command that serves the embedded model (its pool's workers)
pytestmark = pytest.mark.llama

APP = "tests/e2e/app/template.yaml"


@pytest.fixture(scope="module")
def api(model_cache):
    server = Server("start-api", "--template", APP, "--api-port", "0", "--gateway-port", "0",
                    ready="start-api", env={"LLMFN_CACHE_DIR": str(model_cache)})
    yield server
    assert server.stop() == 0


@pytest.fixture(scope="module")
def lam(model_cache):
    server = Server("start-lambda", "--template", APP, "--lambda-port", "0", "--gateway-port", "0",
                    ready="start-lambda", env={"LLMFN_CACHE_DIR": str(model_cache)})
    yield server
    assert server.stop() == 0


@pytest.fixture(scope="module")
def lambda_client(lam):
    return boto3.client("lambda", endpoint_url=lam.url, region_name="us-east-1",
                        aws_access_key_id="testing", aws_secret_access_key="testing",
                        config=Config(retries={"max_attempts": 0}, read_timeout=120))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_http_api_v2_event_and_response_mapping(api):
    reply = call(f"{api.url}/items/42?a=1&a=2&b=x", {"k": "v"}, method="POST",
                 headers={"Cookie": "c1=v1"})
    assert reply.status == 201
    assert reply.headers["x-route"] == "ANY /items/{id}"
    assert reply.headers.get_all("Set-Cookie") == ["a=1", "b=2"]
    body = reply.json()
    assert body["version"] == "2.0" and body["rawPath"] == "/items/42" and body["method"] == "POST"
    assert body["query"] == {"a": "1,2", "b": "x"} and body["pathParameters"] == {"id": "42"}
    assert json.loads(body["body"]) == {"k": "v"}


def test_rest_proxy_event_and_greedy_path(api):
    reply = call(f"{api.url}/rest/a/b/c", method="GET")
    assert reply.status == 201
    body = reply.json()
    assert body["version"] is None  # payload 1.0 has no version field
    assert body["pathParameters"] == {"proxy": "a/b/c"}


def test_plain_dict_gets_the_default_mapping(api):
    reply = call(f"{api.url}/dict", method="GET")
    assert reply.status == 200 and reply.headers["Content-Type"].startswith("application/json")
    assert reply.json() == {"hello": "world"}


def test_unknown_route_is_404_and_handler_error_is_502(api):
    assert call(f"{api.url}/nope", method="GET").status == 404
    reply = call(f"{api.url}/boom", {"x": 1}, method="POST")
    assert reply.status == 502 and reply.json() == {"message": "Internal server error"}


def test_streaming_response_arrives_in_parts(api):
    u = urlparse(api.url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
    conn.request("GET", "/stream")
    resp = conn.getresponse()
    assert resp.status == 200 and resp.getheader("content-type") == "text/plain"
    arrivals, data = [], b""
    while chunk := resp.read1(65536):
        arrivals.append(time.monotonic())
        data += chunk
    assert data == b"part0;part1;part2;part3;part4;"
    assert len(arrivals) >= 2  # streamed, not buffered into one body


def test_instance_is_reused_warm_then_replaced_after_idle(api):
    first = call(f"{api.url}/pid", method="GET").json()
    second = call(f"{api.url}/pid", method="GET").json()
    assert first["pid"] == second["pid"] and first["imported_at"] == second["imported_at"]
    assert first["request_id"] != second["request_id"]
    # PidFunction's idle_timeout is 2 s: the instance process exits, the next call cold-starts.
    wait_until(lambda: not _alive(first["pid"]), 20, step=0.2, message="the idle instance never exited")
    third = call(f"{api.url}/pid", method="GET").json()
    assert third["pid"] != first["pid"]
    line = api.wait_for(rf"REPORT RequestId: {third['request_id']}[^\n]*").group(0)
    assert "Init Duration" in line


def test_boto3_invoke(lambda_client):
    resp = lambda_client.invoke(FunctionName="PidFunction", Payload=b"{}", LogType="Tail")
    assert resp["StatusCode"] == 200 and "FunctionError" not in resp
    payload = json.loads(resp["Payload"].read())
    assert payload["function_name"] == "PidFunction"
    assert "REPORT RequestId" in base64.b64decode(resp["LogResult"]).decode()


def test_boto3_function_error(lambda_client):
    resp = lambda_client.invoke(FunctionName="BoomFunction", Payload=json.dumps({"x": 3}).encode())
    assert resp["FunctionError"] == "Unhandled"
    payload = json.loads(resp["Payload"].read())
    assert payload["errorType"] == "ValueError" and payload["errorMessage"] == "bad input: 3"


def test_boto3_unknown_function(lambda_client):
    with pytest.raises(lambda_client.exceptions.ResourceNotFoundException):
        lambda_client.invoke(FunctionName="Nope", Payload=b"{}")


def test_two_concurrent_invocations_run_on_two_instances(lambda_client):
    results = []

    def one():
        resp = lambda_client.invoke(FunctionName="SlowFunction", Payload=json.dumps({"seconds": 1.5}).encode())
        results.append(json.loads(resp["Payload"].read()))

    threads = [threading.Thread(target=one) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(results) == 2
    assert results[0]["pid"] != results[1]["pid"]


def test_invocation_token_expires_with_its_invocation(lambda_client):
    resp = lambda_client.invoke(FunctionName="LeakFunction", Payload=b"{}")
    leaked = json.loads(resp["Payload"].read())
    assert leaked["token"].startswith("llmfn-inv-")
    reply = call(f"{leaked['base_url']}/completions", {"model": "gemma3-270m", "prompt": "hi", "max_tokens": 1},
                 headers={"Authorization": f"Bearer {leaked['token']}"})
    assert reply.status == 401
    err = reply.json()["error"]
    assert err["type"] == "authentication_error" and err["code"] == "expired_token"
    assert leaked["token"] not in reply.body.decode()


def test_disallowed_model_is_refused(lambda_client):
    resp = lambda_client.invoke(FunctionName="ForbiddenFunction", Payload=b"{}")
    out = json.loads(resp["Payload"].read())
    assert out["status"] == 403 and out["type"] == "permission_error"
