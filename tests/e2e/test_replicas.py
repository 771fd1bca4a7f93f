"""Two ``llmfn serve`` replicas on one PostgreSQL database and one S3 act as one
service: each upload is delivered once in all, a deploy or rollback through one
switches both, and a replica killed mid-delivery loses no event."""
from __future__ import annotations

import json
import os
import signal
import time
import uuid

import boto3
import pytest

from tests.support.cli import Server, lambda_client, llmfn, server_url, wait_until, write_project

# every test here starts llmfn commands that serve the embedded model (its pool's workers)
pytestmark = pytest.mark.llama

TEMPLATE = """
AWSTemplateFormatVersion: "2010-09-09"
Transform: AWS::Serverless-2016-10-31
Resources:
  Docs:
    Type: AWS::S3::Bucket
    Properties: {BucketName: %s}
  Process:
    Type: AWS::Serverless::Function
    Properties:
      CodeUri: src/
      Handler: app.handler
      Timeout: 30
      Events:
        Upload:
          Type: S3
          Properties: {Bucket: !Ref Docs, Events: "s3:ObjectCreated:*"}
"""

# Logs which replica ran it (its parent process); a key under slow/ runs long
# enough for its replica to be killed in the middle.
HANDLER = """
import json, os, time, urllib.parse

def handler(event, context):
    if "Records" not in event:
        return "%s"
    key = urllib.parse.unquote_plus(event["Records"][0]["s3"]["object"]["key"])
    if key.startswith("slow/"):
        _log(key, "start")
        time.sleep(4)
    _log(key, "done")
    return "ok"

def _log(key, phase):
    with open(os.environ["CALLS"], "a") as f:
        f.write(json.dumps({"key": key, "phase": phase, "service": os.getppid()}) + "\\n")
"""


def _calls(log, phase: str = "done") -> list[dict]:
    lines = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    return [line for line in lines if line["phase"] == phase]


def _replica(project, name: str, env: dict) -> Server:
    return Server("serve", "--template", str(project / "template.yaml"), "--gateway-port", "0", "--api-port", "0",
                  "--lambda-port", "0", "--data-dir", str(project / f"data-{name}"), "--no-reload",
                  "--env-vars", str(project / "env.json"), ready="lambda api", env=env, new_session=True)


def _which(client) -> str:
    resp = client.invoke(FunctionName="Process", Payload=b"{}")
    return json.loads(resp["Payload"].read())


def test_two_replicas_deliver_each_upload_once_follow_each_others_deploys_and_survive_one_dying(
        tmp_path, model_cache, s3_server, postgres_url):
    bucket, deploys = f"docs-{uuid.uuid4().hex[:8]}", f"deploys-{uuid.uuid4().hex[:8]}"
    project = write_project(tmp_path, TEMPLATE % bucket, HANDLER % "v1")
    log = tmp_path / "calls.log"
    (project / "env.json").write_text(json.dumps({"Parameters": {"CALLS": str(log)}}))
    env = {"LLMFN_CACHE_DIR": str(model_cache), "LLMFN_DATABASE_URL": postgres_url, "LLMFN_S3_ENDPOINT_URL": s3_server,
           "LLMFN_S3_POLL_S": "0.3", "LLMFN_DELIVERY_LEASE_S": "2"}
    replicas = {name: _replica(project, name, env) for name in ("a", "b")}
    s3 = boto3.client("s3", endpoint_url=s3_server)
    try:
        for server in replicas.values():
            server.wait_for(rf"S3 trigger: s3://{bucket}/")
        for i in range(20):
            s3.put_object(Bucket=bucket, Key=f"docs/{i}.txt", Body=b"x")
        wait_until(lambda: len(_calls(log)) >= 20, timeout=60)
        time.sleep(1.5)  # a few more polls of both replicas: nothing may be delivered twice
        assert sorted(c["key"] for c in _calls(log)) == sorted(f"docs/{i}.txt" for i in range(20))

        # a deploy through one replica switches the other (which fetches the bundle from S3)
        clients = {name: lambda_client(server_url(server, "lambda api")) for name, server in replicas.items()}
        s3.create_bucket(Bucket=deploys)
        (project / "src" / "app.py").write_text(HANDLER % "v2")
        deploy = llmfn("deploy", "--s3-bucket", deploys, "--endpoint", server_url(replicas["a"], "lambda api"),
                       "--s3-endpoint-url", s3_server, "--template", str(project / "template.yaml"),
                       env={**env, "LLMFN_DATA_DIR": str(project / "data-a")})
        assert deploy.returncode == 0, deploy.stderr
        assert _which(clients["a"]) == "v2"
        wait_until(lambda: _which(clients["b"]) == "v2", timeout=20, message="replica b is not on version 2")
        rollback = llmfn("rollback", "Process", "--endpoint", server_url(replicas["b"], "lambda api"),
                         env={**env, "LLMFN_DATA_DIR": str(project / "data-b")})
        assert rollback.returncode == 0, rollback.stderr
        wait_until(lambda: _which(clients["a"]) == "v1", timeout=20, message="replica a did not roll back")

        # the replica running a slow event is killed: the other takes it over after its lease
        s3.put_object(Bucket=bucket, Key="slow/1.txt", Body=b"x")
        [started] = wait_until(lambda: _calls(log, "start"), timeout=30)
        running = next(name for name, server in replicas.items() if server.proc.pid == started["service"])
        os.killpg(replicas[running].proc.pid, signal.SIGKILL)
        replicas[running].proc.wait(30)
        survivor = replicas["b" if running == "a" else "a"]
        wait_until(lambda: [c for c in _calls(log) if c["key"] == "slow/1.txt"], timeout=30,
                   message="the killed replica's event was not taken over")
        [done] = [c for c in _calls(log) if c["key"] == "slow/1.txt"]
        assert done["service"] == survivor.proc.pid
    finally:
        for server in replicas.values():
            if server.proc.poll() is None:
                server.stop()
