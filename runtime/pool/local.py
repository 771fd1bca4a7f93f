"""The local backend: worker processes (``python -m runtime.pool.worker``) on
this host, reached on private Unix sockets, and the spare interpreters kept for
their cold starts (``Launcher``). It must not queue, scale or decide when a
worker starts or stops: ``ModelPool`` does."""
from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import Awaitable, Callable
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from runtime.errors import ModelLoading, ModelUnavailable
from runtime.pool.client import WorkerClient

if TYPE_CHECKING:
    from runtime.pool.backend import WorkerHandle
    from runtime.pool.store import FetchResult
    from runtime.template.model_spec import ModelConfig

log = logging.getLogger("llmfn.pool")


class SpareState(StrEnum):
    """A spare interpreter kept for the next cold start."""
    STARTING = "starting"
    READY = "ready"


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


_HOST = socket.gethostname()


class LocalProcess:
    """A worker process of this host."""

    def __init__(self, proc: asyncio.subprocess.Process):
        self.proc, self.pid = proc, proc.pid

    def where(self) -> dict[str, Any]:
        return {"backend": "local", "node_ip": _HOST, "pid": self.pid}

    async def wait(self) -> int:
        return await self.proc.wait()

    async def stop(self) -> None:
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()

    def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()


class LocalBackend:
    """Starts a pool's workers as processes of this host, from spares when there are."""
    fetches_on_node = False

    def __init__(self, launcher: Launcher,
                 connect: Callable[[str, str], Awaitable[WorkerClient]] = WorkerClient.connect):
        self.launcher = launcher
        self._connect = connect  # how a loaded worker is reached (its socket and secret)

    async def start(self) -> None:
        pass  # the spares are the launcher's, shared by every local pool

    def spare_state(self, spec: dict[str, Any] | None) -> SpareState | None:
        return self.launcher.state(spec)

    async def launch(self, worker: WorkerHandle, model: ModelConfig, fetched: FetchResult | None) -> dict[str, Any]:
        """Hand the model to a (spare) interpreter, wait until it is loaded, connect."""
        p, path = model.pool, str(fetched.path)
        proc, spare = await self.launcher.take(engine_spec(path, p) if p.n_gpu_layers == 0 else None)
        worker.process = LocalProcess(proc)
        socket_path, secret = self.launcher.socket_path(), secrets.token_urlsafe(32)
        cfg = {**engine_spec(path, p), "n_gpu_layers": p.n_gpu_layers, "socket": socket_path, "secret": secret}
        proc.stdin.write(json.dumps(cfg).encode() + b"\n")
        log.info("model %s: worker pid %s loading %s", model.name, proc.pid, os.path.basename(path))
        try:
            line = await asyncio.wait_for(proc.stdout.readline(), p.cold_start_timeout)
        except TimeoutError:
            proc.kill()
            raise ModelLoading(f"model '{model.name}': worker did not load within "
                               f"{p.cold_start_timeout:g}s", retry_after=5) from None
        try:
            ready = json.loads(line or b"{}")
        except json.JSONDecodeError:
            ready = {}
        if ready.get("event") != "ready":
            await proc.wait()
            reason = ready.get("error") or f"exit code {proc.returncode}"
            raise ModelUnavailable(f"model '{model.name}': worker failed to load the model ({reason})")
        worker.client = await self._connect(socket_path, secret)
        if spare == "preloaded" and not ready.get("prepared"):
            spare = "spare"  # prepared for another engine: it only saved the interpreter start
        return {**ready, "spare": spare}

    async def close(self) -> None:
        pass
