"""``llmfn invoke`` on a template that uses Parameters, Conditions, Globals and
intrinsics: the function sees the resolved values, and a template mistake is
reported before anything starts, with its path and exit code 2."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.cli import llmfn, result

APP = Path(__file__).parent / "params_app"


@pytest.fixture(autouse=True)
def _model_cache(model_cache, monkeypatch):
    monkeypatch.setenv("LLMFN_CACHE_DIR", str(model_cache))


@pytest.mark.llama
def test_the_function_sees_its_environment_resolved_from_the_template():
    out = result(llmfn("invoke", "EnvFunction", "--template", str(APP / "template.yaml")))
    assert out == {"MESSAGE": "hello from us-east-1, bucket docsbucket", "BUCKET_ARN": "arn:aws:s3:::docsbucket",
                   "MODE": "cheap", "FROM_GLOBALS": "shared"}


@pytest.mark.llama
def test_parameter_overrides_reach_the_function():
    out = result(llmfn("invoke", "EnvFunction", "--template", str(APP / "template.yaml"),
                       "--parameter-overrides", "Greeting=hi Stage=prod"))
    assert out["MESSAGE"].startswith("hi from ") and out["MODE"] == "fast"


def test_a_bad_parameter_value_is_reported_with_its_name():
    cp = llmfn("invoke", "EnvFunction", "--template", str(APP / "template.yaml"),
               "--parameter-overrides", "ParameterKey=Stage,ParameterValue=test")
    assert cp.returncode == 2 and "Traceback" not in cp.stderr
    assert "Parameters.Stage: 'test' is not one of the AllowedValues (dev, prod)" in cp.stderr


@pytest.mark.parametrize("event, path", [
    ("        Upload:\n          Type: S3\n          Properties:\n            Events: s3:ObjectCreated:*\n",
     "Resources.EnvFunction.Properties.Events.Upload.Properties.Bucket: required"),
    ("        Nightly:\n          Type: Schedule\n          Properties:\n            Schedule: rate(1 week)\n",
     "Resources.EnvFunction.Properties.Events.Nightly.Properties.Schedule: "),
])
def test_an_event_mistake_is_reported_by_invoke_with_its_path(tmp_path, event, path):
    project = tmp_path / "project"
    shutil.copytree(APP, project)
    text = (project / "template.yaml").read_text()
    (project / "template.yaml").write_text(text.replace("      Environment:\n        Variables:\n          MESSAGE",
                                                        "      Events:\n" + event +
                                                        "      Environment:\n        Variables:\n          MESSAGE"))
    cp = llmfn("invoke", "EnvFunction", "--template", str(project / "template.yaml"))
    assert cp.returncode == 2, cp.stderr
    assert path in cp.stderr and "Traceback" not in cp.stderr


def test_the_template_passes_cfn_lint():
    cfn_lint = Path(sys.executable).with_name("cfn-lint")
    cp = subprocess.run([str(cfn_lint), str(APP / "template.yaml")], capture_output=True, text=True)
    assert cp.returncode == 0, cp.stdout + cp.stderr
