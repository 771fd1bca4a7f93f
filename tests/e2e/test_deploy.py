"""``llmfn serve`` + ``llmfn deploy`` / ``rollback``: zero-downtime version swaps
with the embedded S3, as a user runs them."""
from __future__ import annotations

import json
import re
import threading

import boto3
import pytest

from tests.support.cli import lambda_client, llmfn, serve_project, server_url, write_project

# every test here starts an llmfn command that serves the embedded model (its pool's workers)
pytestmark = pytest.mark.llama

TEMPLATE = """
AWSTemplateFormatVersion: "2010-09-09"
Transform: AWS::Serverless-2016-10-31
Resources:
  VersionedFunction:
    Type: AWS::Serverless::Function
    Properties:
      CodeUri: src/
      Handler: app.handler
      Runtime: python3.11
      Timeout: 30
      Events:
        Which:
          Type: HttpApi
          Properties: {Path: /which, Method: GET}
"""

HANDLER = """
import time

def handler(event, context):
    time.sleep(float((event or {}).get("sleep", 0)))
    return {"code": "%s", "version": context.function_version}
"""


@pytest.fixture
def project(tmp_path):
    write_project(tmp_path, TEMPLATE, HANDLER % "v1")
    return tmp_path





def _invoke(client, event=None):
    resp = client.invoke(FunctionName="VersionedFunction", Payload=json.dumps(event or {}).encode())
    return json.loads(resp["Payload"].read())


def test_deploy_swaps_versions_without_dropping_in_flight_work(project, model_cache):
    # The CLI finds the admin key that serve created in the data dir, as on the service's machine.
    env = {"LLMFN_CACHE_DIR": str(model_cache), "LLMFN_DATA_DIR": str(project / "data")}
    server = serve_project(project, env)
    try:
        lambda_url, s3_url = server_url(server, "lambda api"), server_url(server, "embedded S3")
        client = lambda_client(lambda_url)
        boto3.client("s3", endpoint_url=s3_url, region_name="us-east-1", aws_access_key_id="x",
                     aws_secret_access_key="x").create_bucket(Bucket="deploys")
        assert _invoke(client)["code"] == "v1"
        deploy = ["deploy", "--s3-bucket", "deploys", "--endpoint", lambda_url, "--s3-endpoint-url", s3_url,
                  "--template", str(project / "template.yaml")]
        env_s3 = {**env, "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x", "AWS_DEFAULT_REGION": "us-east-1"}

        slow = {}
        t = threading.Thread(target=lambda: slow.update(r=_invoke(client, {"sleep": 3})))
        t.start()
        server.wait_for(r"START RequestId: \S+ Version: 1\n(?![\s\S]*END)")  # the slow one is running
        (project / "src" / "app.py").write_text(HANDLER % "v2")
        cp = llmfn(*deploy, env=env_s3)
        assert cp.returncode == 0, cp.stderr
        assert re.search(r"VersionedFunction\s+version 2\s+updated", cp.stderr)
        t.join(60)
        assert slow["r"] == {"code": "v1", "version": "1"}  # in flight: finished on the old code
        assert _invoke(client) == {"code": "v2", "version": "2"}  # next one: the new code

        again = llmfn(*deploy, env=env_s3)
        assert "unchanged" in again.stderr and "uploaded 0 new bundle" in again.stderr

        assert llmfn("rollback", "VersionedFunction", "--endpoint", lambda_url, env=env).returncode == 0
        assert _invoke(client)["code"] == "v1"
        assert llmfn("rollback", "VersionedFunction", "--to", "2", "--endpoint", lambda_url,
                     env=env).returncode == 0
        assert _invoke(client)["code"] == "v2"

        (project / "src" / "app.py").rename(project / "src" / "renamed.py")  # the handler is gone
        bad = llmfn(*deploy, env=env_s3)
        assert bad.returncode == 2 and "app.py" in bad.stderr
        assert _invoke(client)["code"] == "v2"  # nothing changed
    finally:
        assert server.stop() == 0
    # A restarted service comes back on the deployed version.
    (project / "src" / "renamed.py").rename(project / "src" / "app.py")
    (project / "src" / "app.py").write_text(HANDLER % "template-again")
    server = serve_project(project, env)
    try:
        assert _invoke(lambda_client(server_url(server, "lambda api"))) == {"code": "v2", "version": "2"}
    finally:
        server.stop()
