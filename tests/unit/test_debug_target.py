"""Which function ``--debug-port`` debugs, and what it says when it cannot."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from runtime.server import debug_target
from runtime.settings import Settings
from runtime.template import Template, TemplateError
from runtime.template.function_spec import FunctionSpec


def _template(*names: str) -> Template:
    return Template(functions={n: FunctionSpec(name=n, code_uri=Path("."), handler="app.handler") for n in names})


def test_no_debug_port_debugs_nothing():
    assert debug_target(Settings(), _template("A")) is None


def test_the_only_function_is_debugged_by_default():
    assert debug_target(Settings(debug_port=5678), _template("A")) == (5678, "A")


def test_with_several_functions_the_one_to_debug_must_be_named():
    with pytest.raises(ValueError, match="--debug-function"):
        debug_target(Settings(debug_port=5678), _template("A", "B"))
    assert debug_target(Settings(debug_port=5678, debug_function="B"), _template("A", "B")) == (5678, "B")
    with pytest.raises(TemplateError, match="no function 'C'"):
        debug_target(Settings(debug_port=5678, debug_function="C"), _template("A", "B"))


def test_without_debugpy_it_says_what_to_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "debugpy" else real(name, *a))
    with pytest.raises(ValueError, match=r"pip install 'llmfn\[debug\]'"):
        debug_target(Settings(debug_port=5678), _template("A"))
