"""What ``llmfn serve`` refuses to deploy, and what a function is handed: a bad
registration is a 400 naming the field while the current version keeps serving;
bundles past their caps or with entries escaping the bundle are refused; a bad
client context is a 400 and the instance lives on; a function's environment
holds none of the service's secrets. All against a real ``serve`` process."""
from __future__ import annotations

import base64
import io
import json
import os
import shutil
import urllib.error
import urllib.request
import zipfile

import boto3
import pytest
from botocore.exceptions import ClientError

from runtime.functions.deployments import sha256_of, zip_dir
from tests.support.cli import lambda_client, serve_project, server_url, write_project

# every test here starts an llmfn command that serves the embedded model (its pool's workers)
pytestmark = pytest.mark.llama

ADMIN_KEY = "admin-key-for-the-deploy-tests"

TEMPLATE = """
AWSTemplateFormatVersion: "2010-09-09"
Transform: AWS::Serverless-2016-10-31
Resources:
  Target:
    Type: AWS::Serverless::Function
    Properties:
      CodeUri: src/
      Handler: app.handler
      Timeout: 30
      Environment:
        Variables: {GREETING: from-the-template}
      Events:
        Env:
          Type: HttpApi
          Properties: {Path: /env, Method: GET}
"""

HANDLER = """
import os

def handler(event, context):
    if event.get("rawPath") == "/env":
        return {"statusCode": 200, "body": __import__("json").dumps(dict(os.environ))}
    return {"code": "%s", "pid": os.getpid(), "client_context": context.client_context}
"""


@pytest.fixture
def project(tmp_path):
    write_project(tmp_path, TEMPLATE, HANDLER % "v1")
    return tmp_path





def _invoke(client, **kw):
    resp = client.invoke(FunctionName="Target", Payload=b"{}", **kw)
    assert "FunctionError" not in resp
    return json.loads(resp["Payload"].read())


