"""The commands that run the product: ``serve``, ``invoke``, ``start-api`` and
``start-lambda``, each a configuration of ``runtime.server.Server``."""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from runtime.cli.flags import settings_of
from runtime.datadir import admin_key, secure
from runtime.log_format import say
from runtime.server import INVOKE, SERVE, START_API, START_LAMBDA, Parts, Server, read_template, served_models
from runtime.settings import PoolSettings, Settings, from_flags


def _server(args: argparse.Namespace, parts: Parts, *, optional_template: bool = False,
            invoked: str | None = None) -> Server:
    """The server a command runs, from its flags and the template."""
    settings = settings_of(args)
    if invoked and settings.debug_port and not settings.debug_function:  # invoke debugs what it invokes
        settings = settings.model_copy(update={"debug_function": invoked})
    template = read_template(settings, optional=optional_template)
    models = served_models(settings, template, from_flags(PoolSettings, args).overrides())
    return Server(settings, template, models, parts, admin_key=_admin_key_for(settings, parts))


def _admin_key_for(settings: Settings, parts: Parts) -> str | None:
    """serve: the configured admin key, or the data dir's, created at first start (it
    says where, never what). The emulators create none: their control plane opens
    only to an existing one."""
    if not parts.service:
        return admin_key(settings)
    secure(settings.data_dir)
    existed = settings.admin_key_path.exists()
    key = admin_key(settings, create=True)
    if settings.admin_key is None or not settings.admin_key.get_secret_value():
        said = "read from" if existed else "created in"
        say(f"llmfn admin key {said} {settings.admin_key_path} (deploy, rollback, keys and /admin/* need it)")
    return key


def serve(args: argparse.Namespace) -> int:
    server = _server(args, SERVE, optional_template=True)
    names = ", ".join(f"{m.name} ({m.source})" for m in server.models)
    say(f"llmfn models: {names}")
    asyncio.run(server.run_until_signal())
    return 0


def _read_event(source: str | None) -> Any:
    if source is None:
        return {}
    text = sys.stdin.read() if source == "-" else Path(source).read_text()
    try:
        return json.loads(text) if text.strip() else {}
    except json.JSONDecodeError as exc:
        raise ValueError(f"event {source}: not valid JSON ({exc.msg} at line {exc.lineno})") from None


def invoke(args: argparse.Namespace) -> int:
    server = _server(args, INVOKE, invoked=args.function)
    server.template.function(args.function)  # a clear error before anything starts
    event = _read_event(args.event)
    return asyncio.run(_invoke(server, args.function, event))


async def _invoke(server: Server, name: str, event: Any) -> int:
    try:
        await server.start()
        result = await server.functions.invoke(name, event)
        out = sys.stdout.buffer
        async for chunk in result.outcome.stream():
            out.write(chunk)
            out.flush()
        out.write(b"\n")
        out.flush()
        await result.report
    finally:
        await server.close()
    return 0


def start_api(args: argparse.Namespace) -> int:
    def started(server: Server) -> None:
        url = server.urls["http api"]
        for method, path, fn in server.http_routes:
            say(f"Mounting {fn} at {url}{path} [{method}]")
        say(f"llmfn start-api on {url}  gateway on {server.gateway_url}")

    asyncio.run(_server(args, START_API).run_until_signal(started))
    return 0


def start_lambda(args: argparse.Namespace) -> int:
    def started(server: Server) -> None:
        say(f"llmfn start-lambda on {server.urls['lambda api']}  gateway on {server.gateway_url}")

    asyncio.run(_server(args, START_LAMBDA).run_until_signal(started))
    return 0
