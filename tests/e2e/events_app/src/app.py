"""Event-triggered test functions; each appends what it saw to $TEST_CALL_LOG."""
import json
import os
import urllib.parse

import boto3


def _log(**fields):
    with open(os.environ["TEST_CALL_LOG"], "a") as f:
        f.write(json.dumps(fields) + "\n")


def _s3():
    return boto3.client("s3", endpoint_url=os.environ.get("AWS_ENDPOINT_URL_S3"))


def _object(event):
    record = event["Records"][0]
    return record["s3"]["bucket"]["name"], urllib.parse.unquote_plus(record["s3"]["object"]["key"])


def process(event, context):
    bucket, key = _object(event)
    body = _s3().get_object(Bucket=bucket, Key=key)["Body"].read().decode()
    out = "outputs/" + key.rsplit("/", 1)[-1] + ".len"
    _s3().put_object(Bucket=bucket, Key=out, Body=str(len(body)).encode())
    _log(fn="process", key=key, event_name=event["Records"][0]["eventName"],
         size=event["Records"][0]["s3"]["object"]["size"], request_id=context.aws_request_id)
    return {"output": out}


def flaky(event, context):
    bucket, key = _object(event)
    counter = os.environ["TEST_CALL_LOG"] + ".flaky"
    n = int(open(counter).read()) if os.path.exists(counter) else 0
    open(counter, "w").write(str(n + 1))
    _log(fn="flaky", key=key, attempt=n + 1)
    if n < 2:
        raise RuntimeError(f"flaky failure {n + 1}")
    return {"ok": True}


def always_fails(event, context):
    bucket, key = _object(event)
    _log(fn="fail", key=key)
    raise ValueError(f"cannot process {key}")


def tick(event, context):
    _log(fn="tick", source=event.get("source"), detail_type=event.get("detail-type"), time=event.get("time"))
    return {"ok": True}
