"""Running the ``llmfn`` CLI as a user does, for the end-to-end tests."""
from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
REPORT = re.compile(r"REPORT RequestId: (?P<id>\S+)\t.*?LLM Calls: (?P<calls>\d+)\tLLM Tokens: "
                    r"(?P<prompt>\d+)/(?P<completion>\d+)")


def llmfn(*args: str, stdin: str | None = None, env: dict | None = None, timeout: float = 180,
          cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "runtime.cli", *args], input=stdin, capture_output=True,
                          text=True, timeout=timeout, cwd=cwd, env={**os.environ, **(env or {})})


def need_binary(binary: str) -> str:
    """A system program the tests start for real (`make test` installs them)."""
    path = shutil.which(binary)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{binary} is not installed (make test installs it)")
        pytest.skip(f"{binary} is not installed; `make test` installs it")
    return path


def free_port() -> int:
    """A loopback port nothing listens on (until someone binds it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(predicate, timeout: float = 30.0, step: float = 0.05, message: str = "condition not met in time"):
    """Poll until ``predicate()`` is truthy: its value, or an AssertionError(``message``)
    after ``timeout`` seconds. The one way the tests wait for something to happen."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(message)
        time.sleep(step)


async def wait_until_async(predicate, timeout: float = 30.0, step: float = 0.02,
                           message: str = "condition not met in time"):
    """``wait_until`` for a test on the event loop: sleeps with ``asyncio.sleep`` so the
    tasks it waits for keep running."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(message)
        await asyncio.sleep(step)


def reports(stderr: str) -> list[dict]:
    return [{k: (int(v) if v.isdigit() else v) for k, v in m.groupdict().items()}
            for m in REPORT.finditer(stderr)]


class Server:
    """A long-running ``llmfn`` command (start-api, start-lambda) with its stderr collected."""

    def __init__(self, *args: str, ready: str, env: dict | None = None, new_session: bool = False):
        # new_session: a process group of its own, so that what it starts can be killed with it
        self.proc = subprocess.Popen([sys.executable, "-m", "runtime.cli", *args], cwd=ROOT,
                                     stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})},
                                     start_new_session=new_session)
        self.lines: list[str] = []
        self.url = ""
        found = threading.Event()

        def read():
            for line in self.proc.stderr:
                self.lines.append(line)
                m = re.search(ready + r" on (http://\S+)", line)
                if m and not found.is_set():
                    self.url = m.group(1)
                    found.set()
            found.set()

        threading.Thread(target=read, daemon=True).start()
        found.wait(120)
        if not self.url:
            self.stop()
            raise AssertionError("server did not start:\n" + "".join(self.lines))

    @property
    def stderr(self) -> str:
        return "".join(self.lines)

    def wait_for(self, pattern: str, timeout: float = 30) -> re.Match:
        return wait_until(lambda: re.search(pattern, self.stderr), timeout,
                          message=f"{pattern!r} not in output")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(60)


def result(cp: subprocess.CompletedProcess) -> dict:
    assert cp.returncode == 0, cp.stderr
    return json.loads(cp.stdout)


def write_project(root: Path, template: str, handler: str) -> Path:
    """A one-function project: ``template.yaml`` and its handler in ``src/app.py``."""
    (root / "src").mkdir(parents=True, exist_ok=True)
    (root / "template.yaml").write_text(template)
    (root / "src" / "app.py").write_text(handler)
    return root


def serve_project(project: Path, env: dict | None = None) -> Server:
    """``llmfn serve`` of a project folder (its ``template.yaml``) on free ports, with its
    data dir inside the project."""
    return Server("serve", "--template", str(project / "template.yaml"), "--gateway-port", "0", "--api-port", "0",
                  "--lambda-port", "0", "--data-dir", str(project / "data"), ready="lambda api", env=env)


def server_url(server: Server, name: str) -> str:
    """The URL a running service printed for one of its servers ("lambda api", "http api", ...)."""
    return server.wait_for(rf"llmfn {name} on (http://\S+)").group(1)


def lambda_client(url: str, key: str = "x"):
    """boto3's Lambda client against a local Lambda API, with no retries; ``key`` goes as
    the access key id, which is how the API reads an API key from a signed request."""
    import boto3
    from botocore.config import Config

    return boto3.client("lambda", endpoint_url=url, region_name="us-east-1", aws_access_key_id=key,
                        aws_secret_access_key="x", config=Config(retries={"max_attempts": 0}, read_timeout=60))
