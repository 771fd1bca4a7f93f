"""A real gateway on a real loopback socket, run in a background thread so that
synchronous clients (the openai SDK, boto3) can call it from a test."""
from __future__ import annotations

import asyncio
import json
import threading
import urllib.error
import urllib.request
from typing import Any

from aiohttp import web

from runtime.gateway import GatewayConfig, build_app
from runtime.pool import ModelStore
from runtime.template.model_spec import ModelConfig, PoolConfig

ADMIN_KEY = "sk-test-admin"
MODEL = "gemma3-270m"  # the embedded GGUF every test model is


class GatewayThread:
    def __init__(self, models: list[ModelConfig], store: ModelStore, api_keys=frozenset(), **config):
        config.setdefault("admin_key", ADMIN_KEY)  # /admin/pools needs it, like every admin route
        self.config = GatewayConfig(models=models, store=store, api_keys=frozenset(api_keys), **config)
        self.loop = asyncio.new_event_loop()
        self.port = 0
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.app: web.Application | None = None

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.app = build_app(self.config)
        self.runner = web.AppRunner(self.app, access_log=None)
        self.loop.run_until_complete(self.runner.setup())
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        self.loop.run_until_complete(site.start())
        self.port = site._server.sockets[0].getsockname()[1]
        self._ready.set()
        self.loop.run_forever()
        self.loop.run_until_complete(self.runner.cleanup())
        self.loop.close()

    def __enter__(self) -> GatewayThread:
        self._thread.start()
        self._ready.wait(30)
        return self

    def __exit__(self, *exc) -> None:
        if not self._thread.is_alive():
            return  # already stopped (a test may stop it early to check what a restart keeps)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(60)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def pool_status(self, model: str) -> dict[str, Any]:
        return call(f"{self.url}/admin/pools", method="GET",
                    headers={"Authorization": f"Bearer {self.config.admin_key}"}).json()[model]


def model(name: str = MODEL, source: str = "embedded", **pool: Any) -> ModelConfig:
    pool.setdefault("n_ctx", 1024)
    pool.setdefault("n_threads", 2)
    return ModelConfig(name=name, source=source, pool=PoolConfig(**pool))


class Reply:
    def __init__(self, status: int, headers, body: bytes):
        self.status, self.headers, self.body = status, headers, body

    def json(self) -> Any:
        return json.loads(self.body)

    def events(self) -> list[Any]:
        """The SSE data payloads, parsed; the literal [DONE] stays a string."""
        out = []
        for line in self.body.decode().splitlines():
            if line.startswith("data: "):
                data = line[6:]
                out.append(data if data == "[DONE]" else json.loads(data))
        return out


def call(url: str, body: Any = None, *, method: str = "POST", headers: dict | None = None,
         raw: bytes | None = None, timeout: float = 120) -> Reply:
    """One plain HTTP request (no SDK), for status codes, headers and raw bodies."""
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return Reply(resp.status, resp.headers, resp.read())
    except urllib.error.HTTPError as err:
        return Reply(err.code, err.headers, err.read())
