"""The one assembler. A :class:`Server` is built from the settings and the
template, and starts and stops every part a command runs: the gateway and its
model pools, the function runtime, the HTTP API, the Lambda API, the event
triggers and the embedded S3. Each command is a configuration of it
(:class:`Parts`). Parts get what they need passed down (the invocation-token
registry, the authenticator, S3 access); nothing reaches back up into another
part's application state. Everything listens on loopback unless told otherwise."""
from __future__ import annotations

import asyncio
import importlib.util
import json
import logging
import os
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web
from pydantic import ValidationError

from runtime import datadir, log_format
from runtime.accounting.quotas import Limits
from runtime.embedded_s3 import EmbeddedS3
from runtime.functions import DeployError, Deployments, FunctionHost
from runtime.functions.deployments import BundleLimits
from runtime.functions.instance import caller_aws_environment
from runtime.functions.logs import FunctionLog, LogStore, stderr_log, tee
from runtime.gateway import Gateway, GatewayConfig, build_gateway
from runtime.gateway.http_errors import InputLimits
from runtime.pool import ModelStore
from runtime.settings import Settings
from runtime.template import (
    ModelConfig,
    PoolConfig,
    Template,
    load_template,
    parse_model_flag,
    parse_parameter_overrides,
)

log = logging.getLogger("llmfn")


@dataclass(frozen=True)
class Parts:
    """What a command runs besides the gateway and the function runtime."""
    http_api: bool = False  # the functions' HttpApi/Api routes
    lambda_api: bool = False  # the Lambda Invoke API
    service: bool = False  # a long-lived service: deployments, triggers, Event invocations, embedded S3


INVOKE = Parts()
START_API = Parts(http_api=True)
START_LAMBDA = Parts(lambda_api=True)
SERVE = Parts(http_api=True, lambda_api=True, service=True)


def read_template(settings: Settings, *, optional: bool = False) -> Template:
    """The template the settings name. ``optional`` (serve): with none, or with
    ``--model`` and no ``--template`` given, a plain gateway with no functions."""
    if optional:
        named = "template" in settings.model_fields_set
        if not settings.template.exists() or (settings.model and not named):
            return Template()
    return load_template(settings.template, parse_parameter_overrides(settings.parameter_overrides))


def served_models(settings: Settings, template: Template, pool: dict[str, Any]) -> list[ModelConfig]:
    """``--model`` flags, else the template's models, else the embedded one; pool
    settings given as flags or variables override every model's pool, the template's too."""
    if settings.model:
        models = [parse_model_flag(flag) for flag in settings.model]
    elif template.models:
        models = template.models
    else:
        log.info("no models configured; serving the embedded default model")
        models = [parse_model_flag("embedded")]
    if not pool:
        return models
    try:
        out = [m.model_copy(update={"pool": PoolConfig(**{**m.pool.model_dump(), **pool})}) for m in models]
    except ValidationError as exc:
        reason = "; ".join(e["msg"].removeprefix("Value error, ") for e in exc.errors())
        raise ValueError(f"pool settings: {reason}") from None
    given = ", ".join(f"{k}={v}" for k, v in pool.items())
    log.info("pool settings for every model (over the template's): %s", given)
    return out


