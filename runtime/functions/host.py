"""``FunctionHost``: the Runtime API server on loopback plus the dispatcher,
bound to a gateway whose invocation tokens it issues."""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from runtime.functions.deployments import DeployError, Deployments, check_handler, spec_of, unpack
from runtime.functions.dispatcher import Dispatcher, Result
from runtime.functions.logs import FunctionLog, stderr_log
from runtime.functions.runtime_api import build_runtime_api
from runtime.gateway.auth import InvocationTokens
from runtime.template.function_spec import FunctionSpec, TemplateError, with_config

log = logging.getLogger("llmfn.functions")


@dataclass
class StagedBundle:
    """One function's new code: the zip, its checksum, its layers and its configuration."""
    code: bytes
    sha256: str
    layers: list[tuple[bytes, str]] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)


class FunctionHost:
    def __init__(self, functions: dict[str, FunctionSpec], *, gateway_url: str, tokens: InvocationTokens,
                 log: FunctionLog = stderr_log,
                 env_overrides: dict[str, dict[str, str]] | None = None,
                 deployments: Deployments | None = None, debug: tuple[int, str] | None = None,
                 spare: bool = True):
        self.functions = functions
        self.spare = spare  # keep a spare interpreter for cold starts
        self.debug = debug  # (port, function): see Dispatcher
        self.deployments = deployments
        self.gateway_url = gateway_url
        self.tokens = tokens
        self.log = log
        self.env_overrides = env_overrides or {}
        self.dispatcher: Dispatcher | None = None
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        instances: dict = {}
        # A long-polling `next` must end when its instance goes away.
        self._runner = web.AppRunner(build_runtime_api(instances), access_log=None,
                                     handler_cancellation=True, shutdown_timeout=5)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        host, port = self._runner.addresses[0][:2]
        self.dispatcher = Dispatcher(self.functions, instances=instances, runtime_api_addr=f"{host}:{port}",
                                     gateway_url=self.gateway_url, tokens=self.tokens, log=self.log,
                                     env_overrides=self.env_overrides, spare=self.spare, debug=self.debug)
        self.dispatcher.start()
        if self.deployments is not None:
            loop = asyncio.get_running_loop()
            for name, spec in self.functions.items():
                await loop.run_in_executor(None, self.deployments.snapshot, spec)
                try:
                    self._switch(name)  # a restarted service comes back on the deployed versions
                except DeployError as exc:  # recorded before deployments were validated
                    log.warning("function %s: its current version cannot run (%s); serving the template's",
                                name, exc)

    async def prewarm(self) -> None:
        """Start one instance of every function now rather than at its first invocation."""
        await self.dispatcher.prewarm()

    async def close(self) -> None:
        if self.dispatcher:
            await self.dispatcher.close()
        if self._runner:
            await self._runner.cleanup()

    # ---- versions ---------------------------------------------------------------

    def _switch(self, name: str) -> None:
        version = self.deployments.current(name) if self.deployments else None
        if version is not None:
            self.dispatcher.pool(name).deploy(spec_of(self.functions[name], version), version.version)

    def reload(self, name: str, spec: FunctionSpec) -> bool:
        """Local files changed: new invocations run ``spec``, those in flight finish on
        the old code. False, and nothing changed, for a function on a deployed version
        (version 1 is the template's): ``llmfn deploy`` owns it until rolled back to 1."""
        current = self.deployments.current(name) if self.deployments else None
        if current is not None and current.version != 1:
            return False
        self.functions[name] = spec
        pool = self.dispatcher.pool(name)
        pool.deploy(spec, pool.version)
        return True

    async def deploy(self, bundles: dict[str, StagedBundle]) -> dict[str, dict[str, Any]]:
        """Switch several functions to new code at once. Everything is unpacked and
        checked first: a deploy that fails validation changes nothing."""
        if self.deployments is None:
            raise DeployError("this service keeps no deployments (no data dir)")
        unknown = [n for n in bundles if n not in self.functions]
        if unknown:
            raise DeployError(f"not in the template: {', '.join(unknown)}")
        loop = asyncio.get_running_loop()
        staged = {}
        for name, b in bundles.items():
            staged[name] = await loop.run_in_executor(None, self._stage, name, b)
        out = {}
        for name, (code_dir, layer_dirs, b) in staged.items():
            version, changed = self.deployments.add(name, b.sha256, code_dir, layer_dirs, b.config)
            out[name] = {"version": version.version, "changed": changed, "sha256": b.sha256}
        self.deployments.save()
        for name in staged:
            self._switch(name)
        return out

    def _stage(self, name: str, b: StagedBundle):
        spec = self._configured(name, b.config)  # before any bytes are unpacked
        root = self.deployments.root / "bundles"
        root.mkdir(parents=True, exist_ok=True)
        limits = self.deployments.limits
        code_dir = unpack(b.code, b.sha256, root, limits)
        check_handler(code_dir, spec.handler)
        layer_dirs = [unpack(data, sha, root, limits) for data, sha in b.layers]
        return code_dir, layer_dirs, b

    def _configured(self, name: str, config: dict[str, Any]) -> FunctionSpec:
        """The function with a deployed configuration, validated like the template."""
        try:
            return with_config(self.functions[name], config)
        except TemplateError as exc:
            raise DeployError(f"Resources.{name}.Properties.{exc}") from None

    def rollback(self, name: str, to: int | None = None) -> dict[str, Any]:
        if self.deployments is None or name not in self.deployments.functions:
            raise DeployError(f"function {name} is not served here")
        fv = self.deployments.functions[name]
        if to is None:
            older = [v for v in sorted(fv.versions) if v < fv.current]
            if not older:
                raise DeployError(f"{name} is on its first version; nothing to roll back to")
            to = older[-1]
        if to in fv.versions:
            spec_of(self.functions[name], fv.versions[to])  # a version that could not run is not made current
        self.deployments.set_current(name, to)
        self.deployments.save()
        self._switch(name)
        return {"version": to}

    def versions(self, name: str) -> dict[str, Any]:
        fv = self.deployments.functions.get(name) if self.deployments else None
        if fv is None:
            return {"current": 1, "versions": [{"version": 1, "sha256": "template"}]}
        return {"current": fv.current, "versions": [
            {"version": v.version, "sha256": v.sha256, "created": v.created} for v in fv.versions.values()]}

    async def invoke(self, name: str, event: Any, **kw) -> Result:
        assert self.dispatcher is not None, "start() first"
        return await self.dispatcher.invoke(name, event, **kw)
