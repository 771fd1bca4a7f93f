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
from collections.abc import Callable

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

    # a worker lives for seconds at least (importing llama.cpp alone takes longer than this)
    def __init__(self, period: float = 0.2):
        self.tag = f"{RUN_TAG}={uuid.uuid4().hex}".encode()
        self.period = period
        self.seen: dict[int, str] = {}  # pid -> its command line
        self._taken: set[int] = set()
        self._before: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="worker-watch", daemon=True)

    def start(self) -> None:
        self._before = os.environ.get(RUN_TAG)
        os.environ[RUN_TAG] = self.tag.decode().split("=", 1)[1]
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        if self._before is None:
            os.environ.pop(RUN_TAG, None)
        else:  # a watch inside another's run (the watch's own test) gives the run its tag back
            os.environ[RUN_TAG] = self._before

    def take(self) -> dict[int, str]:
        """The workers first seen since the last call (after one more look); each once."""
        self.scan()
        new = {pid: cmd for pid, cmd in self.seen.items() if pid not in self._taken}
        self._taken.update(new)
        return new

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            self.scan()

    def scan(self) -> None:
        for name in os.listdir("/proc"):
            if not name.isdigit() or int(name) in self.seen:
                continue
            try:
                with open(f"/proc/{name}/cmdline", "rb") as f:
                    cmdline = f.read()
                if WORKER_MODULE not in cmdline:
                    continue
                with open(f"/proc/{name}/environ", "rb") as f:
                    if self.tag in f.read().split(b"\0"):
                        self.seen[int(name)] = cmdline.replace(b"\0", b" ").decode(errors="replace")
            except OSError:  # gone, or not ours
                continue
