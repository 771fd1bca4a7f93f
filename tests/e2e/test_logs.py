"""``llmfn logs``: the lines of an invocation run under ``llmfn serve`` (START,
END, REPORT and the handler's output, with its request id) come back from the
data dir's log store, filtered, and followed with ``--tail``; and ``serve
--log-format json`` writes nothing but JSON objects on stderr."""
from __future__ import annotations

import base64
import json
import re
import signal
import subprocess
import sys
import threading

import pytest

from tests.support.cli import ROOT, Server, lambda_client, llmfn, wait_until, write_project

# every test here starts an llmfn command that serves the embedded model (its pool's workers)
pytestmark = pytest.mark.llama

TEMPLATE = """
AWSTemplateFormatVersion: "2010-09-09"
Transform: AWS::Serverless-2016-10-31
Resources:
  Echo:
    Type: AWS::Serverless::Function
    Properties: {CodeUri: src/, Handler: app.handler, Timeout: 30}
"""

HANDLER = """
import sys

def handler(event, context):
    print("handling", event["word"])
    print("warning on stderr", event["word"], file=sys.stderr)
    return event["word"]
"""


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A project whose function calls no model."""
    return write_project(tmp_path_factory.mktemp("logs"), TEMPLATE, HANDLER)


@pytest.fixture(scope="module")
def served(project, model_cache):
    """``llmfn serve --log-format json`` of the project."""
    server = Server("serve", "--template", str(project / "template.yaml"), "--gateway-port", "0", "--api-port", "0",
                    "--lambda-port", "0", "--data-dir", str(project / "data"), "--log-format", "json",
                    ready="lambda api", env={"LLMFN_CACHE_DIR": str(model_cache)})
    try:
        url = wait_until(lambda: _lambda_url(server))
        yield server, lambda_client(url), project / "data"
    finally:
        server.stop()


def _lambda_url(server: Server) -> str | None:
    for line in server.lines:
        if m := re.fullmatch(r"llmfn lambda api on (http://\S+)", json.loads(line).get("message", "")):
            return m.group(1)
    return None


def _invoke(client, word: str) -> str:
    resp = client.invoke(FunctionName="Echo", Payload=json.dumps({"word": word}).encode(), LogType="Tail")
    assert json.loads(resp["Payload"].read()) == word
    return re.search(r"START RequestId: (\S+)", base64.b64decode(resp["LogResult"]).decode()).group(1)


def _logs(data_dir, *args: str) -> list[str]:
    cp = llmfn("logs", "Echo", "--data-dir", str(data_dir), *args, timeout=60)
    assert cp.returncode == 0, cp.stderr
    return cp.stdout.splitlines()


def test_logs_since_returns_the_lines_of_an_invocation_under_serve(served):
    _, client, data_dir = served
    request_id = _invoke(client, "apple")

    def lines_of_the_invocation():
        lines = [ln.split(" ", 2) for ln in _logs(data_dir, "--since", "1m")]  # time, request id, message
        mine = [message for _, rid, message in lines if rid == request_id]
        return mine if mine and mine[-1].startswith("REPORT") else None

    messages = wait_until(lines_of_the_invocation, message="no REPORT line in llmfn logs")
    assert messages[0] == f"START RequestId: {request_id} Version: 1"
    assert "handling apple" in messages and "warning on stderr apple" in messages
    assert messages[-2] == f"END RequestId: {request_id}"
    assert messages[-1].startswith(f"REPORT RequestId: {request_id}\tDuration: ")


def test_logs_filter_prints_only_the_lines_containing_the_text(served):
    _, client, data_dir = served
    _invoke(client, "banana")
    _invoke(client, "cherry")
    lines = wait_until(lambda: _logs(data_dir, "--filter", "handling cherry"))
    assert len(lines) == 1 and lines[0].endswith(" handling cherry")
    assert _logs(data_dir, "--filter", "HANDLING") == []  # case-sensitive


def test_logs_tail_prints_a_line_written_after_it_started(served):
    _, client, data_dir = served
    _invoke(client, "durian")
    tail = subprocess.Popen([sys.executable, "-m", "runtime.cli", "logs", "Echo", "--tail", "--data-dir",
                             str(data_dir), "--filter", "handling durian"], cwd=ROOT, stdout=subprocess.PIPE,
                            text=True)
    try:
        printed: list[str] = []

        def read():
            for line in tail.stdout:
                printed.append(line)

        threading.Thread(target=read, daemon=True).start()
        wait_until(lambda: printed, message="--tail printed nothing")  # the line from before it started
        _invoke(client, "durian")
        wait_until(lambda: len(printed) == 2, message="--tail did not print the new line")
        assert all(line.rstrip().endswith(" handling durian") for line in printed)
    finally:
        tail.send_signal(signal.SIGINT)  # Ctrl-C
        assert tail.wait(30) == 0


def test_log_format_json_writes_only_json_objects_with_their_fields(served):
    server, client, _ = served
    request_id = _invoke(client, "elderberry")
    wait_until(lambda: f"END RequestId: {request_id}" in server.stderr)
    records = [json.loads(line) for line in server.lines]  # every line is a JSON object
    mine = [r for r in records if r.get("request_id") == request_id]
    assert {"handling elderberry", f"END RequestId: {request_id}"} <= {r["message"] for r in mine}
    assert all(set(r) == {"time", "function", "request_id", "version", "message"} and r["function"] == "Echo"
               and r["version"] == 1 for r in mine)
    service = [r for r in records if "level" in r]
    assert service and all({"time", "level", "logger", "message"} <= set(r) for r in service)


def test_logs_returns_the_lines_of_llmfn_invoke_too(project, model_cache, tmp_path):
    cp = llmfn("invoke", "Echo", "-e", "-", "--template", str(project / "template.yaml"), "--data-dir",
               str(tmp_path), stdin='{"word": "fig"}', env={"LLMFN_CACHE_DIR": str(model_cache)})
    assert cp.returncode == 0, cp.stderr
    request_id = re.search(r"START RequestId: (\S+)", cp.stderr).group(1)
    lines = _logs(tmp_path, "--since", "1m")
    assert f"{request_id} handling fig" in "\n".join(lines)
    assert lines[-1].split(" ", 2)[2].startswith(f"REPORT RequestId: {request_id}")