def _zip(entries: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return buf.getvalue()


class Registry:
    """Uploads bundles to the embedded S3 and registers them as ``llmfn deploy`` does."""

    def __init__(self, server):
        self.lambda_url = server_url(server, "lambda api")
        self.s3 = boto3.client("s3", endpoint_url=server_url(server, "embedded S3"), region_name="us-east-1",
                               aws_access_key_id="x", aws_secret_access_key="x")
        self.s3.create_bucket(Bucket="deploys")

    def register(self, bundle: bytes, config: dict) -> tuple[int, dict]:
        sha = sha256_of(bundle)
        self.s3.put_object(Bucket="deploys", Key=f"llmfn/functions/Target/{sha}.zip", Body=bundle)
        body = {"bucket": "deploys", "functions": {"Target": {
            "key": f"llmfn/functions/Target/{sha}.zip", "sha256": sha, "config": config, "layers": []}}}
        return self.post(body)

    def post(self, body, path: str = "/llmfn/deployments", method: str = "POST") -> tuple[int, dict]:
        req = urllib.request.Request(f"{self.lambda_url}{path}", method=method, data=json.dumps(body).encode(),
                                     headers={"Authorization": f"Bearer {ADMIN_KEY}",
                                              "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read())


GOOD_CONFIG = {"Handler": "app.handler", "Timeout": 30, "MemorySize": 128, "Environment": {}}


def test_bad_deployments_are_refused_and_the_current_version_keeps_serving(project, model_cache):
    env = {"LLMFN_CACHE_DIR": str(model_cache), "LLMFN_ADMIN_KEY": ADMIN_KEY,
           "LLMFN_BUNDLE_MAX_BYTES": "4096", "LLMFN_BUNDLE_MAX_ENTRIES": "20",
           "LLMFN_BUNDLE_MAX_UNZIPPED_BYTES": "100000"}
    server = serve_project(project, env)
    try:
        client, registry = lambda_client(server_url(server, "lambda api")), Registry(server)
        assert _invoke(client)["code"] == "v1"
        # The new code is built beside the served CodeUri: an edit there would be hot-reloaded.
        v2_src = project / "v2"
        shutil.copytree(project / "src", v2_src)
        (v2_src / "app.py").write_text(HANDLER % "v2")
        v2 = zip_dir(v2_src)

        # A config the template's model would refuse (this one broke every invoke until a rollback).
        status, body = registry.register(v2, {**GOOD_CONFIG, "Timeout": "x"})
        assert status == 400 and body["__type"] == "InvalidParameterValueException"
        assert "Resources.Target.Properties.Timeout" in body["Message"]
        for config, field in [({**GOOD_CONFIG, "MemorySize": 1}, "MemorySize"),
                              ({**GOOD_CONFIG, "Environment": {"BAD NAME": "x"}}, "Environment"),
                              ({**GOOD_CONFIG, "Environment": {"N": 1}}, "Environment.N"),
                              ({**GOOD_CONFIG, "Handler": "app;rm"}, "Handler"),
                              ({**GOOD_CONFIG, "Role": "admin"}, "Role")]:
            status, body = registry.register(v2, config)
            assert status == 400 and field in body["Message"], (config, body)

        # Bundles past their caps, or with an entry that escapes the bundle's folder.
        app = (v2_src / "app.py").read_bytes()
        refused = {
            "4096": _zip({"app.py": app, "blob.bin": os.urandom(8000)}),
            "entries": _zip({"app.py": app, **{f"f{i}.txt": b"" for i in range(30)}}),
            "unzips to more than 100000": _zip({"app.py": app, "bomb.bin": bytes(2_000_000)}),
            "escapes": _zip({"app.py": app, "../../escaped.py": b"x"}),
        }
        for reason, bundle in refused.items():
            status, body = registry.register(bundle, GOOD_CONFIG)
            assert status == 400 and reason in body["Message"], (reason, body)
        assert not list(project.rglob("escaped.py"))
        assert registry.post({"bucket": "deploys", "functions": []})[0] == 400
        assert registry.post({"functions": {}})[0] == 400
        stranger = {"Stranger": {"key": "k", "sha256": "0" * 64}}
        status, body = registry.post({"bucket": "deploys", "functions": stranger})
        assert status == 400 and "not in the template: Stranger" in body["Message"]

        for body in [{"FunctionVersion": "abc"}, {"FunctionVersion": "99"}, []]:
            status, _ = registry.post(body, "/2015-03-31/functions/Target/aliases/live", "PUT")
            assert status == 400, body

        assert _invoke(client)["code"] == "v1"  # nothing changed
        assert registry.register(v2, GOOD_CONFIG)[0] == 200  # and a good deploy still goes through
        assert _invoke(client)["code"] == "v2"
    finally:
        assert server.stop() == 0
    assert "Traceback" not in server.stderr


def _context(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def test_a_bad_client_context_is_a_400_and_the_instance_lives_on(project, model_cache):
    server = serve_project(project, {"LLMFN_CACHE_DIR": str(model_cache)})
    try:
        client = lambda_client(server_url(server, "lambda api"))
        pid = _invoke(client)["pid"]
        for bad in [_context(b'{"custom": {}}\r\nX-Injected: yes'), _context(b"\r\n"), "not base64!",
                    _context(b"[1, 2]"), _context(b"\xff\xfe"), _context(b"{" * 5000)]:
            with pytest.raises(ClientError) as err:
                client.invoke(FunctionName="Target", Payload=b"{}", ClientContext=bad)
            assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
            assert err.value.response["Error"]["Code"] == "InvalidRequestContentException"
        # Line breaks inside JSON strings reach the handler intact, and the same instance serves it.
        good = {"custom": {"note": "line one\r\nline two"}, "client": {"app": "é"}}
        out = _invoke(client, ClientContext=_context(json.dumps(good).encode()))
        assert out["client_context"] == good and out["pid"] == pid
        assert _invoke(client)["pid"] == pid
    finally:
        assert server.stop() == 0


def test_a_function_gets_none_of_the_services_secrets(project, model_cache):
    secrets = {"LLMFN_ADMIN_KEY": "sk-admin-secret-value", "LLMFN_API_KEYS": "sk-static-key-one",
               "AWS_ACCESS_KEY_ID": "AKIASERVICEOWNKEY", "AWS_SECRET_ACCESS_KEY": "service-own-aws-secret",
               "AWS_SESSION_TOKEN": "service-own-session-token", "LLMFN_FAILURE_DESTINATION": "s3://private/x"}
    server = serve_project(project, {"LLMFN_CACHE_DIR": str(model_cache), **secrets})
    try:
        url = server_url(server, "http api")
        with urllib.request.urlopen(f"{url}/env", timeout=60) as resp:
            env = json.loads(resp.read())
    finally:
        assert server.stop() == 0
    dump = json.dumps(env)
    assert not [value for value in secrets.values() if value in dump]
    assert not [name for name in env if name.startswith("LLMFN_")]
    assert env["GREETING"] == "from-the-template"
    assert env["AWS_LAMBDA_FUNCTION_NAME"] == "Target" and env["_HANDLER"] == "app.handler"
    assert env["OPENAI_BASE_URL"].endswith("/v1") and env["OPENAI_API_KEY"]  # the invocation's own
