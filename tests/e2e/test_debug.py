"""``llmfn invoke -d PORT``: the function's instance waits under debugpy for a
debugger; a client that attaches and continues sees the invocation complete,
with the function's timeout suspended while it is attached."""
from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time

import pytest

from tests.support.cli import ROOT, free_port, wait_until

APP = "tests/e2e/app/template.yaml"


@pytest.fixture(autouse=True)
def _model_cache(model_cache, monkeypatch):
    monkeypatch.setenv("LLMFN_CACHE_DIR", str(model_cache))


class DapClient:
    """The least of the Debug Adapter Protocol a debugger speaks to attach."""

    def __init__(self, port: int):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=60)
        self.buf = b""
        self.seq = 0

    def send(self, command: str, **arguments) -> None:
        self.seq += 1
        body = json.dumps({"seq": self.seq, "type": "request", "command": command,
                           "arguments": arguments}).encode()
        self.sock.sendall(b"Content-Length: %d\r\n\r\n" % len(body) + body)

    def _message(self) -> dict:
        while b"\r\n\r\n" not in self.buf:
            self.buf += self._recv()
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        length = int(head.split(b":")[1])
        while len(self.buf) < length:
            self.buf += self._recv()
        body, self.buf = self.buf[:length], self.buf[length:]
        return json.loads(body)

    def _recv(self) -> bytes:
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("the debug adapter closed the connection")
        return data

    def until(self, kind: str, name: str) -> dict:
        """Read until the response to ``name`` or the event ``name``."""
        while True:
            msg = self._message()
            if msg["type"] == kind and msg.get("command" if kind == "response" else "event") == name:
                return msg


class Invoke:
    """``llmfn invoke`` running in the background, its stderr read as it comes."""

    def __init__(self, *args: str, stdin: str):
        self.proc = subprocess.Popen([sys.executable, "-m", "runtime.cli", "invoke", *args], cwd=ROOT,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True)
        self.proc.stdin.write(stdin)
        self.proc.stdin.close()
        self.lines: list[str] = []
        self._reader = threading.Thread(target=lambda: self.lines.extend(self.proc.stderr), daemon=True)
        self._reader.start()

    @property
    def stderr(self) -> str:
        return "".join(self.lines)

    def finish(self, timeout: float = 60) -> tuple[int, str]:
        try:
            out = self.proc.stdout.read()
            return self.proc.wait(timeout), out
        finally:
            if self.proc.poll() is None:
                self.proc.terminate()  # its instance goes with it
                self.proc.wait(30)
            self._reader.join(5)


@pytest.mark.llama  # llmfn invoke serves the model
@pytest.mark.timeout(180)
def test_invoke_waits_for_a_debugger_and_completes_after_it_attaches():
    port = free_port()
    # SleepyFunction's timeout is 1 s: the 2 s it sleeps, and the wait for the
    # debugger, pass only because the timeout is suspended under the debugger.
    run = Invoke("SleepyFunction", "--template", APP, "-d", str(port), "-e", "-", stdin='{"seconds": 2}')
    try:
        wait_until(lambda: f"debugpy listening on 127.0.0.1:{port}" in run.stderr or run.proc.poll() is not None,
                   timeout=120, message="debugpy never listened")
        assert run.proc.poll() is None, run.stderr
        dap = DapClient(port)
        dap.send("initialize", adapterID="debugpy", clientID="llmfn-tests", pathFormat="path",
                 linesStartAt1=True, columnsStartAt1=True)
        assert dap.until("response", "initialize")["success"]
        dap.send("attach", justMyCode=False)
        dap.until("event", "initialized")
        time.sleep(1.5)  # longer than the function's timeout, attached but not yet running
        assert run.proc.poll() is None and "START RequestId" in run.stderr and "END RequestId" not in run.stderr
        dap.send("configurationDone")
        assert dap.until("response", "configurationDone")["success"]
    finally:
        code, out = run.finish()
    assert code == 0, run.stderr
    assert json.loads(out)["slept"] == 2
    assert "Task timed out" not in run.stderr
