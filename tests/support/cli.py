"""Running the ``llmfn`` CLI as a user does, for the end-to-end tests."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
REPORT = re.compile(r"REPORT RequestId: (?P<id>\S+)\t.*?LLM Calls: (?P<calls>\d+)\tLLM Tokens: "
                    r"(?P<prompt>\d+)/(?P<completion>\d+)")


def llmfn(*args: str, stdin: str | None = None, env: dict | None = None, timeout: float = 180,
          cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "runtime.cli", *args], input=stdin, capture_output=True,
                          text=True, timeout=timeout, cwd=cwd, env={**os.environ, **(env or {})})


def reports(stderr: str) -> list[dict]:
    return [{k: (int(v) if v.isdigit() else v) for k, v in m.groupdict().items()}
            for m in REPORT.finditer(stderr)]


class Server:
    """A long-running ``llmfn`` command (start-api, start-lambda) with its stderr collected."""

    def __init__(self, *args: str, ready: str, env: dict | None = None):
        self.proc = subprocess.Popen([sys.executable, "-m", "runtime.cli", *args], cwd=ROOT,
                                     stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})})
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
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = re.search(pattern, self.stderr)
            if m:
                return m
            time.sleep(0.05)
        raise AssertionError(f"{pattern!r} not in output")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(60)


def result(cp: subprocess.CompletedProcess) -> dict:
    assert cp.returncode == 0, cp.stderr
    return json.loads(cp.stdout)
