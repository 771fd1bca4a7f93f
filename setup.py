"""Packaging beyond ``pyproject.toml``: the LLM layer (``layers/``) and the
starters (``templates/``) live at the top of the repository, and a wheel
carries them as package data under ``runtime/_bundled/``, where
``runtime.bundled`` finds them. An editable install reads them in place."""
from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
SHIPPED = ("layers", "templates")
# What running a starter or building the layer in place may leave behind.
LEFTOVERS = shutil.ignore_patterns("__pycache__", "*.pyc", ".aws-sam", ".pytest_cache", "build")


class BuildWithShippedFolders(build_py):
    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return  # runtime.bundled reads the checkout's folders
        for name in SHIPPED:
            target = Path(self.build_lib) / "runtime" / "_bundled" / name
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(ROOT / name, target, ignore=LEFTOVERS)


setup(cmdclass={"build_py": BuildWithShippedFolders})
