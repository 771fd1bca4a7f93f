"""A regular install: the wheel built from this repository, installed into a
fresh virtual environment, gives a working ``llmfn init`` and ``llmfn invoke``
with ``context.llm``, and with the ``embedded-s3`` extra ``llmfn serve``,
although nothing of the repository is on that run's path (the LLM layer and the
starters come from the package data)."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import pytest

from tests.support.cli import ROOT, reports, result

# Installs llama-cpp-python (from pip's cache) and calls the model.
pytestmark = pytest.mark.llama

# What the wheel is built from: the package sources and the folders it ships.
PACKAGE_SOURCES = ("runtime", "layers", "templates", "pyproject.toml", "setup.py", "MANIFEST.in", "README.md")
LEFTOVERS = shutil.ignore_patterns("__pycache__", "*.pyc", "build", "*.egg-info", ".aws-sam")


def _run(cmd: list[str], *, cwd: Path, env: dict, timeout: float = 300) -> subprocess.CompletedProcess:
    cp = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert cp.returncode == 0, f"{' '.join(cmd)}\n{cp.stdout[-3000:]}\n{cp.stderr[-3000:]}"
    return cp


def _pip_env() -> dict:
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # pip's own settings stay


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    for name in PACKAGE_SOURCES:  # a copy, so that the build leaves nothing in the checkout
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=LEFTOVERS)
        else:
            shutil.copy2(path, src / name)
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", str(src), "-w", str(tmp / "dist")],
         cwd=tmp, env=_pip_env())
    [built] = (tmp / "dist").glob("llmfn-*.whl")
    return built


def _pip_install(bin_dir: Path, requirement: str) -> None:
    _run([str(bin_dir / "python"), "-m", "pip", "install", "-q", "-c", str(ROOT / "constraints.txt"), requirement],
         cwd=bin_dir, env=_pip_env(), timeout=600)


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> Path:
    """The venv's ``bin`` folder, with the wheel installed (pip's cache has llama-cpp-python)."""
    venv = tmp_path_factory.mktemp("venv")
    _run([sys.executable, "-m", "venv", str(venv)], cwd=venv, env=_pip_env())
    _pip_install(venv / "bin", str(wheel))
    return venv / "bin"


@pytest.fixture(scope="module")
def with_embedded_s3(installed, wheel) -> Path:
    """The same venv, with ``llmfn[embedded-s3]`` added, as ``llmfn serve`` of functions needs."""
    _pip_install(installed, f"{wheel}[embedded-s3]")
    return installed


@pytest.fixture
def user_env(installed, tmp_path) -> dict:
    """A user's shell: the venv on PATH, no PYTHONPATH, nothing of the repository."""
    return {"PATH": f"{installed}{os.pathsep}/usr/bin:/bin", "HOME": str(tmp_path), "LANG": "C.UTF-8",
            "LLMFN_DATA_DIR": str(tmp_path / "data")}


def _init_hello(llmfn: str, cwd: Path, env: dict) -> Path:
    cp = _run([llmfn, "init", "hello", "--starter", "hello-llm"], cwd=cwd, env=env)
    assert "cd hello && llmfn invoke HelloFunction" in cp.stderr
    return cwd / "hello"


def test_installed_wheel_runs_init_and_invoke_with_an_llm_call(installed, user_env, model_cache, tmp_path):
    user_env["LLMFN_CACHE_DIR"] = str(model_cache)
    llmfn = str(installed / "llmfn")
    project = _init_hello(llmfn, tmp_path, user_env)
    cp = subprocess.run([llmfn, "invoke", "HelloFunction", "-e", "events/event.json", "--gateway-port", "0"],
                        cwd=project, env=user_env, capture_output=True, text=True, timeout=180)
    out = result(cp)
    assert out["statusCode"] == 200
    body = json.loads(out["body"])
    assert body["greeting"].startswith("Hello Ada!")
    [rep] = reports(cp.stderr)
    assert rep["calls"] == 1 and rep["completion"] >= 1


def test_installed_runtime_and_llm_layer_come_from_the_venv(installed, user_env, tmp_path):
    code = ("import runtime, runtime.bundled as b; print(runtime.__file__); "
            "print(b.llm_layer_python()); print(b.starters_dir()); print(b.runtime_import_path())")
    lines = _run([str(installed / "python"), "-c", code], cwd=tmp_path, env=user_env).stdout.splitlines()
    venv = str(installed.parent)
    assert all(line.startswith(venv) for line in lines[:3]), lines
    assert "_bundled" in lines[1] and (Path(lines[1]) / "llmfn_llm" / "__init__.py").is_file()
    assert lines[3] == "[]"  # site-packages is never put ahead of the standard library


def _printed_url(proc: subprocess.Popen, name: str, timeout: float = 120) -> str:
    """The URL ``llmfn serve`` prints for one of its servers; its stderr keeps draining."""
    found: list[str] = []
    seen = threading.Event()

    def read() -> None:
        for line in proc.stderr:
            if not found and (m := re.search(rf"llmfn {name} on (http://\S+)", line)):
                found.append(m.group(1))
                seen.set()
        seen.set()

    threading.Thread(target=read, daemon=True).start()
    seen.wait(timeout)
    assert found, f"llmfn serve printed no {name} URL (exit code {proc.poll()})"
    return found[0]


def test_installed_wheel_with_the_embedded_s3_extra_serves_the_http_api(with_embedded_s3, user_env, model_cache,
                                                                         tmp_path):
    user_env["LLMFN_CACHE_DIR"] = str(model_cache)
    llmfn = str(with_embedded_s3 / "llmfn")
    project = _init_hello(llmfn, tmp_path, user_env)
    proc = subprocess.Popen([llmfn, "serve", "--gateway-port", "0", "--api-port", "0", "--lambda-port", "0"],
                            cwd=project, env=user_env, stderr=subprocess.PIPE, text=True)
    try:
        url = _printed_url(proc, "http api")
        with urllib.request.urlopen(f"{url}/hello?name=Bo", timeout=120) as response:
            body = json.load(response)
        assert body["greeting"].startswith("Hello Bo!")
        assert body["usage"]["completion_tokens"] >= 1
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
