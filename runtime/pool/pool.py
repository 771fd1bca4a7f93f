"""``ModelPool``: the workers of one model, scaled between ``min_workers`` and
``max_workers``, with a bounded wait queue (the activator) in front. States:
cold -> starting -> warm -> draining -> cold. Where a worker runs (a local
process, a Ray actor) is its backend's business (``backend``)."""
from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from enum import StrEnum
from typing import Any

from runtime.errors import LlmfnError, ModelLoading, ModelUnavailable, Overloaded, UpstreamError
from runtime.pool.backend import WorkerBackend, WorkerHandle, WorkerState
from runtime.pool.client import ConnectionLost, Event, Text, WorkerClient, WorkerRefused
from runtime.pool.local import Launcher, LocalBackend, engine_spec
from runtime.pool.protocol import Kind
from runtime.pool.store import FetchResult, ModelStore
from runtime.pool.tokenizer import ModelTokenizer
from runtime.template.model_spec import ModelConfig

log = logging.getLogger("llmfn.pool")


class PoolState(StrEnum):
    """The pool's state is that of its most useful worker, or cold without any."""
    COLD = "cold"
    STARTING = "starting"
    WARM = "warm"
    DRAINING = "draining"


class Lease:
    """``n`` sequences of one warm worker, held for one request."""

    def __init__(self, pool: ModelPool, worker: WorkerHandle, n: int = 1):
        self.pool, self.worker, self.n = pool, worker, n

    async def generate(self, body: dict[str, Any], on_sent: Callable[[], None] | None = None
                       ) -> AsyncIterator[Event]:
        """The worker's events; leaving early cancels the generation in the worker,
        a dead worker becomes ``UpstreamError``. ``on_sent``: once the worker has the request."""
        first = True
        try:
            async for event in self.worker.client.generate(body, on_sent):
                if first and isinstance(event, Text):
                    first = False
                    self.pool.note_first_token(self.worker)
                yield event
        except WorkerRefused as exc:
            raise UpstreamError(f"model '{self.pool.name}': {exc}") from None
        except (ConnectionLost, ConnectionError) as exc:
            raise await self.pool.worker_failed(self.worker, exc) from None

    async def embed(self, texts: list[str]) -> dict[str, Any]:
        return await self._call(Kind.EMBED, {"input": texts})

    async def rank(self, query: str, documents: list[str]) -> dict[str, Any]:
        return await self._call(Kind.RANK, {"query": query, "documents": documents})

    async def _call(self, kind: Kind, body: dict[str, Any]) -> dict[str, Any]:
        try:
            return await self.worker.client.call(kind, body)
        except WorkerRefused as exc:
            raise UpstreamError(f"model '{self.pool.name}': {exc}") from None
        except (ConnectionLost, ConnectionError) as exc:
            raise await self.pool.worker_failed(self.worker, exc) from None


