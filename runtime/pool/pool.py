"""``ModelPool``: the worker processes of one model, scaled between
``min_workers`` and ``max_workers``, with a bounded wait queue (the activator)
in front. States: cold -> starting -> warm -> draining -> cold."""
from __future__ import annotations

import asyncio
import collections
import json
import logging
import os
import signal
import sys
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable

import aiohttp

from runtime.app.models import ModelConfig
from runtime.errors import LlmfnError, ModelLoading, ModelUnavailable, Overloaded, UpstreamError
from runtime.pool.store import FetchResult, ModelStore
from runtime.pool.tokenizer import ModelTokenizer

log = logging.getLogger("llmfn.pool")


@dataclass
class Worker:
    model: str
    state: str = "starting"  # starting | warm | draining
    proc: asyncio.subprocess.Process | None = None
    port: int = 0
    in_flight: int = 0
    last_used: float = field(default_factory=time.monotonic)
    ready_at: float = 0.0
    cold_start: dict[str, Any] | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


class Lease:
    """One slot of one warm worker, held for one request."""

    def __init__(self, pool: "ModelPool", worker: Worker):
        self.pool, self.worker = pool, worker

    async def generate(self, payload: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """Stream the worker's NDJSON items; a dead worker becomes ``UpstreamError``."""
        first = True
        try:
            async with self.pool.http.post(f"{self.worker.url}/generate", json=payload) as resp:
                resp.raise_for_status()
                async for line in resp.content:
                    item = json.loads(line)
                    if first and item.get("text") is not None:
                        first = False
                        self.pool.note_first_token(self.worker)
                    if item.get("error"):
                        raise UpstreamError(f"model '{self.pool.name}' worker failed: {item['error']}")
                    yield item
                    if item.get("done"):
                        return
        except (aiohttp.ClientError, json.JSONDecodeError, ConnectionError) as exc:
            raise await self.pool.worker_failed(self.worker, exc) from None
        raise await self.pool.worker_failed(self.worker, EOFError("stream ended early"))

    async def embed(self, texts: list[str]) -> dict[str, Any]:
        try:
            async with self.pool.http.post(f"{self.worker.url}/embed", json={"input": texts}) as resp:
                resp.raise_for_status()
                return await resp.json()
        except (aiohttp.ClientError, ConnectionError) as exc:
            raise await self.pool.worker_failed(self.worker, exc) from None


class ModelPool:
    def __init__(self, config: ModelConfig, store: ModelStore, *,
                 on_cold_start: Callable[[str, dict[str, Any]], None] | None = None):
        self.config = config
        self.name = config.name
        self.store = store
        self.on_cold_start = on_cold_start
        self.workers: list[Worker] = []
        self.tokenizer: ModelTokenizer | None = None
        self.last_cold_start: dict[str, Any] | None = None
        self.cold_starts = 0
        self._waiters: collections.deque[asyncio.Future[Worker]] = collections.deque()
        self._tasks: set[asyncio.Task] = set()
        self._http: aiohttp.ClientSession | None = None
        self._reaper: asyncio.Task | None = None
        self._prep: asyncio.Task | None = None
        self._fetch_task: asyncio.Task | None = None
        self._fetch_started = 0.0
        self._closed = False

    # ---- lifecycle -----------------------------------------------------------

    @property
    def http(self) -> aiohttp.ClientSession:
        if self._http is None:
            self._http = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, force_close=False),
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=10))
        return self._http

    async def start(self) -> None:
        self._reaper = asyncio.create_task(self._reap_idle(), name=f"reaper:{self.name}")
        for _ in range(self.config.pool.min_workers):
            self._spawn()

    async def close(self) -> None:
        self._closed = True
        if self._reaper:
            self._reaper.cancel()
        for fut in self._waiters:
            if not fut.done():
                fut.set_exception(Overloaded(f"model '{self.name}' is shutting down"))
        await asyncio.gather(*(self._stop_worker(w) for w in list(self.workers)),
                             return_exceptions=True)
        for t in list(self._tasks):
            t.cancel()
        if self._http:
            await self._http.close()

    @property
    def state(self) -> str:
        states = {w.state for w in self.workers}
        for s in ("warm", "starting", "draining"):
            if s in states:
                return s
        return "cold"

    def status(self) -> dict[str, Any]:
        counts = collections.Counter(w.state for w in self.workers)
        return {"state": self.state,
                "workers": {s: counts.get(s, 0) for s in ("starting", "warm", "draining")},
                "pids": [w.pid for w in self.workers if w.pid],
                "queued": self.queued, "in_flight": sum(w.in_flight for w in self.workers),
                "cold_starts": self.cold_starts, "last_cold_start": self.last_cold_start}

    @property
    def queued(self) -> int:
        return sum(1 for f in self._waiters if not f.done())

    async def ensure_tokenizer(self) -> ModelTokenizer:
        """The model's own tokenizer (vocab only), for exact counts before dispatch.
        Fetching the model is shared with the cold start and bounded by its limit."""
        if self.tokenizer is not None:
            return self.tokenizer
        if _failed(self._prep):
            self._prep = asyncio.create_task(self._load_tokenizer(), name=f"prepare:{self.name}")
        timeout = self.config.pool.cold_start_timeout
        try:
            return await asyncio.wait_for(asyncio.shield(self._prep), timeout)
        except asyncio.TimeoutError:
            raise ModelLoading(f"model '{self.name}' is still loading after {timeout:g}s",
                               retry_after=5) from None

    async def _load_tokenizer(self) -> ModelTokenizer:
        fetched = await asyncio.shield(self._fetch())
        loop = asyncio.get_running_loop()
        self.tokenizer = await loop.run_in_executor(None, ModelTokenizer, str(fetched.path))
        return self.tokenizer

    def _fetch(self) -> asyncio.Task[FetchResult]:
        """One fetch of the model file per cold period, shared by every waiter."""
        if _failed(self._fetch_task):
            self._fetch_started = time.monotonic()
            self._fetch_task = asyncio.create_task(
                self.store.fetch(self.name, self.config.source, sha256=self.config.sha256),
                name=f"fetch:{self.name}")
        return self._fetch_task

    # ---- admission -----------------------------------------------------------

    @asynccontextmanager
    async def lease(self) -> AsyncIterator[Lease]:
        worker = await self._acquire()
        try:
            yield Lease(self, worker)
        finally:
            self._release(worker)

    async def _acquire(self) -> Worker:
        if self._closed:
            raise Overloaded(f"model '{self.name}' is shutting down")
        worker = self._free_worker()
        if worker is not None and not self._waiters:
            worker.in_flight += 1
            return worker
        if self.queued >= self.config.pool.queue_limit:
            raise Overloaded(f"model '{self.name}': {self.queued} requests already waiting "
                             f"(queue_limit {self.config.pool.queue_limit})", retry_after=2)
        cold = not any(w.state == "warm" for w in self.workers)
        fut: asyncio.Future[Worker] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        self._scale_up()
        self._dispatch()
        timeout = self.config.pool.cold_start_timeout if cold else self.config.pool.queue_timeout
        try:
            return await asyncio.wait_for(asyncio.shield(fut), timeout)
        except asyncio.TimeoutError:
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                return fut.result()
            fut.cancel()
            if cold:
                raise ModelLoading(f"model '{self.name}' is still loading after {timeout:g}s",
                                   retry_after=5) from None
            raise Overloaded(f"model '{self.name}': no free slot within {timeout:g}s",
                             retry_after=2) from None
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                self._release(fut.result())
            fut.cancel()
            raise
        finally:
            self._prune_waiters()

    def _free_worker(self) -> Worker | None:
        warm = [w for w in self.workers
                if w.state == "warm" and w.in_flight < self.config.pool.slots]
        return min(warm, key=lambda w: w.in_flight) if warm else None

    def _release(self, worker: Worker) -> None:
        worker.in_flight = max(0, worker.in_flight - 1)
        worker.last_used = time.monotonic()
        self._dispatch()

    def _dispatch(self) -> None:
        while self._waiters:
            fut = self._waiters[0]
            if fut.done():
                self._waiters.popleft()
                continue
            worker = self._free_worker()
            if worker is None:
                return
            self._waiters.popleft()
            worker.in_flight += 1
            fut.set_result(worker)

    def _prune_waiters(self) -> None:
        while self._waiters and self._waiters[0].done():
            self._waiters.popleft()

    def _scale_up(self) -> None:
        slots = self.config.pool.slots
        capacity = sum(slots for w in self.workers if w.state in ("starting", "warm"))
        demand = sum(w.in_flight for w in self.workers) + self.queued
        while demand > capacity and len(self.workers) < self.config.pool.max_workers:
            self._spawn()
            capacity += slots

    # ---- workers -------------------------------------------------------------

    def _spawn(self) -> Worker:
        worker = Worker(model=self.name)
        self.workers.append(worker)
        task = asyncio.create_task(self._cold_start(worker), name=f"cold-start:{self.name}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return worker

    async def _cold_start(self, worker: Worker) -> None:
        t0 = time.monotonic()
        try:
            fetch = self._fetch()
            t0 = min(t0, self._fetch_started)  # a request may have begun the fetch already
            fetched = await asyncio.shield(fetch)
            await self.ensure_tokenizer()
            t_fetch = time.monotonic()
            log.info("model %s: starting a worker (%s)", self.name,
                     "downloaded" if fetched.downloaded else "cached model")
            ready = await self._launch(worker, str(fetched.path))
        except Exception as exc:
            self._start_failed(worker, exc)
            return
        now = time.monotonic()
        spawn_s = max(0.0, (now - t_fetch) - ready["load_s"])
        worker.cold_start = {
            "at": time.time(), "pid": worker.pid, "downloaded": fetched.downloaded,
            "fetch_s": round(t_fetch - t0, 4), "process_start_s": round(spawn_s, 4),
            "load_s": ready["load_s"], "ready_s": round(now - t0, 4), "first_token_s": None}
        worker.state, worker.ready_at, worker.last_used = "warm", now, now
        self._fetch_task = None  # the next cold start checks the cache (and S3) again
        self.cold_starts += 1
        self.last_cold_start = worker.cold_start
        log.info("model %s: worker pid %s warm in %.2fs (fetch %.2fs, process %.2fs, load %.2fs)",
                 self.name, worker.pid, now - t0, t_fetch - t0, spawn_s, ready["load_s"])
        if self.on_cold_start:
            self.on_cold_start(self.name, worker.cold_start)
        watcher = asyncio.create_task(self._watch(worker), name=f"watch:{worker.pid}")
        self._tasks.add(watcher)
        watcher.add_done_callback(self._tasks.discard)
        self._dispatch()

    async def _launch(self, worker: Worker, path: str) -> dict[str, Any]:
        p = self.config.pool
        cmd = [sys.executable, "-m", "runtime.pool.worker", "--model", path,
               "--slots", str(p.slots), "--n-ctx", str(p.n_ctx),
               "--n-gpu-layers", str(p.n_gpu_layers), "--n-batch", str(p.n_batch)]
        if p.n_threads:
            cmd += ["--n-threads", str(p.n_threads)]
        worker.proc = await asyncio.create_subprocess_exec(
            *cmd, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            env={**os.environ, "PYTHONUNBUFFERED": "1"})
        log.info("model %s: worker pid %s loading %s", self.name, worker.pid, os.path.basename(path))
        try:
            line = await asyncio.wait_for(worker.proc.stdout.readline(), p.cold_start_timeout)
        except asyncio.TimeoutError:
            worker.proc.kill()
            raise ModelLoading(f"model '{self.name}': worker did not load within "
                               f"{p.cold_start_timeout:g}s", retry_after=5) from None
        try:
            ready = json.loads(line or b"{}")
        except json.JSONDecodeError:
            ready = {}
        if ready.get("event") != "ready":
            await worker.proc.wait()
            reason = ready.get("error") or f"exit code {worker.proc.returncode}"
            raise ModelUnavailable(f"model '{self.name}': worker failed to load the model ({reason})")
        worker.port = int(ready["port"])
        return ready

    def _start_failed(self, worker: Worker, exc: Exception) -> None:
        if worker in self.workers:
            self.workers.remove(worker)
        if worker.proc and worker.proc.returncode is None:
            worker.proc.kill()
        err = exc if isinstance(exc, LlmfnError) else ModelUnavailable(
            f"model '{self.name}': cold start failed ({type(exc).__name__})")
        log.error("%s", err.message)
        if not any(w.state in ("starting", "warm") for w in self.workers):
            for fut in self._waiters:
                if not fut.done():
                    fut.set_exception(err)
            self._prune_waiters()

    async def _watch(self, worker: Worker) -> None:
        code = await worker.proc.wait()
        if worker.state != "draining":
            log.warning("model %s: worker pid %s exited unexpectedly (code %s)",
                        self.name, worker.pid, code)
            if worker in self.workers:
                self.workers.remove(worker)
            if self._waiters and not self._closed:
                self._scale_up()
            self._ensure_min()

    async def worker_failed(self, worker: Worker, exc: BaseException) -> UpstreamError:
        dead = False
        if worker.proc is not None:
            try:  # a broken connection usually means the process is exiting: give it a moment
                await asyncio.wait_for(asyncio.shield(worker.proc.wait()), 1.0)
                dead = True
            except asyncio.TimeoutError:
                pass
        what = "died" if dead else "failed"
        log.warning("model %s: worker pid %s %s mid-request (%s)", self.name, worker.pid, what,
                    type(exc).__name__)
        return UpstreamError(f"model '{self.name}': worker {what} mid-request")

    def note_first_token(self, worker: Worker) -> None:
        cs = worker.cold_start
        if cs is not None and cs["first_token_s"] is None:
            cs["first_token_s"] = round(time.monotonic() - worker.ready_at + cs["ready_s"], 4)

    def _ensure_min(self) -> None:
        if self._closed:
            return
        while len(self.workers) < self.config.pool.min_workers:
            self._spawn()

    async def _reap_idle(self) -> None:
        p = self.config.pool
        period = min(1.0, p.idle_timeout / 4)
        while True:
            await asyncio.sleep(period)
            now = time.monotonic()
            warm = [w for w in self.workers if w.state == "warm"]
            for w in sorted(warm, key=lambda w: w.last_used):
                if len([x for x in self.workers if x.state == "warm"]) <= p.min_workers:
                    break
                if w.in_flight == 0 and now - w.last_used >= p.idle_timeout:
                    log.info("model %s: worker pid %s idle for %.0fs, stopping",
                             self.name, w.pid, now - w.last_used)
                    await self._stop_worker(w)

    async def _stop_worker(self, worker: Worker) -> None:
        worker.state = "draining"
        proc = worker.proc
        if proc is not None and proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except asyncio.TimeoutError:
                proc.kill()
                await proc.wait()
        if worker in self.workers:
            self.workers.remove(worker)


def _failed(task: asyncio.Task | None) -> bool:
    """True when there is no task, or it ended without a result (so start another)."""
    if task is None:
        return True
    return task.done() and (task.cancelled() or task.exception() is not None)
