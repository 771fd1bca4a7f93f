"""``ModelPool``: the worker processes of one model, scaled between
``min_workers`` and ``max_workers``, with a bounded wait queue (the activator)
in front. States: cold -> starting -> warm -> draining -> cold."""
from __future__ import annotations

import asyncio
import collections
import json
import logging
import os
import secrets
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from runtime.errors import LlmfnError, ModelLoading, ModelUnavailable, Overloaded, UpstreamError
from runtime.pool.client import ConnectionLost, Event, Text, WorkerClient, WorkerRefused
from runtime.pool.protocol import Kind
from runtime.pool.store import FetchResult, ModelStore
from runtime.pool.tokenizer import ModelTokenizer
from runtime.template.model_spec import ModelConfig

log = logging.getLogger("llmfn.pool")


class WorkerState(StrEnum):
    STARTING = "starting"  # launched, loading the model
    WARM = "warm"  # serving
    DRAINING = "draining"  # finishing what it has, then it exits


class PoolState(StrEnum):
    """The pool's state is that of its most useful worker, or cold without any."""
    COLD = "cold"
    STARTING = "starting"
    WARM = "warm"
    DRAINING = "draining"


class SpareState(StrEnum):
    """A spare interpreter kept for the next cold start."""
    STARTING = "starting"
    READY = "ready"


@dataclass
class WorkerHandle:
    model: str
    state: WorkerState = WorkerState.STARTING
    proc: asyncio.subprocess.Process | None = None
    client: WorkerClient | None = None
    in_flight: int = 0  # sequences in use
    last_used: float = field(default_factory=time.monotonic)
    ready_at: float = 0.0
    cold_start: dict[str, Any] | None = None
    stats: dict[str, Any] = field(default_factory=dict)  # the worker's last STATS answer

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None


class Lease:
    """``n`` sequences of one warm worker, held for one request."""

    def __init__(self, pool: ModelPool, worker: WorkerHandle, n: int = 1):
        self.pool, self.worker, self.n = pool, worker, n

    async def generate(self, body: dict[str, Any]) -> AsyncIterator[Event]:
        """The worker's events; leaving early cancels the generation in the worker,
        a dead worker becomes ``UpstreamError``."""
        first = True
        try:
            async for event in self.worker.client.generate(body):
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


def worker_env() -> dict[str, str]:
    """A worker's environment. llama.cpp's OpenMP threads spin between decode steps; on a
    small machine that starves the gateway beside them, so they spin briefly, then sleep."""
    return {"GOMP_SPINCOUNT": "10000", **os.environ, "PYTHONUNBUFFERED": "1"}


def engine_spec(path: str, p) -> dict[str, Any]:
    """What a worker's engine is made of: a spare prepared with the same spec is
    handed over as it is."""
    return {"model": path, "slots": p.slots, "n_ctx": p.n_ctx, "n_batch": p.n_batch,
            "n_threads": p.n_threads, "kv_unified": p.kv_unified}


def _key(spec: dict[str, Any] | None) -> str | None:
    return json.dumps(spec, sort_keys=True) if spec else None


class Launcher:
    """Worker interpreters started ahead of need. A spare has imported llama.cpp
    and waits for a model, so a cold start pays no interpreter start; a CPU
    pool's spare has also mapped its model's weights (file-backed pages shared
    with the page cache) and created its context (the KV cache, in memory while
    it waits), so a cold start pays only the handover. GPU pools keep only the
    plain spare: scaled to zero, they hold no GPU memory."""

    def __init__(self, *, spare: bool = True, refill_delay: float = 2.0):
        self.spare_enabled = spare
        self.refill_delay = refill_delay
        self.socket_dir = tempfile.mkdtemp(prefix="llmfn-workers-")  # 0700: the sockets are ours alone
        # by the engine spec they have prepared (None: none); each with the task that
        # waits for it to be ready
        self._spares: dict[str | None, tuple[asyncio.subprocess.Process, asyncio.Task]] = {}
        self._tasks: set[asyncio.Task] = set()

    async def start(self) -> None:
        if self.spare_enabled:
            await self._fill(None)

    def prepare(self, spec: dict[str, Any]) -> None:
        """Keep a spare with this engine ready: weights mapped, context created (CPU pools)."""
        if self.spare_enabled:
            self._later(self._fill(spec))

    async def take(self, spec: dict[str, Any] | None) -> tuple[asyncio.subprocess.Process, str]:
        """A process waiting for a model, and what it was: "preloaded", "spare" or "new".
        ``spec``: the engine to prepare for next time (None: a plain spare)."""
        kind, proc = "new", None
        for key, label in ((_key(spec), "preloaded"), (None, "spare")):
            spare = self._spares.pop(key, None)
            if spare is not None and spare[0].returncode is None:
                proc, kind = spare[0], label
                await spare[1]  # still starting: it is the quickest way to a worker all the same
                break
        if proc is None:
            proc = await self._spawn(None)
            await self._ready(proc, None)
        if self.spare_enabled:
            self._later(self._fill(spec, delay=self.refill_delay))
        return proc, kind

    def socket_path(self) -> str:
        return os.path.join(self.socket_dir, f"w{secrets.token_hex(6)}.sock")

    def _later(self, coro) -> None:
        task = asyncio.create_task(coro, name="spare-worker")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def state(self, spec: dict[str, Any] | None) -> SpareState | None:
        """The spare for this model, None without one."""
        spare = self._spares.get(_key(spec)) or self._spares.get(None)
        if spare is None or spare[0].returncode is not None:
            return None
        return SpareState.READY if spare[1].done() else SpareState.STARTING

    async def _fill(self, spec: dict[str, Any] | None, delay: float = 0.0) -> None:
        # After a cold start, not at once: a new interpreter would compete with the model load.
        await asyncio.sleep(delay)
        key = _key(spec)
        current = self._spares.get(key)
        if current is None or current[0].returncode is not None:
            proc = await self._spawn(spec)
            self._spares[key] = (proc, asyncio.create_task(self._ready(proc, spec), name="spare-ready"))

    @staticmethod
    async def _ready(proc: asyncio.subprocess.Process, spec: dict[str, Any] | None) -> None:
        """Wait for the spare's own word: imported (and, preloading, ready to serve)."""
        for _ in range(2 if spec else 1):
            if not await proc.stdout.readline():
                return

    @staticmethod
    async def _spawn(spec: dict[str, Any] | None) -> asyncio.subprocess.Process:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "runtime.pool.worker", stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, env=worker_env())
        if spec:
            proc.stdin.write(json.dumps({"preload": spec}).encode() + b"\n")
        return proc

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for proc, ready in self._spares.values():
            ready.cancel()
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        self._spares.clear()
        shutil.rmtree(self.socket_dir, ignore_errors=True)


