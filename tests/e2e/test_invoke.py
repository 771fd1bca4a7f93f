"""``llmfn invoke`` on the example functions and on functions with one behaviour
each, run as a user runs it: result on stdout, logs and REPORT on stderr."""
from __future__ import annotations

import json

import pytest

from tests.support.cli import llmfn, reports, result

APP = "tests/e2e/app/template.yaml"


@pytest.fixture(autouse=True)
def _model_cache(model_cache, monkeypatch):
    monkeypatch.setenv("LLMFN_CACHE_DIR", str(model_cache))


def _sum(usages: list[dict]) -> tuple[int, int]:
    return (sum(u["prompt_tokens"] for u in usages), sum(u["completion_tokens"] for u in usages))


@pytest.mark.llama  # llmfn invoke serves the model
def test_hello_example_reports_its_tokens():
    cp = llmfn("invoke", "HelloFunction", "-e", "-", stdin='{"question": "What is two plus two?"}')
    out = result(cp)
    assert isinstance(out["answer"], str)
    [rep] = reports(cp.stderr)
    assert rep["calls"] == 1
    assert (rep["prompt"], rep["completion"]) == (out["usage"]["prompt_tokens"], out["usage"]["completion_tokens"])
    assert "Init Duration:" in cp.stderr and "START RequestId:" in cp.stderr and "END RequestId:" in cp.stderr


@pytest.mark.llama  # llmfn invoke serves the model
def test_personas_example_sums_every_call(tmp_path):
    event = tmp_path / "event.json"
    event.write_text(json.dumps({"topic": "tea", "max_tokens": 10}))
    cp = llmfn("invoke", "PersonasFunction", "-e", str(event))
    out = result(cp)
    assert [t["persona"] for t in out["turns"]] == ["Optimist", "Skeptic", "Engineer"]
    [rep] = reports(cp.stderr)
    assert rep["calls"] == 3
    assert (rep["prompt"], rep["completion"]) == _sum([t["usage"] for t in out["turns"]])
    assert out["llm_usage"]["calls"] == 3  # context.llm_usage saw the same calls


@pytest.mark.llama  # llmfn invoke serves the model
def test_langchain_example_needs_no_configuration():
    cp = llmfn("invoke", "SummarizeFunction", "-e", "-", stdin='{"text": "Cats sleep a lot.", "max_tokens": 12}')
    out = result(cp)
    [rep] = reports(cp.stderr)
    assert rep["calls"] == 1
    assert (rep["prompt"], rep["completion"]) == (out["usage"]["input_tokens"], out["usage"]["output_tokens"])


@pytest.mark.llama  # llmfn invoke serves the model
def test_streaming_chat_example_prints_the_stream():
    cp = llmfn("invoke", "ChatFunction", "-e", "-", stdin='{"body": "{\\"message\\": \\"hi\\", \\"max_tokens\\": 8}"}')
    assert cp.returncode == 0, cp.stderr
    assert '"statusCode": 200' in cp.stdout  # the HTTP prelude, then the streamed text
    [rep] = reports(cp.stderr)
    assert rep["calls"] == 1 and 1 <= rep["completion"] <= 8


@pytest.mark.llama  # llmfn invoke serves the model
def test_report_equals_the_sum_of_usage_including_streams():
    cp = llmfn("invoke", "CallsFunction", "-e", "-", "--template", APP, stdin='{"n": 2}')
    out = result(cp)
    [rep] = reports(cp.stderr)
    assert rep["calls"] == 3
    assert (rep["prompt"], rep["completion"]) == _sum(out["usages"])
    # context.llm_usage, read after the stream ended, already counts every call
    assert out["so_far"]["calls"] == 3
    assert (out["so_far"]["prompt_tokens"], out["so_far"]["completion_tokens"]) == _sum(out["usages"])


@pytest.mark.llama  # llmfn invoke serves the model
def test_async_handler():
    out_cp = llmfn("invoke", "AsyncFunction", "--template", APP)
    out = result(out_cp)
    assert out["async"] is True
    [rep] = reports(out_cp.stderr)
    assert (rep["prompt"], rep["completion"]) == (out["usage"]["prompt_tokens"], out["usage"]["completion_tokens"])


