"""``llmfn validate`` on a starter project, as a user runs it: a clean one exits
0, each kind of problem exits 1 with a line naming its place in the template,
and a usage error exits 2. It starts no model."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.support.cli import llmfn


@pytest.fixture
def project(tmp_path) -> Path:
    cp = llmfn("init", "app", "--starter", "hello-llm", cwd=tmp_path)
    assert cp.returncode == 0, cp.stderr
    return tmp_path / "app"


def _edit(project: Path, old: str, new: str) -> None:
    path = project / "template.yaml"
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


def test_a_clean_starter_validates(project):
    cp = llmfn("validate", cwd=project)
    assert cp.returncode == 0, cp.stdout + cp.stderr
    assert cp.stdout == "" and "template.yaml: valid" in cp.stderr


@pytest.mark.parametrize(("old", "new", "line"), [
    ("models: [gemma3-270m]", "models: [gemma-9000]",
     "Resources.HelloFunction.Metadata.llmfn.models: 'gemma-9000' is not a served model (served: gemma3-270m)"),
    ("gemma3-270m: {rpm: 60", "gpt-4o: {rpm: 60",
     "Resources.HelloFunction.Metadata.llmfn.quotas.gpt-4o: 'gpt-4o' is not a served model"),
    ("Handler: app.handler", "Handler: greeter.handler",
     "Resources.HelloFunction.Properties.Handler: no module greeter.py in "),
    ("CodeUri: src/", "CodeUri: src/\n      Bogus: 1", "Resources.HelloFunction.Properties.Bogus: "),
    ("{rpm: 60,", "{rpm: 0,", "Resources.HelloFunction.Metadata.llmfn.quotas.gemma3-270m.rpm: "),
], ids=["unknown-model", "unknown-quota-model", "missing-handler", "cfn-lint-error", "bad-quota"])
def test_each_problem_exits_1_with_its_template_path(project, old, new, line):
    _edit(project, old, new)
    cp = llmfn("validate", "-t", "template.yaml", cwd=project)
    assert cp.returncode == 1, cp.stdout + cp.stderr
    assert any(out.startswith(line) for out in cp.stdout.splitlines()), cp.stdout


def test_a_model_given_with_model_is_what_functions_are_checked_against(project):
    cp = llmfn("validate", "--model", "other=embedded", cwd=project)
    assert cp.returncode == 1
    assert "'gemma3-270m' is not a served model (served: other)" in cp.stdout


def test_a_missing_template_is_a_usage_error(tmp_path):
    cp = llmfn("validate", "-t", "nothere.yaml", cwd=tmp_path)
    assert cp.returncode == 2 and "nothere.yaml: no such template" in cp.stderr


def test_without_cfn_lint_it_says_what_to_install(project, tmp_path):
    shadow = tmp_path / "shadow" / "cfnlint"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("")  # a cfnlint with no api: as good as none
    path = os.pathsep.join(filter(None, [str(shadow.parent), os.environ.get("PYTHONPATH")]))
    cp = llmfn("validate", cwd=project, env={"PYTHONPATH": path})
    assert cp.returncode == 2
    assert "pip install 'llmfn[validate]'" in cp.stderr
