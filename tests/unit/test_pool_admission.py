"""``ModelPool`` admission without a process: requests queue while the pool is
cold, capacity is slots x workers, a full queue or a slow start is a 503, a
cancelled waiter leaves the queue, idle workers scale to zero, and a failed
cold start fails every request waiting on it. Workers are fakes that answer
the launch protocol (a JSON line on stdout) as a real one does."""
from __future__ import annotations

import asyncio
import importlib.util
import itertools
import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from runtime.errors import ModelLoading, ModelUnavailable, Overloaded
from runtime.pool import ModelPool, Pools
from runtime.pool.store import FetchResult
from runtime.template.model_spec import ModelConfig, PoolConfig
from tests.support.cli import wait_until_async

PIDS = itertools.count(90_000)


class FakeWorkerProcess:
    """Stands in for ``python -m runtime.pool.worker``: reads its engine config, says it is
    ready (or why not) once ``loaded`` is set, and exits on SIGTERM or kill."""

    def __init__(self, loaded: asyncio.Event, error: str | None = None):
        self.pid = next(PIDS)
        self.returncode: int | None = None
        self.config: dict | None = None
        self.signals: list[int] = []
        self._loaded, self._error = loaded, error
        self._exited = asyncio.Event()
        self.stdin = self
        self.stdout = self

    def write(self, data: bytes) -> None:
        self.config = json.loads(data)

    async def readline(self) -> bytes:
        await self._loaded.wait()
        if self._error:
            self.exit(1)
            return json.dumps({"event": "error", "error": self._error}).encode() + b"\n"
        return json.dumps({"event": "ready", "load_s": 0.0}).encode() + b"\n"

    def exit(self, code: int) -> None:
        if self.returncode is None:
            self.returncode = code
            self._exited.set()

    async def wait(self) -> int:
        await self._exited.wait()
        return self.returncode

    def send_signal(self, sig: int) -> None:
        self.signals.append(sig)
        self.exit(-sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class FakeLauncher:
    """Hands out fake worker processes; ``loaded`` holds every cold start until set."""

    def __init__(self, error: str | None = None):
        self.loaded = asyncio.Event()
        self.loaded.set()
        self.error = error
        self.started: list[FakeWorkerProcess] = []

    async def take(self, spec):
        proc = FakeWorkerProcess(self.loaded, self.error)
        self.started.append(proc)
        return proc, "new"

    def socket_path(self) -> str:
        return f"/fake/w{len(self.started)}.sock"

    def prepare(self, spec) -> None:
        pass

    def state(self, spec):
        return None

    async def close(self) -> None:
        pass


class FakeWorkerClient:
    closed = False

    async def call(self, kind, body=None):
        return {}

    async def close(self) -> None:
        self.closed = True


async def fake_connect(socket_path: str, secret: str) -> FakeWorkerClient:
    return FakeWorkerClient()


class FakeStore:
    async def fetch(self, name, source, sha256=None) -> FetchResult:
        return FetchResult(Path("/fake/model.gguf"), downloaded=False, seconds=0.0, bytes=0)


async def started_pool(launcher: FakeLauncher, **pool) -> ModelPool:
    # an s3:// source: the pool keeps no preloaded spare, so nothing starts before a request
    config = ModelConfig(name="m", source="s3://models/m.gguf", pool=PoolConfig(**pool))
    p = ModelPool(config, FakeStore(), launcher=launcher, connect=fake_connect)
    await p.start()
    return p


@pytest.fixture
async def launcher():
    return FakeLauncher()


@pytest.fixture
async def closing():
    pools: list[ModelPool] = []
    yield pools.append
    for p in pools:
        await p.close()


async def hold(pool: ModelPool, release: asyncio.Event, n: int = 1):
    """A request that keeps its lease until ``release`` is set; returns its worker's pid."""
    async with pool.lease(n) as lease:
        await release.wait()
        return lease.worker.pid


async def test_requests_wait_while_the_pool_is_cold_and_all_run_once_it_is_warm(launcher, closing):
    pool = await started_pool(launcher, max_workers=1, slots=2)
    closing(pool)
    launcher.loaded.clear()
    release = asyncio.Event()
    requests = [asyncio.create_task(hold(pool, release)) for _ in range(2)]
    await wait_until_async(lambda: pool.queued == 2)
    assert pool.state == "starting" and len(launcher.started) == 1
    launcher.loaded.set()
    await wait_until_async(lambda: pool.status()["in_flight"] == 2)
    assert pool.state == "warm" and pool.queued == 0
    release.set()
    assert len(set(await asyncio.gather(*requests))) == 1  # both on the one worker
    assert pool.cold_starts == 1


async def test_capacity_is_slots_times_workers_and_the_rest_wait_in_the_queue(launcher, closing):
    pool = await started_pool(launcher, max_workers=2, slots=2)
    closing(pool)
    release = asyncio.Event()
    requests = [asyncio.create_task(hold(pool, release)) for _ in range(5)]
    await wait_until_async(lambda: pool.status()["in_flight"] == 4)
    assert pool.queued == 1
    assert len(launcher.started) == 2 and pool.status()["workers"]["warm"] == 2  # never a third
    release.set()
    pids = await asyncio.gather(*requests)
    assert len(set(pids)) == 2


async def test_a_full_queue_is_refused_with_a_503_and_retry_after(launcher, closing):
    pool = await started_pool(launcher, max_workers=1, slots=1, queue_limit=1)
    closing(pool)
    release = asyncio.Event()
    running = asyncio.create_task(hold(pool, release))
    await wait_until_async(lambda: pool.status()["in_flight"] == 1)
    waiting = asyncio.create_task(hold(pool, release))
    await wait_until_async(lambda: pool.queued == 1)
    with pytest.raises(Overloaded) as refused:
        async with pool.lease():
            pass
    assert refused.value.status == 503 and refused.value.code == "server_overloaded"
    assert "Retry-After" in refused.value.headers
    release.set()
    await asyncio.gather(running, waiting)


async def test_a_busy_slot_not_freed_within_queue_timeout_is_a_503(launcher, closing):
    pool = await started_pool(launcher, max_workers=1, slots=1, queue_timeout=0.2)
    closing(pool)
    release = asyncio.Event()
    running = asyncio.create_task(hold(pool, release))
    await wait_until_async(lambda: pool.status()["in_flight"] == 1)
    with pytest.raises(Overloaded) as refused:
        async with pool.lease():
            pass
    assert refused.value.code == "server_overloaded"
    assert pool.queued == 0
    release.set()
    await running


async def test_a_cold_start_slower_than_its_limit_is_model_loading(launcher, closing):
    pool = await started_pool(launcher, max_workers=1, cold_start_timeout=0.2)
    closing(pool)
    launcher.loaded.clear()
    with pytest.raises(ModelLoading) as refused:
        async with pool.lease():
            pass
    assert refused.value.status == 503 and refused.value.code == "model_loading"


async def test_a_request_cancelled_while_queued_leaves_the_queue_and_takes_no_slot(launcher, closing):
    pool = await started_pool(launcher, max_workers=1, slots=1)
    closing(pool)
    release = asyncio.Event()
    running = asyncio.create_task(hold(pool, release))
    await wait_until_async(lambda: pool.status()["in_flight"] == 1)
    queued = asyncio.create_task(hold(pool, release))
    await wait_until_async(lambda: pool.queued == 1)
    queued.cancel()
    with pytest.raises(asyncio.CancelledError):
        await queued
    assert pool.queued == 0
    release.set()
    await running
    assert pool.status()["in_flight"] == 0
    async with pool.lease() as lease:  # the slot is free for the next request
        assert lease.worker.in_flight == 1


async def test_idle_workers_scale_to_zero_and_the_next_request_starts_one_again(launcher, closing):
    pool = await started_pool(launcher, min_workers=0, max_workers=1, idle_timeout=0.2)
    closing(pool)
    async with pool.lease():
        pass
    [first] = launcher.started
    await wait_until_async(lambda: pool.state == "cold", timeout=5)
    assert first.signals == [signal.SIGTERM] and pool.status()["pids"] == []
    async with pool.lease() as lease:
        assert lease.worker.pid != first.pid
    assert pool.cold_starts == 2


async def test_min_workers_are_kept_warm_without_a_request(launcher, closing):
    pool = await started_pool(launcher, min_workers=1, max_workers=2, idle_timeout=0.2)
    closing(pool)
    await wait_until_async(lambda: pool.state == "warm")
    await asyncio.sleep(0.5)  # past the idle timeout: the reaper leaves min_workers alone
    assert pool.status()["workers"]["warm"] == 1 and len(launcher.started) == 1


async def test_a_failed_cold_start_fails_every_queued_request(closing):
    launcher = FakeLauncher(error="out of memory")
    pool = await started_pool(launcher, max_workers=1, slots=1)
    closing(pool)
    launcher.loaded.clear()
    requests = [asyncio.create_task(hold(pool, asyncio.Event())) for _ in range(3)]
    await wait_until_async(lambda: pool.queued == 3)
    launcher.loaded.set()
    results = await asyncio.gather(*requests, return_exceptions=True)
    assert all(isinstance(r, ModelUnavailable) for r in results), results
    assert "out of memory" in results[0].message
    assert pool.state == "cold" and pool.queued == 0 and pool.workers == []


def test_local_pools_never_import_ray():
    # Ray is an optional extra: a gateway of local pools must start without it.
    code = ("import sys, asyncio; from runtime.pool import Pools, ModelStore; "
            "from runtime.template.model_spec import ModelConfig; "
            "pools = Pools([ModelConfig(name='m')], ModelStore('/tmp'), spare_worker=False); "
            "assert pools.ray is None and 'ray' not in sys.modules, sorted(m for m in sys.modules if 'ray' in m)")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


async def test_a_ray_pool_without_ray_installed_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ray" else True)
    config = ModelConfig(name="m", pool=PoolConfig(backend="ray"))
    with pytest.raises(ValueError, match=r"llmfn\[ray\]"):
        Pools([config], FakeStore())
