"""Model pools: worker processes running llama.cpp (``worker``, ``engine``),
scaled to zero and back (``pool``), started where their backend places them
(``backend``: ``local`` processes, or ``ray_backend`` actors on a Ray cluster),
the model store that turns ``s3://``, local and embedded sources into local
GGUF files (``store``), and the vocab-only tokenizer the gateway counts with
(``tokenizer``). Knows nothing of HTTP routes, keys or quotas."""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from runtime.pool.local import Launcher
    from runtime.pool.pool import Lease, ModelPool
    from runtime.pool.pools import Pools
    from runtime.pool.store import ModelStore

__all__ = ["Launcher", "Lease", "ModelPool", "ModelStore", "Pools"]

# The gateway's side is loaded on first use: a worker process imports only what it
# runs (``runtime.pool.worker``), so a spare interpreter is ready sooner.
_HOME = {"Launcher": "runtime.pool.local", "Lease": "runtime.pool.pool", "ModelPool": "runtime.pool.pool",
         "ModelStore": "runtime.pool.store", "Pools": "runtime.pool.pools"}


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_HOME[name]), name)