class ModelPool:
    def __init__(self, config: ModelConfig, store: ModelStore, *, launcher: Launcher | None = None,
                 on_cold_start: Callable[[str, dict[str, Any]], None] | None = None,
                 connect: Callable[[str, str], Awaitable[WorkerClient]] = WorkerClient.connect):
        self.config = config
        self._connect = connect  # how a loaded worker is reached (its socket and secret)
        self._own_launcher = launcher is None
        self.launcher = launcher or Launcher(spare=False)
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
        """A CPU pool of a local or embedded model keeps a spare with the weights mapped."""
        return self.config.pool.n_gpu_layers == 0 and not self.config.source.startswith("s3://")

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
                "queued": self.queued, "in_flight": sum(w.in_flight for w in self.workers),
                "kv_cache_usage_ratio": self.kv_cache_usage(),
                "engines": [{"pid": w.pid, **w.stats} for w in self.workers if w.state == WorkerState.WARM],
                "spare": self.launcher.state(self._spare_spec()),
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
            fetch = self._fetch()
            if not fetch.done():
                t0 = min(t0, self._fetch_started)  # a request may have begun the fetch already
            fetched = await asyncio.shield(fetch)
            t_fetch = time.monotonic()
            log.info("model %s: starting a worker (%s)", self.name,
                     "downloaded" if fetched.downloaded else "cached model")
            ready = await asyncio.wait_for(self._launch(worker, str(fetched.path)),
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
        spawn_s = max(0.0, (now - t_fetch) - ready["load_s"])
        worker.cold_start = {
            "at": time.time(), "pid": worker.pid, "downloaded": fetched.downloaded,
            "spare": ready["spare"], "fetch_s": round(t_fetch - t0, 4),
            "process_start_s": round(spawn_s, 4), "load_s": ready["load_s"],
            "ready_s": round(now - t0, 4), "first_token_s": None}
        worker.state, worker.ready_at, worker.last_used = WorkerState.WARM, now, now
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

    async def _launch(self, worker: WorkerHandle, path: str) -> dict[str, Any]:
        """Hand the model to a (spare) interpreter, wait until it is loaded, connect."""
        p = self.config.pool
        worker.proc, spare = await self.launcher.take(engine_spec(path, p) if p.n_gpu_layers == 0 else None)
        socket_path, secret = self.launcher.socket_path(), secrets.token_urlsafe(32)
        cfg = {**engine_spec(path, p), "n_gpu_layers": p.n_gpu_layers, "socket": socket_path, "secret": secret}
        worker.proc.stdin.write(json.dumps(cfg).encode() + b"\n")
        log.info("model %s: worker pid %s loading %s", self.name, worker.pid, os.path.basename(path))
        try:
            line = await asyncio.wait_for(worker.proc.stdout.readline(), p.cold_start_timeout)
        except TimeoutError:
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
        worker.client = await self._connect(socket_path, secret)
        if spare == "preloaded" and not ready.get("prepared"):
            spare = "spare"  # prepared for another engine: it only saved the interpreter start
        return {**ready, "spare": spare}

    def _start_failed(self, worker: WorkerHandle, exc: Exception) -> None:
        if worker in self.workers:
            self.workers.remove(worker)
        if worker.proc and worker.proc.returncode is None:
            worker.proc.kill()
        err = exc if isinstance(exc, LlmfnError) else ModelUnavailable(
            f"model '{self.name}': cold start failed ({type(exc).__name__})")
        log.error("%s", err.message)
        if not any(w.state in (WorkerState.STARTING, WorkerState.WARM) for w in self.workers):
            for fut in self._waiters:
                if not fut.done():
                    fut.set_exception(err)
            self._prune_waiters()

    async def _watch(self, worker: WorkerHandle) -> None:
        code = await worker.proc.wait()
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
        if worker.proc is not None:
            try:  # a broken connection usually means the process is exiting: give it a moment
                await asyncio.wait_for(asyncio.shield(worker.proc.wait()), 1.0)
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
        proc = worker.proc
        if proc is not None and proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        if worker in self.workers:
            self.workers.remove(worker)


def _failed(task: asyncio.Task | None) -> bool:
    """True when there is no task, or it ended without a result (so start another)."""
    if task is None:
        return True
    return task.done() and (task.cancelled() or task.exception() is not None)
