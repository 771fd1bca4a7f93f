"""The bodies of the ``llmfn`` commands. ``runtime.cli`` parses their flags; the
commands that run the product (``serve``, ``invoke``, ``start-api``,
``start-lambda``) are configurations of ``runtime.server.Server``."""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from runtime.app import load_template
from runtime.datadir import admin_key, secure
from runtime.settings import ClientSettings, PoolSettings, Settings, from_flags

# Secrets a flag can carry, and where they belong instead: a command line is readable by every local user.
_SECRET_FLAGS = {"admin_key": ("--admin-key", "LLMFN_ADMIN_KEY or --admin-key-file"),
                 "api_keys": ("--api-keys", "LLMFN_API_KEYS or --api-keys-file")}


def settings_of(args: argparse.Namespace) -> Settings:
    for field, (flag, instead) in _SECRET_FLAGS.items():
        if getattr(args, field, None) is not None:
            print(f"llmfn: warning: {flag} puts a secret on the command line, where every local user can "
                  f"read it (ps, /proc/PID/cmdline); use {instead}", file=sys.stderr, flush=True)
    settings = from_flags(Settings, args)
    # Once the settings hold them, the secrets leave the environment that workers and
    # every other child process inherit.
    for field in _SECRET_FLAGS:
        os.environ.pop(f"LLMFN_{field.upper()}", None)
    logging.getLogger().setLevel(settings.log_level.upper())
    return settings


def _server(args: argparse.Namespace, parts, *, optional_template: bool = False):
    """The server a command runs, from its flags and the template."""
    from runtime.server import Server, read_template, served_models

    settings = settings_of(args)
    template = read_template(settings, optional=optional_template)
    models = served_models(settings, template, from_flags(PoolSettings, args).overrides())
    return Server(settings, template, models, parts, admin_key=_admin_key_for(settings, parts))


def _admin_key_for(settings: Settings, parts) -> str | None:
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
        print(f"llmfn admin key {said} {settings.admin_key_path} (deploy, rollback, keys and /admin/* need it)",
              file=sys.stderr, flush=True)
    return key


def serve(args: argparse.Namespace) -> int:
    from runtime.server import SERVE

    server = _server(args, SERVE, optional_template=True)
    names = ", ".join(f"{m.name} ({m.source})" for m in server.models)
    print(f"llmfn models: {names}", file=sys.stderr, flush=True)
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
    from runtime.server import INVOKE

    server = _server(args, INVOKE)
    server.template.function(args.function)  # a clear error before anything starts
    event = _read_event(args.event)
    return asyncio.run(_invoke(server, args.function, event))


async def _invoke(server, name: str, event: Any) -> int:
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
    from runtime.server import START_API

    def started(server) -> None:
        url = server.urls["http api"]
        for method, path, fn in server.http_routes:
            print(f"Mounting {fn} at {url}{path} [{method}]", file=sys.stderr)
        print(f"llmfn start-api on {url}  gateway on {server.gateway_url}", file=sys.stderr, flush=True)

    asyncio.run(_server(args, START_API).run_until_signal(started))
    return 0


def start_lambda(args: argparse.Namespace) -> int:
    from runtime.server import START_LAMBDA

    def started(server) -> None:
        print(f"llmfn start-lambda on {server.urls['lambda api']}  gateway on {server.gateway_url}",
              file=sys.stderr, flush=True)

    asyncio.run(_server(args, START_LAMBDA).run_until_signal(started))
    return 0


def generate_event(args: argparse.Namespace) -> int:
    from runtime.triggers.events import generate_event as make

    options = {k: v for k in ("bucket", "key", "method", "path", "body") if (v := getattr(args, k))}
    print(json.dumps(make(args.service, args.event, **options), indent=2))
    return 0


def keys(args: argparse.Namespace) -> int:
    from runtime.accounting.quotas import Limits

    settings = settings_of(args)
    models = [m.strip() for m in args.models.split(",") if m.strip()] if getattr(args, "models", None) else None
    limits = Limits(*(getattr(args, k, None) for k in ("rpm", "tpm", "daily_tokens", "monthly_tokens")))
    manage = (_GatewayKeys(args.endpoint, _admin_key_or_fail(settings)) if args.endpoint
              else _LocalKeys(settings.keys_path, settings.data_dir))
    if args.keys_command == "create":
        print(manage.create(args.name, models, limits))
        print(f"key '{args.name}' created; this is the only time its secret is shown", file=sys.stderr)
    elif args.keys_command == "list":
        _print_keys(manage.list())
    else:
        manage.revoke(args.name)
        print(f"key '{args.name}' revoked", file=sys.stderr)
    return 0


def _print_keys(rows: list[dict]) -> None:
    print(f"{'NAME':<20} {'KEY':<16} {'MODELS':<20} {'RPM':>6} {'TPM':>8} {'DAY':>9} {'MONTH':>10}  STATUS")
    for r in rows:
        cells = [r["rpm"], r["tpm"], r["daily_tokens"], r["monthly_tokens"]]
        rpm, tpm, day, month = ("-" if c is None else c for c in cells)
        models = ",".join(r["models"]) if r["models"] is not None else "*"
        status = "revoked" if r["revoked"] else "active"
        print(f"{r['name']:<20} {r['hint']:<16} {models:<20} {rpm:>6} {tpm:>8} {day:>9} {month:>10}  {status}")


