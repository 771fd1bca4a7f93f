"""``llmfn serve`` with event triggers: S3 uploads (embedded S3, and an external
S3 that outlives a restart), retries, the on-failure destination, schedules."""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import boto3
import pytest

from tests.support.cli import Server, wait_until

# every test here starts an llmfn command that serves the embedded model (its pool's workers)
pytestmark = pytest.mark.llama

APP = Path(__file__).parent / "events_app"


def _lines(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []



def _has_objects(s3, bucket: str) -> bool:
    try:
        return "Contents" in s3.list_objects_v2(Bucket=bucket)
    except s3.exceptions.NoSuchBucket:
        return False


def _s3(url):
    return boto3.client("s3", endpoint_url=url, region_name="us-east-1",
                        aws_access_key_id="testing", aws_secret_access_key="testing")


def _serve(tmp_path, env, *extra, function_env=None):
    project = tmp_path / "app"
    if not project.exists():
        shutil.copytree(APP, project)
    # Functions see only what the template and --env-vars give them, never the service's environment.
    env_vars = tmp_path / "env.json"
    env_vars.write_text(json.dumps({"Parameters": {"TEST_CALL_LOG": str(tmp_path / "calls.log"),
                                                   **(function_env or {})}}))
    return Server("serve", "--template", str(project / "template.yaml"), "--gateway-port", "0", "--api-port", "0",
                  "--lambda-port", "0", "--data-dir", str(tmp_path / "data"), "--env-vars", str(env_vars),
                  *extra, ready="lambda api", env={"LLMFN_RETRY_DELAY_S": "0.3", "LLMFN_S3_POLL_S": "0.3", **env})


def test_uploads_retries_failures_and_schedules_on_the_embedded_s3(tmp_path, model_cache):
    log = tmp_path / "calls.log"
    server = _serve(tmp_path, {"LLMFN_CACHE_DIR": str(model_cache)})
    try:
        s3_url = server.wait_for(r"llmfn embedded S3 on (http://\S+)").group(1)
        server.wait_for(r"S3 trigger: s3://docs/docs/\*\.txt -> ProcessFunction")
        s3 = _s3(s3_url)
        for i in range(3):
            s3.put_object(Bucket="docs", Key=f"docs/note {i}.txt", Body=b"x" * (10 + i))
        s3.put_object(Bucket="docs", Key="docs/skip.md", Body=b"not matched: suffix")
        s3.put_object(Bucket="docs", Key="other/a.txt", Body=b"not matched: prefix")
        s3.put_object(Bucket="docs", Key="flaky/f.txt", Body=b"f")
        s3.put_object(Bucket="docs", Key="fail/bad.txt", Body=b"b")

        wait_until(lambda: len([c for c in _lines(log) if c["fn"] == "process"]) >= 3, timeout=40.0)
        wait_until(lambda: any(c["fn"] == "flaky" and c["attempt"] == 3 for c in _lines(log)), timeout=40.0)
        wait_until(lambda: len([c for c in _lines(log) if c["fn"] == "fail"]) >= 3, timeout=40.0)
        wait_until(lambda: _has_objects(s3, "failures-bucket"), timeout=40.0)  # written after the last retry
        wait_until(lambda: len([c for c in _lines(log) if c["fn"] == "tick"]) >= 2, timeout=20)
        time.sleep(1.5)  # a few more polls: nothing may be delivered twice

        calls = _lines(log)
        processed = sorted(c["key"] for c in calls if c["fn"] == "process")
        assert processed == ["docs/note 0.txt", "docs/note 1.txt", "docs/note 2.txt"]
        assert {c["event_name"] for c in calls if c["fn"] == "process"} == {"ObjectCreated:Put"}
        outputs = sorted(o["Key"] for o in s3.list_objects_v2(Bucket="docs", Prefix="outputs/")["Contents"])
        assert outputs == ["outputs/note 0.txt.len", "outputs/note 1.txt.len", "outputs/note 2.txt.len"]
        assert s3.get_object(Bucket="docs", Key="outputs/note 2.txt.len")["Body"].read() == b"12"

        flaky = [c["attempt"] for c in calls if c["fn"] == "flaky"]
        assert flaky == [1, 2, 3]  # failed twice, retried twice, delivered once

        assert len([c for c in calls if c["fn"] == "fail"]) == 3  # the first try and two retries
        [failure] = s3.list_objects_v2(Bucket="failures-bucket")["Contents"]
        assert failure["Key"].startswith("FailFunction/")
        record = json.loads(s3.get_object(Bucket="failures-bucket", Key=failure["Key"])["Body"].read())
        assert record["requestContext"]["condition"] == "RetriesExhausted"
        assert record["requestContext"]["approximateInvokeCount"] == 3
        assert record["requestPayload"]["Records"][0]["s3"]["object"]["key"] == "fail/bad.txt"
        assert record["responsePayload"]["errorType"] == "ValueError"
        assert "cannot process fail/bad.txt" in record["responsePayload"]["errorMessage"]

        ticks = [c for c in calls if c["fn"] == "tick"]
        assert all(t["source"] == "aws.events" and t["detail_type"] == "Scheduled Event" for t in ticks)
        assert len({t["time"] for t in ticks}) == len(ticks)
    finally:
        assert server.stop() == 0


def test_each_upload_is_delivered_once_across_a_restart(tmp_path, model_cache, s3_server):
    """An external S3 (moto's server standing in for MinIO or AWS) keeps its objects
    while the service restarts; the delivery record keeps what was delivered."""
    log = tmp_path / "calls.log"
    env = {"LLMFN_CACHE_DIR": str(model_cache)}
    s3 = _s3(s3_server)
    # An external S3 gets its credentials from the operator, not from the service's own.
    creds = {"AWS_ACCESS_KEY_ID": "function", "AWS_SECRET_ACCESS_KEY": "function-secret"}
    server = _serve(tmp_path, env, "--s3-endpoint-url", s3_server, function_env=creds)
    try:
        server.wait_for(r"S3 trigger: s3://docs/docs/")
        s3.put_object(Bucket="docs", Key="docs/before.txt", Body=b"one")
        wait_until(lambda: any(c["fn"] == "process" for c in _lines(log)), timeout=40.0)
    finally:
        assert server.stop() == 0
    s3.put_object(Bucket="docs", Key="docs/while-down.txt", Body=b"two")
    server = _serve(tmp_path, env, "--s3-endpoint-url", s3_server, function_env=creds)
    try:
        s3.put_object(Bucket="docs", Key="docs/after.txt", Body=b"three")
        wait_until(lambda: len([c for c in _lines(log) if c["fn"] == "process"]) >= 3, timeout=40.0)
        time.sleep(1.5)
    finally:
        assert server.stop() == 0
    processed = sorted(c["key"] for c in _lines(log) if c["fn"] == "process")
    assert processed == ["docs/after.txt", "docs/before.txt", "docs/while-down.txt"]
    outputs = [o["Key"] for o in s3.list_objects_v2(Bucket="docs", Prefix="outputs/")["Contents"]]
    assert len(outputs) == 3
