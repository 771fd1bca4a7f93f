"""``InvocationType: Event`` on the Lambda Invoke API of ``llmfn serve``: each
accepted event is recorded before the 202, so one accepted before a crash is
delivered after the restart; the queue is bounded, and a full one is Lambda's
429 ``TooManyRequestsException``."""
from __future__ import annotations

import json
import os
import signal

import pytest
from botocore.exceptions import ClientError

from tests.support.cli import lambda_client, serve_project, server_url, wait_until, write_project

# every test here starts an llmfn command that serves the embedded model (its pool's workers)
pytestmark = pytest.mark.llama

TEMPLATE = """
AWSTemplateFormatVersion: "2010-09-09"
Transform: AWS::Serverless-2016-10-31
Resources:
  Record:
    Type: AWS::Serverless::Function
    Properties: {CodeUri: src/, Handler: app.handler, Timeout: 30}
"""

# Appends which service ran it (its parent process): an instance orphaned by a
# killed service may still finish, and must not count as a delivery after the restart.
HANDLER = """
import json, os, time

def handler(event, context):
    time.sleep(event["sleep"])
    with open(event["log"], "a") as f:
        f.write(json.dumps({"n": event["n"], "service": os.getppid()}) + "\\n")
    return "ok"
"""


@pytest.fixture
def project(tmp_path):
    write_project(tmp_path, TEMPLATE, HANDLER)
    return tmp_path




def _event(client, payload: dict) -> dict:
    return client.invoke(FunctionName="Record", InvocationType="Event", Payload=json.dumps(payload).encode())


def _delivered(log, service_pid: int | None = None) -> list[int]:
    lines = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    return sorted(r["n"] for r in lines if service_pid is None or r["service"] == service_pid)



def test_events_accepted_before_a_crash_are_delivered_after_the_restart(project, model_cache):
    env = {"LLMFN_CACHE_DIR": str(model_cache)}
    log = project / "calls.log"
    server = serve_project(project, env)
    try:
        client = lambda_client(server_url(server, "lambda api"))
        for n in range(3):
            resp = _event(client, {"n": n, "sleep": 3, "log": str(log)})
            assert resp["StatusCode"] == 202 and resp["ResponseMetadata"]["RequestId"]
    finally:
        os.kill(server.proc.pid, signal.SIGKILL)  # a crash: no shutdown, nothing flushed on the way out
        server.proc.wait(30)
    assert _delivered(log) == []  # none had finished

    server = serve_project(project, env)
    try:
        wait_until(lambda: _delivered(log, server.proc.pid) == [0, 1, 2], timeout=60.0)
        assert _delivered(log, server.proc.pid) == [0, 1, 2]  # each once by the restarted service
    finally:
        assert server.stop() == 0


def test_a_full_event_queue_is_refused_with_a_429(project, model_cache):
    log = project / "calls.log"
    server = serve_project(project, {"LLMFN_CACHE_DIR": str(model_cache), "LLMFN_EVENT_QUEUE_LIMIT": "2"})
    try:
        client = lambda_client(server_url(server, "lambda api"))
        assert _event(client, {"n": 0, "sleep": 3, "log": str(log)})["StatusCode"] == 202
        assert _event(client, {"n": 1, "sleep": 3, "log": str(log)})["StatusCode"] == 202
        with pytest.raises(ClientError) as err:
            _event(client, {"n": 2, "sleep": 0, "log": str(log)})
        assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 429
        assert err.value.response["Error"]["Code"] == "TooManyRequestsException"
        with pytest.raises(ClientError) as err:
            _event(client, {"n": 3, "sleep": 0, "log": str(log), "pad": "x" * 300_000})
        assert err.value.response["Error"]["Code"] == "RequestEntityTooLargeException"

        wait_until(lambda: _delivered(log) == [0, 1], timeout=60.0)
        wait_until(lambda: _try_event(client, {"n": 4, "sleep": 0, "log": str(log)}), timeout=10)  # room again
        wait_until(lambda: _delivered(log) == [0, 1, 4], timeout=60.0)
        assert client.invoke(FunctionName="Record", Payload=json.dumps(
            {"n": 5, "sleep": 0, "log": str(log)}).encode())["StatusCode"] == 200  # still serving
    finally:
        assert server.stop() == 0


def _try_event(client, payload) -> bool:
    try:
        return _event(client, payload)["StatusCode"] == 202
    except ClientError:
        return False
