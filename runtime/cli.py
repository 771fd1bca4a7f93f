"""The ``llmfn`` command. Every flag mirrors an environment variable
(``--port`` / ``LLMFN_PORT``), so a laptop and a container are configured alike."""
from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from pathlib import Path

from runtime.app import PoolConfig, load_template, parse_model_flag
from runtime.app.template import TemplateError
from runtime.settings import GatewaySettings

log = logging.getLogger("llmfn")


def _env_help(field: str) -> str:
    info = GatewaySettings.model_fields[field]
    return f"{info.description} [env LLMFN_{field.upper()}]"


def _serve_parser(sub) -> None:
    p = sub.add_parser("serve", help="Run the gateway with the template's models.")
    for field, flag in (("host", "--host"), ("port", "--port"), ("template", "--template"),
                        ("cache_dir", "--cache-dir"), ("s3_endpoint_url", "--s3-endpoint-url"),
                        ("api_keys", "--api-keys"), ("log_level", "--log-level")):
        p.add_argument(flag, dest=field, default=None, help=_env_help(field))
    p.add_argument("--model", action="append", default=[], metavar="[NAME=]SOURCE",
                   help="Serve this model (s3://bucket/key.gguf, a path, or 'embedded'); "
                        "repeatable; replaces the template's models. [env LLMFN_MODEL]")
    for name, info in PoolConfig.model_fields.items():
        env = f"LLMFN_{name.upper()}"
        p.add_argument("--" + name.replace("_", "-"), dest="pool_" + name, default=os.environ.get(env),
                       help=f"{info.description} For --model models. [env {env}]")


def _settings(args: argparse.Namespace) -> GatewaySettings:
    given = {k: v for k, v in vars(args).items()
             if k in GatewaySettings.model_fields and v is not None}
    return GatewaySettings(**given)


def _models(args: argparse.Namespace, settings: GatewaySettings):
    flags = args.model or [m for m in os.environ.get("LLMFN_MODEL", "").split(",") if m]
    if flags:
        pool = PoolConfig(**{k[5:]: v for k, v in vars(args).items()
                             if k.startswith("pool_") and v is not None})
        return [parse_model_flag(f, pool) for f in flags]
    if settings.template.exists():
        models = load_template(settings.template).models
        if models:
            return models
    log.info("no models configured; serving the embedded default model")
    return [parse_model_flag("embedded", PoolConfig())]


def serve(args: argparse.Namespace) -> int:
    settings = _settings(args)
    logging.getLogger().setLevel(settings.log_level.upper())
    models = _models(args, settings)
    asyncio.run(_serve(settings, models))
    return 0


async def _serve(settings: GatewaySettings, models) -> None:
    from aiohttp import web

    from runtime.gateway import GatewayConfig, build_app
    from runtime.pool import ModelStore

    store = ModelStore(settings.cache_dir, s3_endpoint_url=settings.s3_endpoint_url)
    app = build_app(GatewayConfig(models=models, store=store, api_keys=settings.key_set()))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.port)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # the real port when --port 0
    names = ", ".join(f"{m.name} ({m.source})" for m in models)
    print(f"llmfn gateway on http://{settings.host}:{port}  models: {names}", file=sys.stderr, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    print("llmfn: shutting down", file=sys.stderr, flush=True)
    await runner.cleanup()  # stops every worker process


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(prog="llmfn", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    _serve_parser(sub)
    args = parser.parse_args(argv)
    try:
        return {"serve": serve}[args.command](args)
    except (TemplateError, ValueError) as exc:
        print(f"llmfn: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
