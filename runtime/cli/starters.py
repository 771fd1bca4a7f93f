"""Starter projects for ``llmfn init``: each folder under ``templates/`` is a
working project (SAM template, handler under ``src/``, sample events, README)
that is copied as is, with ``{{project_name}}`` replaced by the new project's name.
The folder ships with llmfn (see ``runtime.bundled``)."""
from __future__ import annotations

import re
import shutil
from pathlib import Path

from runtime import bundled

PLACEHOLDER = "{{project_name}}"
# The name lands in YAML strings, a README and shell commands: keep it plain.
PROJECT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
# What running a starter in place may leave behind; never part of a new project.
_LEFTOVERS = shutil.ignore_patterns("__pycache__", "*.pyc", ".aws-sam", ".pytest_cache")


def starters() -> list[str]:
    """The starter names, sorted."""
    return sorted(p.name for p in bundled.starters_dir().iterdir() if (p / "template.yaml").is_file())


def create_project(name: str, starter: str) -> Path:
    """Create folder ``name`` (relative to the current directory) from ``starter``."""
    known = starters()
    if starter not in known:
        raise ValueError(f"unknown starter '{starter}' (starters: {', '.join(known) or 'none'})")
    target = Path(name)
    project = target.resolve().name
    if not PROJECT_NAME.match(project):
        raise ValueError(f"project name '{project}': use letters, digits, '.', '_' and '-', "
                         "starting with a letter or digit")
    if target.exists() and not target.is_dir():
        raise ValueError(f"'{name}' already exists and is not a folder")
    if target.is_dir() and any(target.iterdir()):
        raise ValueError(f"folder '{name}' already exists and is not empty")
    shutil.copytree(bundled.starters_dir() / starter, target, ignore=_LEFTOVERS, dirs_exist_ok=True)
    for path in target.rglob("*"):
        if path.is_file():
            _fill_in(path, project)
    return target


def _fill_in(path: Path, project: str) -> None:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:  # not a text file: nothing to substitute
        return
    if PLACEHOLDER in text:
        path.write_text(text.replace(PLACEHOLDER, project), encoding="utf-8")
