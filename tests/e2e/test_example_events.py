"""The example app under ``llmfn serve``: an upload longer than the model's
context is summarized in rounds into summaries/, and the daily digest reads
every resource's usage."""
from __future__ import annotations

import json

import boto3
import pytest
from botocore.config import Config

from tests.support.cli import ROOT, Server, wait_until

# every test here starts an llmfn command that serves the embedded model (its pool's workers)
pytestmark = pytest.mark.llama

WORDS = ("river", "mountain", "village", "harvest", "winter", "market", "bridge", "festival")


def _document(sentences: int) -> str:
    return " ".join(f"The {WORDS[i % 8]} of the valley changed in year {1900 + i}." for i in range(sentences))


def test_long_upload_is_summarized_and_the_digest_sees_it(tmp_path, model_cache):
    server = Server("serve", "--template", str(ROOT / "template.yaml"), "--gateway-port", "0", "--api-port", "0",
                    "--lambda-port", "0", "--data-dir", str(tmp_path / "data"), ready="lambda api",
                    env={"LLMFN_CACHE_DIR": str(model_cache), "LLMFN_S3_POLL_S": "0.3"})
    try:
        s3_url = server.wait_for(r"llmfn embedded S3 on (http://\S+)").group(1)
        lambda_url = server.wait_for(r"llmfn lambda api on (http://\S+)").group(1)
        server.wait_for(r"S3 trigger: s3://llmfn-docs/docs/")
        s3 = boto3.client("s3", endpoint_url=s3_url, region_name="us-east-1",
                          aws_access_key_id="x", aws_secret_access_key="x")
        text = _document(420)  # ~22,000 characters: far more than the 4096-token context
        assert len(text) > 20_000
        s3.put_object(Bucket="llmfn-docs", Key="docs/valley history.txt", Body=text.encode())
        [summary] = wait_until(
            lambda: s3.list_objects_v2(Bucket="llmfn-docs", Prefix="summaries/").get("Contents"), 240, step=0.5)
        assert summary["Key"] == "summaries/valley history.txt"
        line = server.wait_for(r"summarized s3://llmfn-docs/docs/valley history\.txt \((\d+) chars, (\d+) round").group(0)
        assert int(line.split("(")[1].split(" ")[0]) == len(text)
        assert int(line.split(", ")[1].split(" ")[0]) >= 2  # pieces first, then their summaries

        client = boto3.client("lambda", endpoint_url=lambda_url, region_name="us-east-1",
                              aws_access_key_id="x", aws_secret_access_key="x",
                              config=Config(retries={"max_attempts": 0}, read_timeout=120))
        event = {"version": "0", "detail-type": "Scheduled Event", "source": "aws.events",
                 "time": "2026-11-21T00:05:00Z", "detail": {}}
        resp = client.invoke(FunctionName="UsageDigestFunction", Payload=json.dumps(event).encode())
        assert "FunctionError" not in resp, resp["Payload"].read()
        digest = json.loads(resp["Payload"].read())
        summarizer = [r for r in digest["resources"] if r.startswith("function SummarizerFunction:")]
        assert summarizer and digest["totals"]["calls"] >= 3
        stored = json.loads(s3.get_object(Bucket="llmfn-docs", Key="digests/2026-11-21.json")["Body"].read())
        assert stored["totals"] == digest["totals"]
    finally:
        assert server.stop() == 0
