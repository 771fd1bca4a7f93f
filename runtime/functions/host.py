"""``FunctionHost``: the Runtime API server on loopback plus the dispatcher,
bound to a gateway whose invocation tokens it issues, and the deployed versions
it serves: registered here (deploy, rollback) or by another replica sharing the
registry, which it watches (every second, the registry's change counter) and
applies like a local deploy, fetching the bundles this host lacks."""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from runtime.functions.deployments import DeployError, Deployments, Registration, Version, check_handler, spec_of
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
    sources: dict[str, str] = field(default_factory=dict)  # sha256 -> s3://bucket/key: for other replicas


Fetch = Callable[[str, str], Awaitable[bytes]]  # (bucket, key) -> the object's bytes


class FunctionHost:
    def __init__(self, functions: dict[str, FunctionSpec], *, gateway_url: str, tokens: InvocationTokens,
                 log: FunctionLog = stderr_log,
                 env_overrides: dict[str, dict[str, str]] | None = None,
                 deployments: Deployments | None = None, debug: tuple[int, str] | None = None,
                 spare: bool = True, fetch: Fetch | None = None, watch_s: float = 1.0):
        self.functions = functions
        self.spare = spare  # keep a spare interpreter for cold starts
        self.debug = debug  # (port, function): see Dispatcher
        self.deployments = deployments
        self.fetch = fetch  # where a bundle deployed through another replica is fetched from
        self.watch_s = watch_s
        self._applied: dict[str, int] = {}  # the version each function was last switched to
        self._failing: dict[str, int] = {}  # the version whose bundles could not be fetched yet
        self._watcher: asyncio.Task | None = None
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
            for spec in self.functions.values():
                await asyncio.to_thread(self.deployments.snapshot, spec)
            await self._follow()  # a restarted service comes back on the deployed versions
            self._watcher = asyncio.create_task(self._watch(), name="llmfn-deployments-watch")

    async def prewarm(self) -> None:
        """Start one instance of every function now rather than at its first invocation."""
        await self.dispatcher.prewarm()

    async def close(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            await asyncio.gather(self._watcher, return_exceptions=True)
        if self.dispatcher:
            await self.dispatcher.close()
        if self._runner:
            await self._runner.cleanup()

    # ---- versions ---------------------------------------------------------------

    def _switch(self, name: str) -> None:
        version = self.deployments.current(name) if self.deployments else None
        if version is not None:
            self._applied[name] = version.version
            self.dispatcher.pool(name).deploy(spec_of(self.functions[name], version), version.version)

    async def _watch(self) -> None:
        """Apply what other replicas register: a poll of one counter a second is cheap on
        both databases and needs no connection of its own, unlike LISTEN/NOTIFY."""
        last_error = None
        while True:
            await asyncio.sleep(self.watch_s)
            try:
                if await asyncio.to_thread(self.deployments.refresh) or self._behind():
                    await self._follow()
                last_error = None
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the database may come back; the next round tries again, said once
                if str(exc) != last_error:
                    log.warning("could not read the deployments registry: %s: %s", type(exc).__name__, exc)
                last_error = str(exc)

    def _behind(self) -> list[str]:
        """Functions not on the registry's current version (a bundle not fetched yet)."""
        return [name for name in self.functions
                if (v := self.deployments.current(name)) is not None and self._applied.get(name) != v.version]

    async def _follow(self) -> None:
        """Switch every function to the registry's current version, fetching the bundles
        this host lacks; a function whose bundles cannot be had yet is tried again."""
        for name in self._behind():
            version = self.deployments.current(name)
            try:
                await self._fetch_missing(name, version)
                self._switch(name)
            except DeployError as exc:  # recorded before deployments were validated, or not fetchable
                self._applied[name] = version.version  # not tried again until the registry changes
                log.warning("function %s: version %d cannot run here (%s); still serving version %s",
                            name, version.version, exc, self.dispatcher.pool(name).version)
                continue
            except Exception as exc:  # S3 unreachable, say: the next round tries again, said once
                if self._failing.get(name) != version.version:
                    self._failing[name] = version.version
                    log.warning("function %s: could not fetch version %d's bundles (%s: %s); trying again",
                                name, version.version, type(exc).__name__, exc)
                continue
            self._failing.pop(name, None)
            log.info("function %s: now on version %d", name, version.version)

    async def _fetch_missing(self, name: str, version: Version) -> None:
        missing = self.deployments.missing(version)
        if not missing:
            return
        sources = await asyncio.to_thread(self.deployments.sources, missing)
        for sha in missing:
            if sha not in sources or self.fetch is None:
                raise DeployError(f"its bundle {sha[:12]}… is not on this host and cannot be fetched")
            bucket, _, key = sources[sha].removeprefix("s3://").partition("/")
            data = await self.fetch(bucket, key)
            await asyncio.to_thread(self.deployments.install, sha, data)

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
        changes = {name: Registration(b.sha256, [p.name for p in layer_dirs], b.config, b.sources)
                   for name, (_, layer_dirs, b) in staged.items()}
        registered = await asyncio.to_thread(self.deployments.register, changes)
        for name in staged:
            self._switch(name)
        return {name: {"version": version.version, "changed": changed, "sha256": version.sha256}
                for name, (version, changed) in registered.items()}

    def _stage(self, name: str, b: StagedBundle):
        spec = self._configured(name, b.config)  # before any bytes are unpacked
        code_dir = self.deployments.install(b.sha256, b.code)
        check_handler(code_dir, spec.handler)
        layer_dirs = [self.deployments.install(sha, data) for data, sha in b.layers]
        return code_dir, layer_dirs, b

    def _configured(self, name: str, config: dict[str, Any]) -> FunctionSpec:
        """The function with a deployed configuration, validated like the template."""
        try:
            return with_config(self.functions[name], config)
        except TemplateError as exc:
            raise DeployError(f"Resources.{name}.Properties.{exc}") from None

    async def rollback(self, name: str, to: int | None = None) -> dict[str, Any]:
        """Make an earlier version current (``to``, or the one before the current one)
        here and, through the registry, on every replica."""
        if self.deployments is None or name not in self.functions:
            raise DeployError(f"function {name} is not served here")
        # a version that could not run is not made current
        version = await asyncio.to_thread(self.deployments.set_current, name, to,
                                          check=lambda v: spec_of(self.functions[name], v))
        await self._follow()
        return {"version": version.version}

    def versions(self, name: str) -> dict[str, Any]:
        fv = self.deployments.functions.get(name) if self.deployments else None
        if fv is None:
            return {"current": 1, "versions": [{"version": 1, "sha256": "template"}]}
        return {"current": fv.current, "versions": [
            {"version": v.version, "sha256": v.sha256, "created": v.created} for v in fv.versions.values()]}

    async def invoke(self, name: str, event: Any, **kw) -> Result:
        assert self.dispatcher is not None, "start() first"
        return await self.dispatcher.invoke(name, event, **kw)
