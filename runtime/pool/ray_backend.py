"""The ray backend: each worker is a Ray actor (``ray_worker.WorkerActor``)
placed by the cluster's scheduler with the pool's resource request (CPUs,
GPUs, custom resources), and reached directly on its node's TCP port with the
worker protocol. Ray owns placement and the actor's process; the pool keeps
its queue, scaling, idle timeout and states. Imported only when a pool uses
this backend, so the local backend needs no Ray."""
from __future__ import annotations

import asyncio
import logging
import secrets
from typing import TYPE_CHECKING, Any

import ray
from ray.exceptions import RayError

from runtime.errors import ModelUnavailable
from runtime.pool.client import WorkerClient
from runtime.pool.local import engine_spec
from runtime.pool.ray_worker import WorkerActor
from runtime.pool.store import ModelStore

if TYPE_CHECKING:
    from runtime.pool.backend import WorkerHandle
    from runtime.pool.store import FetchResult
    from runtime.template.model_spec import ModelConfig

log = logging.getLogger("llmfn.pool")
NAMESPACE = "llmfn"
# start and until_stopped run side by side in the actor; the tokens go over TCP
Actor = ray.remote(max_concurrency=2, max_restarts=0)(WorkerActor)


class RayProcess:
    """A worker actor. It ends when the pool kills it (idle, shutdown) or when Ray
    loses it (its node, OOM, a kill); ``wait`` learns either way from the
    actor's ``until_stopped``, which raises once the actor is dead."""

    def __init__(self, actor: Any, name: str):
        self.actor, self.name, self.pid = actor, name, None
        self.placed: dict[str, Any] = {}
        self._ended: asyncio.Task | None = None

    def where(self) -> dict[str, Any]:
        return {"backend": "ray", "actor": self.name, "pid": self.pid, **self.placed}

    def place(self, ready: dict[str, Any]) -> None:
        self.pid = ready["pid"]
        self.placed = {"actor_id": ready["actor_id"], "node_id": ready["node_id"], "node_ip": ready["host"],
                       "resources": ready["resources"]}

    async def wait(self) -> str:
        if self._ended is None:
            self._ended = asyncio.ensure_future(self._until_dead())
        return await asyncio.shield(self._ended)

    async def _until_dead(self) -> str:
        try:
            await self.actor.until_stopped.remote()
        except RayError as exc:  # the actor died (or Ray itself is gone)
            return type(exc).__name__
        return "stopped"

    async def stop(self) -> None:
        self.kill()
        try:
            await asyncio.wait_for(self.wait(), 10)
        except TimeoutError:
            log.warning("worker actor %s: no word of its end 10s after it was killed", self.name)

    def kill(self) -> None:
        """Ends the actor's process, so its memory (and GPU memory) is freed on its node."""
        ray.kill(self.actor, no_restart=True)


class RayBackend:
    """Starts the workers of every ray pool on one Ray cluster, which it joins
    (or starts locally) when the gateway starts."""
    fetches_on_node = True

    def __init__(self, address: str | None, store: ModelStore):
        self.address = address
        # each node fetches into its own cache at this path (the nodes' disks, not the gateway's)
        self.cache_dir, self.s3_endpoint_url = str(store.cache_dir), store.endpoint_url
        self._joined = False

    async def start(self) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self._join)

    def _join(self) -> None:
        if ray.is_initialized():  # this process is already a driver of a cluster: use it
            return
        ray.init(address=self.address, namespace=NAMESPACE, log_to_driver=False, include_dashboard=False,
                 configure_logging=False)
        self._joined = True
        log.info("ray backend: joined the cluster at %s", ray.get_runtime_context().gcs_address)

    def spare_state(self, spec: dict[str, Any] | None) -> None:
        return None  # a node keeps no spare: scaled to zero, a ray pool holds nothing anywhere

    async def launch(self, worker: WorkerHandle, model: ModelConfig, fetched: FetchResult | None) -> dict[str, Any]:
        p = model.pool
        name = f"{model.name}-{secrets.token_hex(4)}"
        actor = Actor.options(num_cpus=p.num_cpus, num_gpus=p.num_gpus, resources=p.resources or None,
                              name=name, namespace=NAMESPACE).remote()
        worker.process = process = RayProcess(actor, name)
        secret = secrets.token_urlsafe(32)
        # in a task's arguments, not the actor's: Ray keeps an actor's creation arguments for its life
        cfg = {**engine_spec("", p), "n_gpu_layers": p.n_gpu_layers, "secret": secret, "name": model.name,
               "source": model.source, "sha256": model.sha256, "cache_dir": self.cache_dir,
               "s3_endpoint_url": self.s3_endpoint_url}
        log.info("model %s: placing a worker actor (%s)", model.name, _request(p))
        ready = await actor.start.remote(cfg)
        if ready.get("event") != "ready":
            raise ModelUnavailable(f"model '{model.name}': worker failed to load the model ({ready.get('error')})")
        process.place(ready)
        log.info("model %s: worker actor pid %s on node %s (%s)", model.name, ready["pid"],
                 ready["host"], ready["node_id"][:12])
        worker.client = await WorkerClient.connect_tcp(ready["host"], ready["port"], secret)
        return {**ready, "spare": "new"}

    async def close(self) -> None:
        if self._joined:
            await asyncio.get_running_loop().run_in_executor(None, ray.shutdown)
            self._joined = False


def _request(p) -> str:
    return ", ".join(f"{k}={v:g}" for k, v in {"CPU": p.num_cpus, "GPU": p.num_gpus, **p.resources}.items() if v)
