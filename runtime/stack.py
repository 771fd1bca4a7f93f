"""The running product, composed for the CLI: the gateway with the template's
models, the function service bound to it, and whichever triggers a command
serves. Everything listens on loopback unless told otherwise."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from aiohttp import web

from runtime import datadir
from runtime.app import Template
from runtime.accounting.quotas import Limits
from runtime.app.models import ModelConfig
from runtime.functions import Deployments, FunctionService
from runtime.functions.dispatcher import stderr_log
from runtime.gateway import GatewayConfig, build_app
from runtime.gateway.errors import InputLimits
from runtime.gateway.state import INVOCATIONS
from runtime.pool import ModelStore
from runtime.settings import GatewaySettings


def gateway_config(settings: GatewaySettings, models: list[ModelConfig],
                   template: Template | None = None, admin_key: str | None = None) -> GatewayConfig:
    return GatewayConfig(
        models=models, store=ModelStore(settings.cache_dir, s3_endpoint_url=settings.s3_endpoint_url),
        api_keys=settings.key_set(), admin_key=admin_key, require_keys=settings.require_keys,
        ledger_path=settings.ledger_path, keys_path=settings.keys_path, redis_url=settings.redis_url,
        function_quotas=function_quotas(template) if template else {},
        limits=InputLimits(settings.max_body_bytes, settings.max_messages, settings.max_tools,
                           settings.max_tools_bytes))


def function_quotas(template: Template) -> dict[str, dict[str, Limits]]:
    return {name: {model: Limits(q.rpm, q.tpm, q.daily_tokens, q.monthly_tokens)
                   for model, q in spec.llm.quotas.items()}
            for name, spec in template.functions.items()}


def load_env_vars(path: str | Path | None) -> dict[str, dict[str, str]]:
    """SAM's ``--env-vars`` file: ``{"Function": {...}, "Parameters": {...}}``."""
    if not path:
        return {}
    data = json.loads(Path(path).read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{path}: must be a JSON object of function name to variables")
    return {name: {k: str(v) for k, v in (vars_ or {}).items()} for name, vars_ in data.items()}


def _overrides(env_vars: dict[str, dict[str, str]], functions,
               base: dict[str, str] | None = None) -> dict[str, dict[str, str]]:
    common = {**(base or {}), **env_vars.get("Parameters", {})}
    return {name: {**common, **env_vars.get(name, {})} for name in functions}


@dataclass
class Stack:
    settings: GatewaySettings
    template: Template
    models: list[ModelConfig]
    env_vars: dict[str, dict[str, str]] = field(default_factory=dict)
    log: Callable[[str, str], None] = stderr_log
    admin_key: str | None = None  # None: the control plane refuses everyone
    gateway_url: str = ""
    deployments: Deployments | None = None
    function_env: dict[str, str] = field(default_factory=dict)  # for every function (S3 endpoint...)
    gateway: web.Application | None = None
    functions: FunctionService | None = None
    _runners: list[web.AppRunner] = field(default_factory=list)

    async def start(self) -> None:
        datadir.secure(self.settings.data_dir)
        gateway = self.gateway = build_app(gateway_config(self.settings, self.models, self.template,
                                                          self.admin_key))
        port = await self.serve(gateway, self.settings.host, self.settings.port)
        host = "127.0.0.1" if self.settings.host in ("0.0.0.0", "::") else self.settings.host
        self.gateway_url = f"http://{host}:{port}"
        self.functions = FunctionService(self.template.functions, gateway_url=self.gateway_url,
                                         tokens=gateway[INVOCATIONS], log=self.log,
                                         env_overrides=_overrides(self.env_vars, self.template.functions,
                                                                  self.function_env),
                                         deployments=self.deployments)
        await self.functions.start()

    async def serve(self, app: web.Application, host: str, port: int) -> int:
        """Serve one more app (a trigger) and return its port."""
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        await site.start()
        self._runners.append(runner)
        return site._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self.functions:
            await self.functions.close()
        for runner in reversed(self._runners):
            await runner.cleanup()
