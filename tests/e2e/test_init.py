"""``llmfn init``: every starter becomes a working project, run as a user runs
it: the files are there with the project's name, the template passes cfn-lint,
and ``llmfn invoke`` on the sample event calls the model and reports it."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.cli import llmfn, reports, result

CFN_LINT = Path(sys.executable).with_name("cfn-lint")
# starter -> its function; each is invoked with its events/event.json
STARTERS = {"hello-llm": "HelloFunction", "s3-summarizer": "SummarizeFunction",
            "scheduled-digest": "DigestFunction"}


def _init(tmp_path: Path, env: dict, name: str, starter: str) -> Path:
    cp = llmfn("init", name, "--starter", starter, cwd=tmp_path, env=env)
    assert cp.returncode == 0, cp.stderr
    assert f"cd {name} && llmfn invoke {STARTERS[starter]} -e events/event.json" in cp.stderr
    return tmp_path / name


def _invoke(project: Path, env: dict, function: str, event: str = "events/event.json", *extra: str):
    # --gateway-port 0: the gateway on a free port, so that nothing else on 8080 gets in the way
    cp = llmfn("invoke", function, "-e", event, "--template", "template.yaml", "--gateway-port", "0", *extra,
               cwd=project, env=env)
    out = result(cp)
    [rep] = reports(cp.stderr)
    assert rep["calls"] >= 1
    return out, rep


@pytest.mark.parametrize("starter", list(STARTERS))
def test_starter_is_a_project_that_lints(tmp_path, env, starter):
    project = _init(tmp_path, env, "my-app", starter)
    for path in ("template.yaml", "README.md", "src/app.py", "events/event.json"):
        assert (project / path).is_file(), path
    assert not list(project.rglob("__pycache__"))
    texts = {p: p.read_text() for p in project.rglob("*") if p.is_file()}
    assert not [p for p, text in texts.items() if "{{project_name}}" in text]
    assert "my-app" in texts[project / "template.yaml"] and "# my-app" in texts[project / "README.md"]
    assert f"llmfn invoke {STARTERS[starter]}" in texts[project / "README.md"]
    json.loads(texts[project / "events/event.json"])
    lint = subprocess.run([str(CFN_LINT), "template.yaml"], cwd=project, capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout + lint.stderr


@pytest.mark.llama  # the starter is run with its model
def test_hello_llm_greets_through_the_http_event(tmp_path, env):
    project = _init(tmp_path, env, "hello", "hello-llm")
    out, rep = _invoke(project, env, "HelloFunction")
    assert out["statusCode"] == 200
    body = json.loads(out["body"])
    assert body["greeting"].startswith("Hello Ada!")
    assert rep["calls"] == 1
    assert (rep["prompt"], rep["completion"]) == (body["usage"]["prompt_tokens"], body["usage"]["completion_tokens"])
    assert 1 <= rep["completion"] <= 24


@pytest.mark.llama  # the starter is run with its model
def test_s3_summarizer_summarizes_direct_text_in_chunks(tmp_path, env):
    project = _init(tmp_path, env, "summarizer", "s3-summarizer")
    out, rep = _invoke(project, env, "SummarizeFunction")
    assert set(out) == {"summary", "summary_key", "chunks", "usage"}
    assert out["summary_key"] is None and isinstance(out["summary"], str)
    # the sample text is longer than one chunk: each chunk, then the summaries, are summarized
    assert out["chunks"] == 2
    assert rep["calls"] == out["usage"]["calls"] == 3
    assert (rep["prompt"], rep["completion"]) == (out["usage"]["prompt_tokens"], out["usage"]["completion_tokens"])


@pytest.mark.llama  # the starter is run with its model
def test_s3_summarizer_reads_and_writes_the_bucket(tmp_path, env, s3_server, s3_bucket):
    import boto3

    project = _init(tmp_path, env, "summarizer", "s3-summarizer")
    s3 = boto3.client("s3", endpoint_url=s3_server)
    s3.put_object(Bucket=s3_bucket, Key="docs/team notes.txt", Body=b"The team shipped release 1.4 on Monday.")
    event = json.loads((project / "events/s3-put.json").read_text())
    event["Records"][0]["s3"]["bucket"]["name"] = s3_bucket
    event["Records"][0]["s3"]["object"]["key"] = "docs/team+notes.txt"  # keys arrive URL-encoded
    (project / "events/mine.json").write_text(json.dumps(event))
    # the README's way to point the function at another S3: SAM's --env-vars
    (project / "env.json").write_text(json.dumps({"SummarizeFunction": {"AWS_ENDPOINT_URL_S3": s3_server}}))
    out, rep = _invoke(project, env, "SummarizeFunction", "events/mine.json", "--env-vars", "env.json")
    assert out["summary_key"] == "summaries/team notes.txt"
    assert out["chunks"] == 1 and rep["calls"] == 1
    written = s3.get_object(Bucket=s3_bucket, Key="summaries/team notes.txt")["Body"].read().decode()
    assert written == out["summary"]


@pytest.mark.llama  # the starter is run with its model
def test_scheduled_digest_reports_usage_and_budget(tmp_path, env):
    project = _init(tmp_path, env, "digest", "scheduled-digest")
    out, rep = _invoke(project, env, "DigestFunction")
    event = json.loads((project / "events/event.json").read_text())
    assert out["digest"].startswith("Today,")
    assert out["items"] == event["detail"]["items"]
    assert rep["calls"] == out["usage"]["calls"] == 1
    assert (rep["prompt"], rep["completion"]) == (out["usage"]["prompt_tokens"], out["usage"]["completion_tokens"])
    # the template gives the function 200000 tokens a day; this invocation spent some
    assert out["remaining_tokens"] == 200000 - out["usage"]["total_tokens"]


def test_init_refuses_a_folder_that_is_not_empty(tmp_path, env):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    cp = llmfn("init", "taken", cwd=tmp_path, env=env)
    assert cp.returncode == 2
    assert "taken" in cp.stderr and "not empty" in cp.stderr
    assert sorted(p.name for p in (tmp_path / "taken").iterdir()) == ["notes.txt"]


def test_init_fills_an_empty_folder(tmp_path, env):
    (tmp_path / "empty").mkdir()
    cp = llmfn("init", "empty", cwd=tmp_path, env=env)  # hello-llm is the default starter
    assert cp.returncode == 0, cp.stderr
    assert (tmp_path / "empty" / "template.yaml").is_file()


def test_init_lists_the_starters_for_an_unknown_one(tmp_path, env):
    cp = llmfn("init", "app", "--starter", "nope", cwd=tmp_path, env=env)
    assert cp.returncode == 2
    assert "nope" in cp.stderr
    for starter in STARTERS:
        assert starter in cp.stderr
    assert not (tmp_path / "app").exists()


def test_init_template_still_names_the_starter_with_a_deprecation_note(tmp_path, env):
    cp = llmfn("init", "digest", "--template", "scheduled-digest", cwd=tmp_path, env=env)
    assert cp.returncode == 0, cp.stderr
    assert "--template is deprecated; use --starter" in cp.stderr
    assert "llmfn invoke DigestFunction" in cp.stderr  # the scheduled-digest starter, not the default
