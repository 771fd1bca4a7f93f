"""``llmfn serve``: the whole product as a long-lived service — the gateway and
its model pools, the function instances, the HTTP routes (API Gateway-style),
the Lambda API (invoke, deploy, rollback), and the event triggers (S3 uploads,
schedules) with Lambda's asynchronous-invocation semantics. With no S3
endpoint configured it starts the embedded S3 (moto's server on loopback)."""
from __future__ import annotations

import asyncio
import logging
import signal
import sys
from dataclasses import dataclass, field
from typing import Any

from runtime.functions import DeployError, Deployments
from runtime.functions.deployments import BundleLimits
from runtime.gateway.state import AUTH
from runtime.stack import Stack

log = logging.getLogger("llmfn.serve")

# moto's server accepts any credentials; functions and triggers use these with it.
EMBEDDED_S3_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "llmfn", "AWS_SECRET_ACCESS_KEY": "llmfn-embedded",
                           "AWS_DEFAULT_REGION": "us-east-1"}


@dataclass
class Service:
    stack: Stack
    api_port: int
    lambda_port: int
    s3_endpoint_url: str | None = None
    urls: dict[str, str] = field(default_factory=dict)
    events: Any = None  # the asynchronous invoker (S3, schedules, Event invocations)
    _moto: Any = None
    _closers: list = field(default_factory=list)

    async def start(self) -> None:
        settings = self.stack.settings
        if self.stack.template.functions:
            self._start_s3()
            self.stack.deployments = Deployments(settings.data_dir / "deployments", BundleLimits(
                settings.bundle_max_bytes, settings.bundle_max_unzipped_bytes, settings.bundle_max_entries))
        await self.stack.start()
        self.urls["gateway"] = self.stack.gateway_url
        if self.stack.template.functions:
            await self._start_triggers()  # first: the Invoke API queues Event invocations with it
            await self._serve_http()
        for name, url in self.urls.items():
            print(f"llmfn {name} on {url}", file=sys.stderr, flush=True)

    def _start_s3(self) -> None:
        import os

        if self.s3_endpoint_url is None:
            from moto.server import ThreadedMotoServer

            logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per S3 request otherwise
            for k, v in EMBEDDED_S3_CREDENTIALS.items():
                os.environ.setdefault(k, v)
            self._moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
            self._moto.start()
            host, port = self._moto.get_host_and_port()
            self.s3_endpoint_url = f"http://{host}:{port}"
            self.urls["embedded S3"] = self.s3_endpoint_url
        self.stack.settings = self.stack.settings.model_copy(update={"s3_endpoint_url": self.s3_endpoint_url})
        env = {"AWS_ENDPOINT_URL_S3": self.s3_endpoint_url}
        if self._moto is not None:  # never the service's own credentials; the embedded S3 takes any
            env.update(EMBEDDED_S3_CREDENTIALS)
        self.stack.function_env = {**env, **self.stack.function_env}

    async def _serve_http(self) -> None:
        from runtime.triggers.http import build_http_api
        from runtime.triggers.lambda_api import build_lambda_api

        host = self.stack.settings.host
        app, _ = build_http_api(self.stack.template.functions, self.stack.functions)
        self.urls["http api"] = f"http://{host}:{await self.stack.serve(app, host, self.api_port)}"
        lam = build_lambda_api(self.stack.functions, self.stack.gateway[AUTH], fetch=self._fetch,
                               events=self.events)
        self.urls["lambda api"] = f"http://{host}:{await self.stack.serve(lam, host, self.lambda_port)}"

    def _s3fs(self):
        import s3fs

        return s3fs.S3FileSystem(client_kwargs={"endpoint_url": self.s3_endpoint_url}, skip_instance_cache=True)

    async def _fetch(self, bucket: str, key: str) -> bytes:
        fs, limit = self._s3fs(), self.stack.settings.bundle_max_bytes

        def read() -> bytes:  # an oversized bundle is refused before it is downloaded
            if (size := fs.size(f"{bucket}/{key}")) > limit:
                raise DeployError(f"bundle {key} is {size} bytes; the limit is {limit}")
            return fs.cat_file(f"{bucket}/{key}")
        return await asyncio.get_running_loop().run_in_executor(None, read)

    async def _start_triggers(self) -> None:
        """Wired by ``runtime.triggers`` once event sources are configured."""
        from runtime.service_triggers import start_triggers

        closer = await start_triggers(self)
        if closer is not None:
            self._closers.append(closer)

    async def close(self) -> None:
        for closer in reversed(self._closers):
            await closer()
        await self.stack.close()
        if self._moto is not None:
            self._moto.stop()


async def run(service: Service) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await service.start()
    try:
        await stop.wait()
    finally:
        print("llmfn: shutting down", file=sys.stderr, flush=True)
        await service.close()
