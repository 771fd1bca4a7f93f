"""``llmfn validate`` reports every function's template error, not only the
first one the reader stops at."""
from __future__ import annotations

from runtime.cli.validate import handler_problems, read_problems

TEMPLATE = """
Transform: AWS::Serverless-2016-10-31
Resources:
  A:
    Type: AWS::Serverless::Function
    Properties: {CodeUri: src/, Handler: app.handler, Timeout: 5000}
  B:
    Type: AWS::Serverless::Function
    Properties: {CodeUri: src/, Handler: app.handler, MemorySize: 1}
  C:
    Type: AWS::Serverless::Function
    Properties: {CodeUri: src/, Handler: app.handler}
"""


def test_every_broken_function_is_reported_with_its_path(tmp_path):
    path = tmp_path / "template.yaml"
    path.write_text(TEMPLATE)
    template, problems = read_problems(path, {})
    assert template is None
    assert [p.split(":")[0] for p in problems] == ["Resources.A.Properties.Timeout",
                                                   "Resources.B.Properties.MemorySize"]


def test_a_handler_module_in_a_package_is_found_and_a_missing_one_is_named(tmp_path):
    (tmp_path / "src" / "pkg").mkdir(parents=True)
    (tmp_path / "src" / "pkg" / "mod.py").write_text("def handler(e, c): pass\n")
    path = tmp_path / "template.yaml"
    path.write_text(TEMPLATE.replace(", Timeout: 5000", "").replace(", MemorySize: 1", "")
                    .replace("Handler: app.handler}\n  B", "Handler: pkg.mod.handler}\n  B"))
    template, problems = read_problems(path, {})
    assert problems == []
    assert handler_problems(template) == [
        f"Resources.{fn}.Properties.Handler: no module app.py in {tmp_path / 'src'}" for fn in ("B", "C")]
