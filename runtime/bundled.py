"""The files that ship with llmfn besides its code: the LLM layer (``layers/``)
and the starters for ``llmfn init`` (``templates/``).

A wheel carries them as package data under ``runtime/_bundled/`` (``setup.py``
copies them there at build time); a repository checkout or an editable install
reads the top-level folders in place. This module only finds them; it must not
import the rest of the runtime.
"""
from __future__ import annotations

import sysconfig
from importlib import resources
from pathlib import Path

BUNDLED = "_bundled"  # the package-data folder inside ``runtime`` in a wheel


def _package_dir() -> Path:
    # A real folder: function instances get these paths on PYTHONPATH, and
    # ``llmfn init`` copies a starter with shutil (llmfn is never zip-imported).
    return Path(str(resources.files("runtime"))).resolve()


def runtime_root() -> Path:
    """The folder that holds the ``runtime`` package (site-packages, or the checkout)."""
    return _package_dir().parent


def shipped(name: str) -> Path:
    """The shipped folder ``name`` (``layers`` or ``templates``): the wheel's copy,
    else the checkout's top-level one."""
    for path in (_package_dir() / BUNDLED / name, runtime_root() / name):
        if path.is_dir():
            return path
    raise FileNotFoundError(f"llmfn's '{name}' folder is missing: reinstall llmfn")


def llm_layer_python() -> Path:
    """The LLM layer's ``python/`` folder, what a function instance imports ``llmfn_llm`` from."""
    return shipped("layers") / "llm" / "python"


def starters_dir() -> Path:
    return shipped("templates")


def runtime_import_path() -> list[str]:
    """What a child interpreter needs on PYTHONPATH to import this ``runtime``:
    nothing when it is installed in site-packages (which the interpreter has, and
    which must not go ahead of the standard library), else the checkout."""
    root = runtime_root()
    site = {Path(sysconfig.get_path(k)).resolve() for k in ("purelib", "platlib")}
    return [] if root in site else [str(root)]