def load_env_vars(path: str | Path | None) -> dict[str, dict[str, str]]:
    """SAM's ``--env-vars`` file: ``{"Function": {...}, "Parameters": {...}}``."""
    if not path:
        return {}
    data = json.loads(Path(path).read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{path}: must be a JSON object of function name to variables")
    return {name: {k: str(v) for k, v in (vars_ or {}).items()} for name, vars_ in data.items()}


def function_quotas(template: Template) -> dict[str, dict[str, Limits]]:
    return {name: {model: Limits(q.rpm, q.tpm, q.daily_tokens, q.monthly_tokens)
                   for model, q in spec.llm.quotas.items()}
            for name, spec in template.functions.items()}


def gateway_config(settings: Settings, models: list[ModelConfig], template: Template,
                   admin_key: str | None) -> GatewayConfig:
    return GatewayConfig(
        models=models, store=ModelStore(settings.cache_dir, s3_endpoint_url=settings.s3_endpoint_url),
        api_keys=datadir.static_keys(settings), admin_key=admin_key, require_keys=settings.require_keys,
        ledger_at=settings.store("ledger"), keys_at=settings.store("keys"), redis_url=settings.redis_url,
        function_quotas=function_quotas(template),
        ray_address=settings.ray_address,
        limits=InputLimits(settings.max_body_bytes, settings.max_messages, settings.max_tools,
                           settings.max_tools_bytes))


def debug_target(settings: Settings, template: Template) -> tuple[int, str] | None:
    """``--debug-port``'s port and function: ``--debug-function``, else the only one."""
    if settings.debug_port is None:
        return None
    name = settings.debug_function
    if name is None:
        if len(template.functions) != 1:
            raise ValueError(f"--debug-port: name the function to debug with --debug-function "
                             f"(the template has {len(template.functions)})")
        name = next(iter(template.functions))
    template.function(name)  # an unknown name is an error before anything starts
    if importlib.util.find_spec("debugpy") is None:
        raise ValueError("--debug-port needs debugpy: pip install 'llmfn[debug]'")
    return settings.debug_port, name


class Server:
    def __init__(self, settings: Settings, template: Template, models: list[ModelConfig], parts: Parts, *,
                 admin_key: str | None, log: FunctionLog = stderr_log):
        self.settings, self.template, self.models, self.parts = settings, template, models, parts
        self.admin_key = admin_key  # None: the control plane refuses everyone
        self.function_log = log
        self.env_vars = load_env_vars(settings.env_vars)
        self.debug = debug_target(settings, template)
        self.urls: dict[str, str] = {}  # part -> where it listens
        self.gateway: Gateway | None = None
        self.functions: FunctionHost | None = None
        self.events: Any = None  # the asynchronous invoker (S3, schedules, Event invocations)
        self.s3_endpoint_url = settings.s3_endpoint_url
        self.http_routes: list[tuple[str, str, str]] = []
        self.embedded_s3: EmbeddedS3 | None = None
        self.log_store: LogStore | None = None
        self._runners: list[web.AppRunner] = []
        self._closers: list[Callable[[], Awaitable[None]]] = []

    @property
    def gateway_url(self) -> str:
        return self.urls["gateway"]

    # ---- start and stop ---------------------------------------------------------

    async def start(self) -> None:
        datadir.secure(self.settings.data_dir)
        if self.settings.log_file is not None:
            self._log_to_file(self.settings.log_file)
        self._keep_function_logs()
        has_functions = bool(self.template.functions)
        service = self.parts.service and has_functions
        if service:
            self._start_embedded_s3()
        self.gateway = build_gateway(gateway_config(self._settings(), self.models, self.template,
                                                    self.admin_key))
        self.urls["gateway"] = await self._listen(self.gateway.app, self.settings.gateway_port)
        deployments = await asyncio.to_thread(self._deployments, service)  # opens its database
        self.functions = FunctionHost(
            self.template.functions, gateway_url=self.gateway_url, tokens=self.gateway.invocations,
            log=self.function_log, env_overrides=self._function_env(), deployments=deployments,
            debug=self.debug, fetch=self._fetch_bundle if service else None)
        await self.functions.start()
        self._closers.append(self.functions.close)
        if self.settings.warm_containers == "EAGER":
            await self.functions.prewarm()
        if self.settings.reload and has_functions:
            await self._start_reload()
        if service:
            await self._start_triggers()  # first: the Lambda API queues Event invocations with it
        if self.parts.http_api and has_functions:
            from runtime.triggers.http import build_http_api

            app, self.http_routes = build_http_api(self.template.functions, self.functions)
            self.urls["http api"] = await self._listen(app, self.settings.api_port)
        if self.parts.lambda_api and has_functions:
            from runtime.triggers.lambda_api import build_lambda_api

            app = build_lambda_api(self.functions, self.gateway.auth, events=self.events,
                                   fetch=self._fetch_bundle if service else None)
            self.urls["lambda api"] = await self._listen(app, self.settings.lambda_port)

    def _log_to_file(self, path: Path) -> None:
        """``--log-file``: the functions' lines go to the file (appended) instead of stderr."""
        out = path.open("a", buffering=1, encoding="utf-8")  # a line at a time, as stderr
        self.function_log = lambda line: print(line.message, file=out)

        async def close_file() -> None:
            out.close()
        self._closers.append(close_file)

    async def close(self) -> None:
        for closer in reversed(self._closers):
            await closer()
        self._closers.clear()
        for runner in reversed(self._runners):
            await runner.cleanup()
        self._runners.clear()
        if self.embedded_s3 is not None:
            self.embedded_s3.stop()
            self.embedded_s3 = None
        if self.log_store is not None:
            await asyncio.to_thread(self.log_store.close)
            self.log_store = None

    async def run_until_signal(self, started: Callable[[Server], None] | None = None) -> None:
        """Start, say where everything listens, serve until SIGINT or SIGTERM, stop."""
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            await self.start()
            (started or announce)(self)
            await stop.wait()
        finally:
            log_format.say("llmfn: shutting down")
            await self.close()

    async def _listen(self, app: web.Application, port: int) -> str:
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        self._runners.append(runner)
        await web.TCPSite(runner, self.settings.host, port).start()
        bound = runner.addresses[0][1]
        host = "127.0.0.1" if self.settings.host in ("0.0.0.0", "::") else self.settings.host
        return f"http://{host}:{bound}"

    # ---- what the parts are given -----------------------------------------------

    def _keep_function_logs(self) -> None:
        """Tee the function log lines into the data dir's log store (``llmfn logs``)."""
        if self.log_store is not None or not self.template.functions:
            return
        s = self.settings
        self.log_store = LogStore(s.logs_path, max_lines=s.log_retention_lines,
                                  max_age_s=s.log_retention_days * 86400)
        self.function_log = tee(self.function_log, self.log_store.append)

    def _settings(self) -> Settings:
        """The settings with the S3 endpoint this server ended up with (the embedded one)."""
        return self.settings.model_copy(update={"s3_endpoint_url": self.s3_endpoint_url})

    def _function_env(self) -> dict[str, dict[str, str]]:
        """Each function's variables on top of its template's: the S3 endpoint under
        serve, the caller's AWS variables in the emulators (as SAM passes them), then
        ``--env-vars`` (its ``Parameters`` for all, then the function's own)."""
        if self.parts.service:
            # never the service's own credentials; the embedded S3 takes any
            base = (self.embedded_s3.function_environment() if self.embedded_s3 else
                    {"AWS_ENDPOINT_URL_S3": self.s3_endpoint_url} if self.s3_endpoint_url else {})
        else:
            base = caller_aws_environment(os.environ)
        common = {**base, **self.env_vars.get("Parameters", {})}
        return {name: {**common, **self.env_vars.get(name, {})} for name in self.template.functions}

    def _deployments(self, service: bool) -> Deployments | None:
        if not service:
            return None
        s = self.settings
        deployments = Deployments(s.deployments_dir, s.store("deployments"),
                                  BundleLimits(s.bundle_max_bytes, s.bundle_max_unzipped_bytes, s.bundle_max_entries))
        self._closers.append(lambda: asyncio.to_thread(deployments.close))
        return deployments

    def _start_embedded_s3(self) -> None:
        if self.s3_endpoint_url is None:
            self.embedded_s3 = EmbeddedS3()
            self.s3_endpoint_url = self.urls["embedded S3"] = self.embedded_s3.start()

    def s3_filesystem(self):
        """An s3fs filesystem on this server's S3 endpoint (its own credentials)."""
        import s3fs

        return s3fs.S3FileSystem(client_kwargs={"endpoint_url": self.s3_endpoint_url}, skip_instance_cache=True)

    async def _fetch_bundle(self, bucket: str, key: str) -> bytes:
        fs, limit = self.s3_filesystem(), self.settings.bundle_max_bytes

        def read() -> bytes:  # an oversized bundle is refused before it is downloaded
            if (size := fs.size(f"{bucket}/{key}")) > limit:
                raise DeployError(f"bundle {key} is {size} bytes; the limit is {limit}")
            return fs.cat_file(f"{bucket}/{key}")
        return await asyncio.get_running_loop().run_in_executor(None, read)

    async def _start_reload(self) -> None:
        from runtime.functions.reload import Reloader

        s = self.settings
        reloader = Reloader(self.functions, self.template, s.template, lambda: read_template(s),
                            ignore=(s.data_dir, s.cache_dir))
        await reloader.start()
        self._closers.append(reloader.close)

    async def _start_triggers(self) -> None:
        from runtime.triggers.assembly import start_triggers

        triggers = await start_triggers(self.template, self.settings, self.functions,
                                        s3_endpoint_url=self.s3_endpoint_url, s3_filesystem=self.s3_filesystem)
        self.events = triggers.invoker
        self._closers.append(triggers.close)


def announce(server: Server) -> None:
    for name, url in server.urls.items():
        log_format.say(f"llmfn {name} on {url}")


__all__ = ["INVOKE", "SERVE", "START_API", "START_LAMBDA", "Parts", "Server", "announce",
           "read_template", "served_models"]
