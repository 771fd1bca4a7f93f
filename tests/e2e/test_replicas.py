"""Two ``llmfn serve`` replicas on one PostgreSQL database, one Redis and one S3
act as one service: quotas and budgets hold across them, a key made on one works on the
other, a deploy through one switches both, every S3 upload is delivered once,
and a replica killed mid-delivery loses no event."""
from __future__ import annotations

import collections
import json
import os
import secrets
import signal
import threading
import time
import uuid

import boto3
import pytest

from tests.support.cli import Server, lambda_client, llmfn, server_url, wait_until, write_project
from tests.support.gateway import MODEL, call

# every test here starts llmfn serve, which serves the embedded model (its pool's workers)
pytestmark = pytest.mark.llama

TEMPLATE = """
AWSTemplateFormatVersion: "2010-09-09"
Transform: AWS::Serverless-2016-10-31
Globals:
  Function: {Runtime: python3.11, CodeUri: src/, Timeout: 30}
Resources:
  Docs:
    Type: AWS::S3::Bucket
    Properties: {BucketName: %s}
  ProcessFunction:
    Type: AWS::Serverless::Function
    Properties:
      Handler: app.process
      Events:
        Upload:
          Type: S3
          Properties:
            Bucket: !Ref Docs
            Events: s3:ObjectCreated:*
  VersionedFunction:
    Type: AWS::Serverless::Function
    Properties:
      Handler: app.version
"""  # the bucket's name: s3_server outlives a test

# Logs each event with the replica that ran it (the instance's parent process); a key
# under slow/ runs long enough for its replica to be killed in the middle.
HANDLER = """
import json, os, time, urllib.parse

def process(event, context):
    key = urllib.parse.unquote_plus(event["Records"][0]["s3"]["object"]["key"])
    if key.startswith("slow/"):
        _log(key, "start")
        time.sleep(4)
    _log(key, "done")

def _log(key, phase):
    with open(os.environ["TEST_CALL_LOG"], "a") as f:
        f.write(json.dumps({"key": key, "phase": phase, "service": os.getppid()}) + "\\n")

def version(event, context):
    return {"code": "%s", "version": context.function_version}
"""

AWS = {"AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x", "AWS_DEFAULT_REGION": "us-east-1"}


class Replicas:
    """The same project served twice, each replica with a data dir of its own."""

    def __init__(self, tmp_path, model_cache, postgres_url, redis_url, s3_server):
        self.bucket = f"docs-{uuid.uuid4().hex[:8]}"
        self.project = write_project(tmp_path / "app", TEMPLATE % self.bucket, HANDLER % "v1")
        self.log = tmp_path / "calls.log"
        self.admin = "sk-llmfn-admin-" + secrets.token_hex(16)
        self.env = {"LLMFN_CACHE_DIR": str(model_cache), "LLMFN_DATABASE_URL": postgres_url,
                    "LLMFN_REDIS_URL": redis_url, "LLMFN_S3_ENDPOINT_URL": s3_server,
                    "LLMFN_ADMIN_KEY": self.admin, "LLMFN_S3_POLL_S": "0.3", "LLMFN_DELIVERY_LEASE_S": "2",
                    "LLMFN_RETRY_DELAY_S": "0.3", **AWS}
        self.tmp = tmp_path
        self.s3 = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1", aws_access_key_id="x",
                               aws_secret_access_key="x")
        self.s3.create_bucket(Bucket=self.bucket)
        self.deploys = f"deploys-{uuid.uuid4().hex[:8]}"
        self.s3.create_bucket(Bucket=self.deploys)
        self.s3_url = s3_server
        self.servers = {name: self.start(name) for name in ("a", "b")}
        for server in self.servers.values():
            server.wait_for(rf"S3 trigger: s3://{self.bucket}/")

    def start(self, name: str) -> Server:
        env_vars = self.tmp / f"env-{name}.json"
        env_vars.write_text(json.dumps({"Parameters": {"TEST_CALL_LOG": str(self.log)}}))
        # no hot reload: a replica may only learn of new code through the shared registry
        return Server("serve", "--template", str(self.project / "template.yaml"), "--gateway-port", "0",
                      "--api-port", "0", "--lambda-port", "0", "--data-dir", str(self.tmp / f"data-{name}"),
                      "--env-vars", str(env_vars), "--no-reload", ready="lambda api", env=self.env,
                      new_session=True)

    def url(self, name: str, server: str = "gateway") -> str:
        return server_url(self.servers[name], server)

    def calls(self, phase: str = "done") -> list[dict]:
        lines = [json.loads(line) for line in self.log.read_text().splitlines()] if self.log.exists() else []
        return [line for line in lines if line["phase"] == phase]

    def kill(self, name: str) -> None:
        os.killpg(self.servers[name].proc.pid, signal.SIGKILL)
        self.servers[name].proc.wait(10)

    def stop(self) -> None:
        for server in self.servers.values():
            if server.proc.poll() is None:
                server.stop()


