"""``FunctionService``: the Runtime API server on loopback plus the dispatcher,
bound to a gateway whose invocation tokens it issues."""
from __future__ import annotations

from typing import Any, Callable

from aiohttp import web

from runtime.app.functions import FunctionSpec
from runtime.functions.dispatcher import Dispatcher, Result, stderr_log
from runtime.functions.runtime_api import build_runtime_api
from runtime.gateway.auth import InvocationTokens


class FunctionService:
    def __init__(self, functions: dict[str, FunctionSpec], *, gateway_url: str, tokens: InvocationTokens,
                 log: Callable[[str, str], None] = stderr_log,
                 env_overrides: dict[str, dict[str, str]] | None = None):
        self.functions = functions
        self.gateway_url = gateway_url
        self.tokens = tokens
        self.log = log
        self.env_overrides = env_overrides or {}
        self.dispatcher: Dispatcher | None = None
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = build_runtime_api()
        # A long-polling `next` must end when its instance goes away.
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        self.dispatcher = Dispatcher(self.functions, runtime_app=app, runtime_api_addr=f"127.0.0.1:{port}",
                                     gateway_url=self.gateway_url, tokens=self.tokens, log=self.log,
                                     env_overrides=self.env_overrides)
        self.dispatcher.start()

    async def close(self) -> None:
        if self.dispatcher:
            await self.dispatcher.close()
        if self._runner:
            await self._runner.cleanup()

    async def invoke(self, name: str, event: Any, **kw) -> Result:
        assert self.dispatcher is not None, "start() first"
        return await self.dispatcher.invoke(name, event, **kw)
