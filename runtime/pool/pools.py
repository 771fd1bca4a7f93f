"""``Pools``: every configured model's pool, by model name (and alias), with
the launcher of spare worker interpreters they share and, when a pool asks
for it, the Ray backend."""
from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import Callable, Iterable
from typing import Any

from runtime.errors import ModelNotFound
from runtime.pool.backend import WorkerBackend
from runtime.pool.local import Launcher
from runtime.pool.pool import ModelPool
from runtime.pool.store import ModelStore
from runtime.template.model_spec import ModelConfig


class Pools:
    """Every configured model's pool, by model name."""

    def __init__(self, models: Iterable[ModelConfig], store: ModelStore, *, spare_worker: bool = True,
                 on_cold_start: Callable[[str, dict[str, Any]], None] | None = None,
                 ray_address: str | None = None):
        models = list(models)
        self.store = store
        self.launcher = Launcher(spare=spare_worker)
        self.ray = _ray_backend(store, ray_address) if any(m.pool.backend == "ray" for m in models) else None
        self.by_name: dict[str, ModelPool] = {
            m.name: ModelPool(m, store, launcher=self.launcher, on_cold_start=on_cold_start,
                              backend=self.ray if m.pool.backend == "ray" else None)
            for m in models}
        self.aliases = {alias: m.name for m in models for alias in m.aliases}

    def get(self, name: str) -> ModelPool:
        try:
            return self.by_name[self.aliases.get(name, name)]
        except KeyError:
            raise ModelNotFound(f"The model '{name}' does not exist", param="model") from None

    def __iter__(self):
        return iter(self.by_name.values())

    async def start(self) -> None:
        if self.ray is not None:
            await self.ray.start()
        if any(not pool.preloads and pool.config.pool.backend == "local" for pool in self):
            await self.launcher.start()  # the others get a spare of their own
        for pool in self:
            await pool.start()

    async def close(self) -> None:
        await asyncio.gather(*(pool.close() for pool in self), return_exceptions=True)
        await self.launcher.close()
        if self.ray is not None:
            await self.ray.close()


def _ray_backend(store: ModelStore, address: str | None) -> WorkerBackend:
    """Ray is an optional extra: imported only when a pool's backend is ray."""
    if importlib.util.find_spec("ray") is None:
        raise ValueError("pool backend 'ray' needs Ray: pip install 'llmfn[ray]'")
    from runtime.pool.ray_backend import RayBackend

    return RayBackend(address, store)
