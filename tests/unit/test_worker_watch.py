"""The watch behind ``make test-fast``: it sees a worker process started by
this run, and none started outside it."""
from __future__ import annotations

import os
import subprocess
import sys

from tests.support.cli import wait_until
from tests.support.llama import RUN_TAG, WorkerWatch

# a process whose command line reads like a worker's, without loading anything
LOOKS_LIKE_A_WORKER = [sys.executable, "-c", "import sys; sys.stdin.read()", "runtime.pool.worker"]


def _started(env: dict) -> subprocess.Popen:
    return subprocess.Popen(LOOKS_LIKE_A_WORKER, stdin=subprocess.PIPE, env=env)


def test_the_watch_sees_a_worker_this_run_starts_and_not_another_runs():
    outer = os.environ.get(RUN_TAG)  # set when this runs inside make test-fast's own watch
    watch = WorkerWatch(period=0.05)
    watch.start()
    try:
        ours = _started(dict(os.environ))
        theirs = _started({k: v for k, v in os.environ.items() if k != RUN_TAG})
        try:
            seen = wait_until(lambda: watch.seen.copy() if ours.pid in watch.seen else None, 10)
            assert theirs.pid not in seen
            assert set(watch.take()) == {ours.pid} and watch.take() == {}
        finally:
            for proc in (ours, theirs):
                proc.kill()
                proc.wait()
    finally:
        watch.stop()
    assert os.environ.get(RUN_TAG) == outer