@pytest.mark.llama  # llmfn invoke serves the model
def test_context_fields_layers_and_env_vars(tmp_path):
    env_vars = tmp_path / "env.json"
    env_vars.write_text(json.dumps({"PidFunction": {"GREETING": "overridden"}}))
    cp = llmfn("invoke", "PidFunction", "--template", APP, "--env-vars", str(env_vars))
    out = result(cp)
    assert out["function_name"] == "PidFunction" and out["memory"] == 256
    assert out["arn"].endswith(":function:PidFunction") and out["log_group"] == "/aws/lambda/PidFunction"
    assert 0 < out["remaining_ms"] <= 30_000
    assert out["layer"] == "test-layer" and out["env"] == "overridden"
    assert out["openai_base_url"].endswith("/v1")
    assert reports(cp.stderr)[0]["id"] == out["request_id"]


@pytest.mark.llama  # llmfn invoke serves the model
def test_handler_exception_is_a_lambda_error():
    cp = llmfn("invoke", "BoomFunction", "--template", APP, "-e", "-", stdin='{"x": 7}')
    out = result(cp)
    assert out["errorType"] == "ValueError" and out["errorMessage"] == "bad input: 7"
    assert isinstance(out["stackTrace"], list) and any("boom" in line for line in out["stackTrace"])
    assert len(reports(cp.stderr)) == 1


@pytest.mark.llama  # llmfn invoke serves the model
def test_timeout_fails_the_invocation():
    cp = llmfn("invoke", "SleepyFunction", "--template", APP, "-e", "-", stdin='{"seconds": 30}')
    out = result(cp)
    assert out["errorType"] == "Sandbox.Timedout"
    assert "Task timed out after 1.00 seconds" in out["errorMessage"]


@pytest.mark.llama  # llmfn invoke serves the model
def test_import_error_is_reported():
    out = result(llmfn("invoke", "BrokenFunction", "--template", APP))
    assert out["errorType"] == "Runtime.ImportModuleError"
    assert "no_such_module" in out["errorMessage"]


@pytest.mark.llama  # llmfn invoke serves the model
def test_disallowed_model_is_403_inside_the_function():
    out = result(llmfn("invoke", "ForbiddenFunction", "--template", APP))
    assert out["status"] == 403 and out["type"] == "permission_error"
    assert "ForbiddenFunction" in out["message"]


def test_unknown_function_and_bad_event_are_clear_errors(tmp_path):
    cp = llmfn("invoke", "NoSuchFunction", "--template", APP)
    assert cp.returncode == 2 and "NoSuchFunction" in cp.stderr and "Traceback" not in cp.stderr
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    cp = llmfn("invoke", "PidFunction", "--template", APP, "-e", str(bad))
    assert cp.returncode == 2 and "not valid JSON" in cp.stderr


def test_generate_event_shapes():
    s3 = json.loads(llmfn("generate-event", "s3", "put", "--bucket", "docs", "--key", "docs/a b.txt").stdout)
    record = s3["Records"][0]
    assert record["s3"]["bucket"]["name"] == "docs" and record["s3"]["object"]["key"] == "docs/a+b.txt"
    http = json.loads(llmfn("generate-event", "apigateway", "http", "--path", "/x").stdout)
    assert http["version"] == "2.0" and http["rawPath"] == "/x"
    proxy = json.loads(llmfn("generate-event", "apigateway", "aws-proxy").stdout)
    assert "httpMethod" in proxy and "multiValueHeaders" in proxy
    sched = json.loads(llmfn("generate-event", "schedule").stdout)
    assert sched["detail-type"] == "Scheduled Event" and sched["source"] == "aws.events"


def test_templates_pass_cfn_lint():
    import subprocess
    import sys
    from pathlib import Path
    cfn_lint = Path(sys.executable).with_name("cfn-lint")
    for template in ("template.yaml", APP):
        cp = subprocess.run([str(cfn_lint), template], capture_output=True, text=True)
        assert cp.returncode == 0, cp.stdout + cp.stderr
