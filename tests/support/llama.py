"""Which tests load a model, and a watch that proves the others never do.

A test loads a model when it uses a fixture registered with ``loads_model``
(a gateway with a model, the model's tokenizer), or when it is marked
``llama`` itself because an ``llmfn`` subprocess it starts makes an LLM call
or starts a pool. ``WorkerWatch`` sees every llama.cpp worker process that
this test run starts (they inherit ``RUN_TAG`` in their environment), so the
fast run (``-m "not llama"``) fails a test that starts one unmarked.
"""
from __future__ import annotations

import os
import threading
import uuid
from pathlib import Path
from typing import Callable

WORKER_MODULE = b"runtime.pool.worker"
# Inherited by every process a test starts (llmfn subprocesses, their workers).
RUN_TAG = "TESTS_WORKER_WATCH_TAG"  # not LLMFN_*: that prefix is the settings'

MODEL_FIXTURES: set[Callable] = set()


def loads_model(fixture_function: Callable) -> Callable:
    """Register a fixture function (below ``@pytest.fixture``) whose users load a model."""
    MODEL_FIXTURES.add(fixture_function)
    return fixture_function


class WorkerWatch:
    """Polls /proc for worker processes that carry this run's tag."""

    def __init__(self, period: float = 0.05):
        self.tag = f"{RUN_TAG}={uuid.uuid4().hex}".encode()
        self.period = period
        self.seen: dict[int, str] = {}  # pid -> its command line
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="worker-watch", daemon=True)

    def start(self) -> None:
        name, value = self.tag.decode().split("=", 1)
        os.environ[name] = value
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        os.environ.pop(RUN_TAG, None)

    def take(self) -> dict[int, str]:
        """The workers seen since the last call (after one more look)."""
        self.scan()
        seen, self.seen = self.seen, {}
        return seen

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            self.scan()

    def scan(self) -> None:
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) in self.seen:
                continue
            try:
                cmdline = (entry / "cmdline").read_bytes()
                if WORKER_MODULE in cmdline and self.tag in (entry / "environ").read_bytes().split(b"\0"):
                    self.seen[int(entry.name)] = cmdline.replace(b"\0", b" ").decode(errors="replace")
            except OSError:  # gone, or not ours
                continue
