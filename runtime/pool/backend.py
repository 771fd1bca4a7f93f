"""Where a pool's workers run: the seam between ``ModelPool``, which decides when
a worker starts and stops, and the backend that places and starts it. ``local``
runs worker processes on this host; ``ray_backend`` runs them as Ray actors on a
cluster's nodes. A backend owns placement and process lifecycle only: queueing,
scaling, idle timeouts and states stay in the pool, whatever the backend."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from runtime.pool.client import WorkerClient
    from runtime.pool.store import FetchResult
    from runtime.template.model_spec import ModelConfig


class WorkerProcess(Protocol):
    """One running worker, wherever it runs."""
    pid: int | None

    def where(self) -> dict[str, Any]:
        """Where it runs: the backend, and on a cluster its node and the resources it holds."""

    async def wait(self) -> int | str | None:
        """Returns once the worker has ended: its exit code, or why it ended."""

    async def stop(self) -> None:
        """End it (gracefully where the backend can) and wait until it has."""

    def kill(self) -> None: ...


class WorkerState(StrEnum):
    STARTING = "starting"  # launched, loading the model
    WARM = "warm"  # serving
    DRAINING = "draining"  # finishing what it has, then it exits


@dataclass
class WorkerHandle:
    model: str
    state: WorkerState = WorkerState.STARTING
    process: WorkerProcess | None = None
    client: WorkerClient | None = None
    in_flight: int = 0  # sequences in use
    last_used: float = field(default_factory=time.monotonic)
    ready_at: float = 0.0
    cold_start: dict[str, Any] | None = None
    stats: dict[str, Any] = field(default_factory=dict)  # the worker's last STATS answer

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def where(self) -> dict[str, Any]:
        return {"state": self.state, **(self.process.where() if self.process else {})}


class WorkerBackend(Protocol):
    # True: the worker fetches the model where it runs (the pool hands it the source);
    # False: the pool fetches it on this host and hands over the local path.
    fetches_on_node: bool

    async def start(self) -> None: ...

    async def launch(self, worker: WorkerHandle, model: ModelConfig, fetched: FetchResult | None) -> dict[str, Any]:
        """Start a worker for ``model``, load it, connect to it: sets ``worker.process`` as
        soon as there is one (so a failed start can be killed) and ``worker.client``.
        Returns its ready report: ``load_s``, ``spare``, and ``fetch_s``/``downloaded``
        when it fetched the model itself."""

    def spare_state(self, spec: dict[str, Any] | None) -> Any:
        """The spare kept for this model's next cold start, None without one."""

    async def close(self) -> None: ...