class ModelPool:
    def __init__(self, config: ModelConfig, store: ModelStore, *, launcher: Launcher | None = None,
                 on_cold_start: Callable[[str, dict[str, Any]], None] | None = None,
                 connect: Callable[[str, str], Awaitable[WorkerClient]] = WorkerClient.connect,
                 backend: WorkerBackend | None = None):
        self.config = config
        self._own_launcher = launcher is None
        self.launcher = launcher or Launcher(spare=False)
        # local processes unless given another backend (Pools gives ray pools theirs)
        self.backend: WorkerBackend = backend or LocalBackend(self.launcher, connect)
        self.name = config.name
        self.store = store
        self.on_cold_start = on_cold_start
        self.workers: list[WorkerHandle] = []
        self.tokenizer: ModelTokenizer | None = None
        self.last_cold_start: dict[str, Any] | None = None
        self.cold_starts = 0
        self._waiters: collections.deque[asyncio.Future[WorkerHandle]] = collections.deque()
        self._tasks: set[asyncio.Task] = set()
        self._reaper: asyncio.Task | None = None
        self._prep: asyncio.Task | None = None
        self._fetch_task: asyncio.Task | None = None
        self._fetch_started = 0.0
        self._model_path: str | None = None
        self._closed = False

    # ---- lifecycle -----------------------------------------------------------

    async def start(self) -> None:
        self._reaper = asyncio.create_task(self._reap_idle(), name=f"reaper:{self.name}")
        for _ in range(self.config.pool.min_workers):
            self._spawn()
        if self.preloads:
            task = asyncio.create_task(self._prepare_spare(), name=f"spare:{self.name}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    @property
    def preloads(self) -> bool:
        """A local CPU pool of a local or embedded model keeps a spare with the weights mapped."""
        p = self.config.pool
        return p.backend == "local" and p.n_gpu_layers == 0 and not self.config.source.startswith("s3://")

    async def _prepare_spare(self) -> None:
        """A local or embedded model's path is a stat away: map it in a spare now, and
        load the tokenizer, so the first request finds both ready."""
        try:
            fetched = await asyncio.shield(self._fetch())
        except Exception:  # reported by the cold start that needs it
            return
        self._model_path = str(fetched.path)
        self.launcher.prepare(engine_spec(self._model_path, self.config.pool))
        if _failed(self._prep):
            self._prep = asyncio.create_task(self._load_tokenizer(), name=f"prepare:{self.name}")

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
        if self._own_launcher:
            await self.launcher.close()

    @property
    def state(self) -> PoolState:
        states = {w.state for w in self.workers}
        for s in (WorkerState.WARM, WorkerState.STARTING, WorkerState.DRAINING):
            if s in states:
                return PoolState(s)
        return PoolState.COLD

    def status(self) -> dict[str, Any]:
        counts = collections.Counter(w.state for w in self.workers)
        return {"state": self.state,
                "workers": {s: counts.get(s, 0) for s in WorkerState},
                "pids": [w.pid for w in self.workers if w.pid],
                "placement": [w.where() for w in self.workers],
                "queued": self.queued, "in_flight": sum(w.in_flight for w in self.workers),
                "kv_cache_usage_ratio": self.kv_cache_usage(),
                "engines": [{"pid": w.pid, **w.stats} for w in self.workers if w.state == WorkerState.WARM],
                "spare": self.backend.spare_state(self._spare_spec()),
                "cold_starts": self.cold_starts, "last_cold_start": self.last_cold_start}

    def _spare_spec(self) -> dict[str, Any] | None:
        return engine_spec(self._model_path, self.config.pool) if self._model_path else None

    def kv_cache_usage(self) -> float:
        warm = [w for w in self.workers if w.state == WorkerState.WARM]
        if not warm:
            return 0.0
        return round(sum(w.stats.get("kv_cache_usage_ratio", 0.0) for w in warm) / len(warm), 4)

    @property
    def queued(self) -> int:
        return sum(1 for f in self._waiters if not f.done())

    async def ensure_tokenizer(self) -> ModelTokenizer:
        """The model's own tokenizer (vocab only), for exact counts before dispatch.
        Fetching the model is shared with the cold start and bounded by its limit.
        A request is on its way: a cold pool starts a worker at once, beside it."""
        if not self.workers and not self._closed:
            self._spawn()
        if self.tokenizer is not None:
            return self.tokenizer
        if _failed(self._prep):
            self._prep = asyncio.create_task(self._load_tokenizer(), name=f"prepare:{self.name}")
        timeout = self.config.pool.cold_start_timeout
        try:
            return await asyncio.wait_for(asyncio.shield(self._prep), timeout)
        except TimeoutError:
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
    async def lease(self, n: int = 1) -> AsyncIterator[Lease]:
        """``n`` sequences of one worker (``n`` choices generated side by side)."""
        n = max(1, min(n, self.config.pool.slots))
        worker = await self._acquire(n)
        try:
            yield Lease(self, worker, n)
        finally:
            self._release(worker, n)

    async def _acquire(self, n: int) -> WorkerHandle:
        if self._closed:
            raise Overloaded(f"model '{self.name}' is shutting down")
        worker = self._free_worker(n)
        if worker is not None and not self._waiters:
            worker.in_flight += n
            return worker
        if self.queued >= self.config.pool.queue_limit:
            raise Overloaded(f"model '{self.name}': {self.queued} requests already waiting "
                             f"(queue_limit {self.config.pool.queue_limit})", retry_after=2)
        cold = not any(w.state == WorkerState.WARM for w in self.workers)
        fut: asyncio.Future[WorkerHandle] = asyncio.get_running_loop().create_future()
        fut.n = n  # type: ignore[attr-defined]
        self._waiters.append(fut)
        self._scale_up()
        self._dispatch()
        timeout = self.config.pool.cold_start_timeout if cold else self.config.pool.queue_timeout
        try:
            return await asyncio.wait_for(asyncio.shield(fut), timeout)
        except TimeoutError:
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
                self._release(fut.result(), n)
            fut.cancel()
            raise
        finally:
            self._prune_waiters()

    def _free_worker(self, n: int = 1) -> WorkerHandle | None:
        warm = [w for w in self.workers
                if w.state == WorkerState.WARM and w.in_flight + n <= self.config.pool.slots]
        return min(warm, key=lambda w: w.in_flight) if warm else None

    def _release(self, worker: WorkerHandle, n: int = 1) -> None:
        worker.in_flight = max(0, worker.in_flight - n)
        worker.last_used = time.monotonic()
        self._dispatch()

    def _dispatch(self) -> None:
        while self._waiters:
            fut = self._waiters[0]
            if fut.done():
                self._waiters.popleft()
                continue
            worker = self._free_worker(fut.n)  # type: ignore[attr-defined]
            if worker is None:
                return
            self._waiters.popleft()
            worker.in_flight += fut.n  # type: ignore[attr-defined]
            fut.set_result(worker)

    def _prune_waiters(self) -> None:
        while self._waiters and self._waiters[0].done():
            self._waiters.popleft()

    def _scale_up(self) -> None:
        slots = self.config.pool.slots
        capacity = sum(slots for w in self.workers if w.state in (WorkerState.STARTING, WorkerState.WARM))
        demand = sum(w.in_flight for w in self.workers) + sum(
            f.n for f in self._waiters if not f.done())  # type: ignore[attr-defined]
        while demand > capacity and len(self.workers) < self.config.pool.max_workers:
            self._spawn()
            capacity += slots

    # ---- workers -------------------------------------------------------------

    def _spawn(self) -> WorkerHandle:
        worker = WorkerHandle(model=self.name)
        self.workers.append(worker)
        task = asyncio.create_task(self._cold_start(worker), name=f"cold-start:{self.name}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return worker

    async def _cold_start(self, worker: WorkerHandle) -> None:
        t0 = time.monotonic()
        try:
            fetched = None  # a backend that fetches on the worker's node reports its own fetch
            if not self.backend.fetches_on_node:
                fetch = self._fetch()
                if not fetch.done():
                    t0 = min(t0, self._fetch_started)  # a request may have begun the fetch already
                fetched = await asyncio.shield(fetch)
                log.info("model %s: starting a worker (%s)", self.name,
                         "downloaded" if fetched.downloaded else "cached model")
            t_fetch = time.monotonic()
            ready = await asyncio.wait_for(self.backend.launch(worker, self.config, fetched),
                                           self.config.pool.cold_start_timeout)
        except TimeoutError:
            self._start_failed(worker, ModelLoading(
                f"model '{self.name}': worker did not start within "
                f"{self.config.pool.cold_start_timeout:g}s", retry_after=5))
            return
        except Exception as exc:
            self._start_failed(worker, exc)
            return
        except asyncio.CancelledError:
            self._start_failed(worker, ModelUnavailable(f"model '{self.name}': cold start cancelled"))
            raise
        now = time.monotonic()
        fetch_s = ready.get("fetch_s", t_fetch - t0)
        spawn_s = max(0.0, (now - t0) - fetch_s - ready["load_s"])
        worker.cold_start = {
            "at": time.time(), "pid": worker.pid,
            "downloaded": ready.get("downloaded", fetched.downloaded if fetched else False),
            "spare": ready["spare"], "fetch_s": round(fetch_s, 4),
            "process_start_s": round(spawn_s, 4), "load_s": ready["load_s"],
            "ready_s": round(now - t0, 4), "first_token_s": None}
        worker.state, worker.ready_at, worker.last_used = WorkerState.WARM, now, now
        self._fetch_task = None  # the next cold start checks the cache (and S3) again
        self.cold_starts += 1
        self.last_cold_start = worker.cold_start
        log.info("model %s: worker pid %s warm in %.2fs (fetch %.2fs, process %.2fs, load %.2fs)",
                 self.name, worker.pid, now - t0, fetch_s, spawn_s, ready["load_s"])
        if self.on_cold_start:
            self.on_cold_start(self.name, worker.cold_start)
        watcher = asyncio.create_task(self._watch(worker), name=f"watch:{worker.pid}")
        self._tasks.add(watcher)
        watcher.add_done_callback(self._tasks.discard)
        self._dispatch()

    def _start_failed(self, worker: WorkerHandle, exc: Exception) -> None:
        if worker in self.workers:
            self.workers.remove(worker)
        if worker.process is not None:
            worker.process.kill()
        err = exc if isinstance(exc, LlmfnError) else ModelUnavailable(
            f"model '{self.name}': cold start failed ({type(exc).__name__})")
        log.error("%s", err.message)
        if not any(w.state in (WorkerState.STARTING, WorkerState.WARM) for w in self.workers):
            for fut in self._waiters:
                if not fut.done():
                    fut.set_exception(err)
            self._prune_waiters()

    async def _watch(self, worker: WorkerHandle) -> None:
        code = await worker.process.wait()
        if worker.client is not None:
            await worker.client.close()
        if worker.state != WorkerState.DRAINING:
            log.warning("model %s: worker pid %s exited unexpectedly (code %s)",
                        self.name, worker.pid, code)
            if worker in self.workers:
                self.workers.remove(worker)
            if self._waiters and not self._closed:
                self._scale_up()
            self._ensure_min()

    async def worker_failed(self, worker: WorkerHandle, exc: BaseException) -> UpstreamError:
        dead = False
        if worker.process is not None:
            try:  # a broken connection usually means the process is exiting: give it a moment
                await asyncio.wait_for(asyncio.shield(worker.process.wait()), 1.0)
                dead = True
            except TimeoutError:
                pass
        what = "died" if dead else "failed"
        log.warning("model %s: worker pid %s %s mid-request (%s)", self.name, worker.pid, what,
                    type(exc).__name__)
        return UpstreamError(f"model '{self.name}': worker {what} mid-request")

    def note_first_token(self, worker: WorkerHandle) -> None:
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
            await self.refresh_stats()
            now = time.monotonic()
            warm = [w for w in self.workers if w.state == WorkerState.WARM]
            for w in sorted(warm, key=lambda w: w.last_used):
                if len([x for x in self.workers if x.state == WorkerState.WARM]) <= p.min_workers:
                    break
                if w.in_flight == 0 and now - w.last_used >= p.idle_timeout:
                    log.info("model %s: worker pid %s idle for %.0fs, stopping",
                             self.name, w.pid, now - w.last_used)
                    await self._stop_worker(w)

    async def refresh_stats(self) -> None:
        """Each warm worker's engine figures (KV cache use), for ``/metrics``."""
        for w in [w for w in self.workers if w.state == WorkerState.WARM and w.client and not w.client.closed]:
            try:
                w.stats = await asyncio.wait_for(w.client.call(Kind.STATS), 1.0)
            except (TimeoutError, ConnectionLost, WorkerRefused, ConnectionError):
                pass

    async def _stop_worker(self, worker: WorkerHandle) -> None:
        worker.state = WorkerState.DRAINING
        if worker.client is not None:
            await worker.client.close()
        if worker.process is not None:
            await worker.process.stop()
        if worker in self.workers:
            self.workers.remove(worker)


def _failed(task: asyncio.Task | None) -> bool:
    """True when there is no task, or it ended without a result (so start another)."""
    if task is None:
        return True
    return task.done() and (task.cancelled() or task.exception() is not None)