@pytest.fixture
def replicas(tmp_path, model_cache, postgres_url, redis_url, s3_server):
    r = Replicas(tmp_path, model_cache, postgres_url, redis_url, s3_server)
    try:
        yield r
    finally:
        r.stop()


def _bearer(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


def _chat(url: str, key: str):
    return call(f"{url}/v1/chat/completions", {"model": MODEL, "max_tokens": 1,
                                               "messages": [{"role": "user", "content": "hi"}]},
                headers=_bearer(key))


def _invoke(url: str, key: str) -> dict:
    resp = lambda_client(url, key).invoke(FunctionName="VersionedFunction", Payload=b"{}")
    return json.loads(resp["Payload"].read())


def test_two_replicas_share_keys_quotas_deploys_and_deliver_each_event_once(replicas):
    a, b = replicas.url("a"), replicas.url("b")

    # A key made through one replica works on the other; its RPM holds across both.
    made = call(f"{a}/admin/keys", {"name": "shared", "rpm": 5}, headers=_bearer(replicas.admin))
    assert made.status == 201, made.body
    key = made.json()["key"]
    # at its first use: the other replica's gateway and Lambda API look an unknown key up
    assert call(f"{b}/v1/models", method="GET", headers=_bearer(key)).status == 200
    assert _invoke(replicas.url("b", "lambda api"), key)["code"] == "v1"
    statuses: list[int] = []
    threads = [threading.Thread(target=lambda u=u: statuses.append(_chat(u, key).status))
               for u in [a, b] * 10]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert collections.Counter(statuses) == {200: 5, 429: 15}

    # A daily token budget spent through one replica is spent for the other (a call is
    # admitted while some of the budget is left: this one leaves none).
    one_call = _chat(a, replicas.admin).json()["usage"]["total_tokens"]
    made = call(f"{a}/admin/keys", {"name": "budgeted", "daily_tokens": one_call},
                headers=_bearer(replicas.admin))
    budgeted = made.json()["key"]
    assert _chat(a, budgeted).status == 200
    refused = _chat(b, budgeted)
    assert refused.status == 429 and "budget" in refused.json()["error"]["message"].lower(), refused.body

    # Twenty uploads: twenty invocations in all, whichever replica ran each.
    for i in range(20):
        replicas.s3.put_object(Bucket=replicas.bucket, Key=f"docs/{i}.txt", Body=b"x")
    wait_until(lambda: len(replicas.calls()) >= 20, 60, message="not every upload was delivered")
    time.sleep(1.5)  # several more polls by both: nothing may come twice
    keys = [c["key"] for c in replicas.calls()]
    assert sorted(keys) == sorted(f"docs/{i}.txt" for i in range(20))

    # A deploy through one replica switches both.
    lam_a, lam_b = replicas.url("a", "lambda api"), replicas.url("b", "lambda api")
    assert _invoke(lam_b, key)["code"] == "v1"
    (replicas.project / "src" / "app.py").write_text(HANDLER % "v2")
    env = {**os.environ, **replicas.env}
    cp = llmfn("deploy", "--s3-bucket", replicas.deploys, "--endpoint", lam_a, "--s3-endpoint-url", replicas.s3_url,
               "--template", str(replicas.project / "template.yaml"), env=env)
    assert cp.returncode == 0, cp.stderr
    assert _invoke(lam_a, key)["code"] == "v2"
    wait_until(lambda: _invoke(lam_b, key)["code"] == "v2", 15, message="the other replica kept the old version")
    # and a rollback through the other switches the first back
    assert llmfn("rollback", "VersionedFunction", "--endpoint", lam_b, env=env).returncode == 0
    wait_until(lambda: _invoke(lam_a, key)["code"] == "v1", 15, message="the other replica missed the rollback")


def test_a_replica_killed_mid_delivery_loses_no_event(replicas):
    replicas.s3.put_object(Bucket=replicas.bucket, Key="slow/1.txt", Body=b"x")
    [started] = wait_until(lambda: replicas.calls("start"), 30, message="no replica ran the upload")
    running = next(n for n, server in replicas.servers.items() if server.proc.pid == started["service"])
    replicas.kill(running)  # with the event it was running
    survivor = replicas.servers["b" if running == "a" else "a"]
    wait_until(lambda: replicas.calls(), 30, message="the killed replica's event was never taken over")
    [done] = replicas.calls()  # once: the killed run never finished
    assert done["key"] == "slow/1.txt" and done["service"] == survivor.proc.pid
    assert survivor.proc.poll() is None