class _LocalKeys:
    """The key store file itself: on the service's machine, as its user."""

    def __init__(self, path: Path, data_dir: Path):
        from runtime.accounting.keys import KeyStore

        secure(data_dir)
        self.store = KeyStore(path)

    def create(self, name, models, limits) -> str:
        return self.store.create(name, models=models, limits=limits)

    def list(self) -> list[dict]:
        return [k.public() for k in self.store.list()]

    def revoke(self, name: str) -> None:
        if not self.store.revoke(name):
            raise ValueError(f"no active key named '{name}'")


class _GatewayKeys:
    """A running gateway's ``/admin/keys``, with the admin key."""

    def __init__(self, endpoint: str, admin: str):
        self.endpoint, self.admin = endpoint.rstrip("/"), admin

    def create(self, name, models, limits) -> str:
        body = {"name": name, "models": models, "rpm": limits.rpm, "tpm": limits.tpm,
                "daily_tokens": limits.daily_tokens, "monthly_tokens": limits.monthly_tokens}
        return self._call("POST", "/admin/keys", body)["key"]

    def list(self) -> list[dict]:
        return self._call("GET", "/admin/keys")["data"]

    def revoke(self, name: str) -> None:
        from urllib.parse import quote

        self._call("DELETE", f"/admin/keys/{quote(name, safe='')}")

    def _call(self, method: str, path: str, body: dict | None = None) -> dict:
        return _admin_request(f"{self.endpoint}{path}", self.admin, method, body,
                              error=lambda d: d.get("error", {}).get("message"))


def _admin_key_or_fail(settings) -> str:
    key = admin_key(settings)
    if key is None:
        raise ValueError(f"no admin key: set LLMFN_ADMIN_KEY or --admin-key-file, or run this on the "
                         f"service's machine as its user (it reads {settings.admin_key_path})")
    return key


def _admin_request(url: str, admin: str, method: str, body: dict | None, *, error) -> dict:
    """One control-plane request; an HTTP error becomes a ValueError with the server's message."""
    import urllib.error
    import urllib.request

    req = urllib.request.Request(url, method=method, data=json.dumps(body).encode() if body is not None else None,
                                 headers={"Content-Type": "application/json", "Authorization": f"Bearer {admin}"})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as err:
        try:
            detail = error(json.loads(err.read() or b"{}"))
        except ValueError:
            detail = None
        raise ValueError(detail or f"{err.code} {err.reason}") from None
    except urllib.error.URLError as err:
        raise ValueError(f"cannot reach {url}: {err.reason}") from None


def usage(args: argparse.Namespace) -> int:
    import time

    from runtime.accounting.ledger import Ledger
    from runtime.accounting.reports import parse_period, render_text, usage_report

    since, until = parse_period(args.since, args.from_, args.to, time.time())
    service_type, resource = (("function", args.function) if args.function else
                              ("key", args.key) if args.key else (None, None))
    settings = settings_of(args)
    secure(settings.data_dir)
    ledger = Ledger(settings.ledger_path)
    try:
        report = usage_report(ledger, service_type=service_type, resource=resource, model=args.model,
                              since=since, until=until, by=args.by)
    finally:
        ledger.close()
    print(json.dumps(report, indent=2) if args.json else render_text(report))
    return 0


def init(args: argparse.Namespace) -> int:
    from runtime.starters import create_project

    path = create_project(args.name, args.starter)
    print(f"created {path} from the '{args.starter}' starter; next:\n"
          f"  cd {args.name} && llmfn invoke {_first_function(path)} -e events/event.json", file=sys.stderr)
    return 0


def _first_function(project: Path) -> str:
    return next(iter(load_template(project / "template.yaml").functions), "Function")


def deploy(args: argparse.Namespace) -> int:
    import s3fs

    from runtime.deploy import deploy as run_deploy

    client = from_flags(ClientSettings, args)
    if not client.deploy_bucket:
        raise ValueError("--s3-bucket (or LLMFN_DEPLOY_BUCKET) is required")
    settings = settings_of(args)
    admin = _admin_key_or_fail(settings)
    template = load_template(settings.template)
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": settings.s3_endpoint_url}
                           if settings.s3_endpoint_url else {})
    run_deploy(template, bucket=client.deploy_bucket, endpoint=client.endpoint, fs=fs,
               cache_root=settings.cache_dir / "builds", admin_key=admin)
    return 0


def rollback(args: argparse.Namespace) -> int:
    admin = _admin_key_or_fail(settings_of(args))
    endpoint = from_flags(ClientSettings, args).endpoint
    body = {"FunctionVersion": str(args.to)} if args.to else {}
    url = f"{endpoint.rstrip('/')}/2015-03-31/functions/{args.function}/aliases/live"
    version = _admin_request(url, admin, "PUT", body, error=lambda d: d.get("Message"))["FunctionVersion"]
    print(f"{args.function} is on version {version}", file=sys.stderr)
    return 0


COMMANDS = {"serve": serve, "invoke": invoke, "start-api": start_api, "start-lambda": start_lambda,
            "generate-event": generate_event, "keys": keys, "usage": usage, "init": init,
            "deploy": deploy, "rollback": rollback}
