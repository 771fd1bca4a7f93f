"""A pool worker as a Ray actor: what runs in the actor's process on the node
Ray placed it on. It fetches the model into that node's cache (the store's
file lock makes concurrent actors of one node share one download), loads it
into the same engine a local worker runs (``runtime.pool.worker``), and serves
the same protocol on a TCP port of its node, AUTH with the worker's secret
first. Imported by the gateway only to name the actor's class: llama.cpp is
imported in the actor, never in the gateway."""
from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
from typing import Any

AUTH_TIMEOUT_S = 10.0  # a connection that does not authenticate within this is closed


class WorkerActor:
    """One worker. ``start`` loads the model and listens; ``until_stopped`` returns
    only when the actor ends, so the pool learns of its death by awaiting it."""

    def __init__(self) -> None:
        self._t0 = time.monotonic()
        self._stopped = threading.Event()
        self._worker: Any = None

    def start(self, cfg: dict[str, Any]) -> dict[str, Any]:
        """Fetch, load, listen; the ready report (or why not) in the local worker's words."""
        try:
            return self._start(cfg)
        except Exception as exc:  # reported to the pool, which fails the waiting requests with it
            return {"event": "error", "error": f"{type(exc).__name__}: {exc}"}

    def _start(self, cfg: dict[str, Any]) -> dict[str, Any]:
        # llama.cpp's OpenMP threads spin between steps; they must sleep soon on a shared node
        os.environ.setdefault("GOMP_SPINCOUNT", "10000")
        from runtime.pool import worker as w  # imports llama.cpp, in this process only
        from runtime.pool.store import ModelStore

        t = time.monotonic()
        store = ModelStore(cfg["cache_dir"], s3_endpoint_url=cfg["s3_endpoint_url"], show_progress=False)
        fetched = asyncio.run(store.fetch(cfg["name"], cfg["source"], sha256=cfg["sha256"]))
        fetch_s = time.monotonic() - t
        self._worker = w.Worker({**cfg, "model": str(fetched.path)})
        host, port = self._listen(w)
        import ray

        ctx = ray.get_runtime_context()
        return {"event": "ready", "pid": os.getpid(), "host": host, "port": port,
                "actor_id": ctx.get_actor_id(), "node_id": ctx.get_node_id(), "resources": ctx.get_assigned_resources(),
                "import_s": round(w.IMPORT_S, 4), "fetch_s": round(fetch_s, 4),
                "downloaded": fetched.downloaded, "load_s": round(self._worker.load_s, 4),
                "pooling": self._worker.pooling}

    def _listen(self, w) -> tuple[str, int]:
        import ray

        host = ray.util.get_node_ip_address()
        sock = socket.create_server((host, 0))
        threading.Thread(target=self._accept, args=(sock, w), name="accept", daemon=True).start()
        return host, sock.getsockname()[1]

    def _accept(self, sock: socket.socket, w) -> None:
        while True:
            conn, _ = sock.accept()
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # a token frame goes out at once
            conn.settimeout(AUTH_TIMEOUT_S)
            threading.Thread(target=w.Connection(conn, self._worker).serve, name="conn", daemon=True).start()

    def until_stopped(self) -> None:
        self._stopped.wait()
