"""pyproject.toml declares exactly what the code imports: every third-party
import in ``runtime/`` and ``layers/`` is a declared dependency (or the
embedded-s3, validate, debug, postgres or ray extra), every declared one is imported, and the ``examples`` extra
is what ``handlers/`` imports beyond that. A regular install then has all it needs."""
from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
FIRST_PARTY = {"runtime", "llmfn_llm"}


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _names(requirements: list[str]) -> set[str]:
    return {_canonical(re.match(r"[A-Za-z0-9._-]+", r).group()) for r in requirements}


def _imported_distributions(*folders: str) -> dict[str, set[str]]:
    """distribution -> the files that import it, for every third-party import."""
    dists = packages_distributions()
    found: dict[str, set[str]] = {}
    for folder in folders:
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Import):
                    modules = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    modules = [node.module]
                else:
                    continue
                for top in {m.split(".")[0] for m in modules} - FIRST_PARTY - set(sys.stdlib_module_names):
                    for dist in dists.get(top, [f"<not installed: {top}>"]):
                        found.setdefault(_canonical(dist), set()).add(str(path.relative_to(ROOT)))
    return found


def test_what_the_runtime_and_the_layer_import_is_declared_and_nothing_more():
    extras = PROJECT["optional-dependencies"]
    declared = (_names(PROJECT["dependencies"]) | _names(extras["embedded-s3"]) | _names(extras["validate"])
                | _names(extras["debug"]) | _names(extras["postgres"])
                | _names(extras["ray"]))
    imported = _imported_distributions("runtime", "layers")
    assert {d: sorted(f) for d, f in imported.items() if d not in declared} == {}, "imported, not declared"
    assert sorted(declared - set(imported)) == [], "declared, never imported"


def test_the_examples_extra_is_what_the_example_handlers_import_beyond_llmfn():
    core = _names(PROJECT["dependencies"])
    examples = _names(PROJECT["optional-dependencies"]["examples"])
    imported = _imported_distributions("handlers")
    assert {d: sorted(f) for d, f in imported.items() if d not in core | examples} == {}
    assert sorted(examples - set(imported)) == []
