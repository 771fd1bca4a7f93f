"""SAM's command line, typed as a SAM user types it: ``-p/--port`` is the port
of the API the command serves (boto3 and plain HTTP reach it there),
``llmfn local ...`` runs the same commands, ``--warm-containers EAGER`` has an
initialized instance of every function before the first request, and
``--log-file`` takes the functions' lines off stderr."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.support.cli import ROOT, Server, free_port, lambda_client, llmfn, reports, result, wait_until
from tests.support.gateway import call

# every test here starts an llmfn command that serves the embedded model
pytestmark = pytest.mark.llama

TEMPLATE = str(ROOT / "tests/e2e/app/sam-cli.yaml")


def test_boto3_invokes_through_start_lambda_on_its_dash_p_port(model_cache):
    port = free_port()
    server = Server("start-lambda", "-t", TEMPLATE, "-p", str(port), "--gateway-port", "0",
                    ready="start-lambda", env={"LLMFN_CACHE_DIR": str(model_cache)})
    try:
        assert server.url == f"http://127.0.0.1:{port}"
        resp = lambda_client(f"http://127.0.0.1:{port}").invoke(FunctionName="PidFunction", Payload=b"{}")
        assert resp["StatusCode"] == 200 and "FunctionError" not in resp
        assert json.loads(resp["Payload"].read())["function_name"] == "PidFunction"
    finally:
        assert server.stop() == 0


def test_an_http_client_reaches_local_start_api_on_its_dash_p_port(model_cache):
    port = free_port()
    server = Server("local", "start-api", "-p", str(port), "-t", TEMPLATE, "--gateway-port", "0",
                    ready="start-api", env={"LLMFN_CACHE_DIR": str(model_cache)})
    try:
        assert server.url == f"http://127.0.0.1:{port}"
        reply = call(f"http://127.0.0.1:{port}/dict", method="GET")
        assert reply.status == 200 and reply.json() == {"hello": "world"}
    finally:
        assert server.stop() == 0


def test_local_invoke_works_like_invoke(env, tmp_path):
    event = tmp_path / "event.json"
    event.write_text('{"from": "a file"}')
    plain = llmfn("invoke", "PidFunction", "-t", TEMPLATE, "-e", str(event), env=env)
    local = llmfn("local", "invoke", "PidFunction", "-t", TEMPLATE, "-e", str(event), env=env)
    for cp in (plain, local):
        out = result(cp)
        assert out["function_name"] == "PidFunction" and out["layer"] and out["env"] == "hello"
        [report] = reports(cp.stderr)
        assert report["calls"] == 0


def test_eager_warm_containers_start_every_function_before_the_first_request(model_cache, tmp_path):
    log_file = tmp_path / "functions.log"
    port = free_port()
    server = Server("local", "start-lambda", "-t", TEMPLATE, "-p", str(port), "--gateway-port", "0",
                    "--warm-containers", "EAGER", "--log-file", str(log_file),
                    ready="start-lambda", env={"LLMFN_CACHE_DIR": str(model_cache)})
    try:
        asked_at = time.time()
        client = lambda_client(server.url)
        out = {}
        for name in ("PidFunction", "DictFunction"):
            resp = client.invoke(FunctionName=name, Payload=b"{}", LogType="Tail")
            assert resp["StatusCode"] == 200 and "FunctionError" not in resp
            out[name] = json.loads(resp["Payload"].read())
        # the handler module was imported before anything asked for it, and the first
        # invocation of each function had no init phase
        assert out["PidFunction"]["imported_at"] < asked_at
        assert out["DictFunction"] == {"hello": "world"}
        lines = wait_until(lambda: _report_lines(log_file, 2), message="no REPORT lines in the log file")
        assert not any("Init Duration" in line for line in lines)
        assert "REPORT RequestId" not in server.stderr  # --log-file: not on stderr
    finally:
        assert server.stop() == 0


def test_lazy_is_the_default_and_the_first_invocation_has_an_init_phase(model_cache, tmp_path):
    log_file = tmp_path / "functions.log"
    server = Server("start-lambda", "-t", TEMPLATE, "-p", "0", "--gateway-port", "0", "--log-file", str(log_file),
                    ready="start-lambda", env={"LLMFN_CACHE_DIR": str(model_cache)})
    try:
        asked_at = time.time()
        resp = lambda_client(server.url).invoke(FunctionName="PidFunction", Payload=b"{}")
        assert json.loads(resp["Payload"].read())["imported_at"] > asked_at
        [line] = wait_until(lambda: _report_lines(log_file, 1), message="no REPORT line in the log file")
        assert "Init Duration" in line
    finally:
        assert server.stop() == 0


def _report_lines(path: Path, count: int) -> list[str] | None:
    lines = [line for line in path.read_text().splitlines() if line.startswith("REPORT")] if path.exists() else []
    return lines if len(lines) >= count else None
