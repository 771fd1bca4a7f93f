"""The commands that manage a service: ``keys``, ``usage``, ``deploy`` and
``rollback`` (on the service's machine, or through its control plane with the
admin key)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from runtime.cli.flags import settings_of
from runtime.datadir import admin_key, secure
from runtime.settings import ClientSettings, from_flags
from runtime.template import load_template, parse_parameter_overrides


def keys(args: argparse.Namespace) -> int:
    from runtime.accounting.quotas import Limits

    settings = settings_of(args)
    models = [m.strip() for m in args.models.split(",") if m.strip()] if getattr(args, "models", None) else None
    limits = Limits(*(getattr(args, k, None) for k in ("rpm", "tpm", "daily_tokens", "monthly_tokens")))
    manage = (_GatewayKeys(args.endpoint, _admin_key_or_fail(settings)) if args.endpoint
              else _LocalKeys(settings.store("keys"), settings.data_dir))
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
    """The key store itself: its file on the service's machine, as its user, or the
    database of ``--database-url``."""

    def __init__(self, target: Path | str, data_dir: Path):
        from runtime.accounting.keys import KeyStore

        secure(data_dir)
        self.store = KeyStore(target)

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

    if args.calls:
        return _calls(args)
    since, until = parse_period(args.since, args.from_, args.to, time.time())
    service_type, resource = _subject(args)
    settings = settings_of(args)
    secure(settings.data_dir)
    ledger = Ledger(settings.store("ledger"))
    try:
        report = usage_report(ledger, service_type=service_type, resource=resource, model=args.model,
                              since=since, until=until, by=args.by)
    finally:
        ledger.close()
    print(json.dumps(report, indent=2) if args.json else render_text(report))
    return 0


def _subject(args: argparse.Namespace) -> tuple[str | None, str | None]:
    return (("function", args.function) if args.function else
            ("key", args.key) if args.key else (None, None))


def _calls(args: argparse.Namespace) -> int:
    """``llmfn usage --calls``: the ledger's rows, newest first, a page at a time."""
    from runtime.accounting import call_log
    from runtime.accounting.ledger import Ledger

    service_type, resource = _subject(args)
    flt = call_log.CallFilter(service_type=service_type, resource=resource, model=args.model,
                              status=args.status, since=calls_since(args.since or args.from_),
                              until=call_log.parse_moment(args.to, end=True) if args.to else None)
    settings = settings_of(args)
    secure(settings.data_dir)
    ledger = Ledger(settings.store("ledger"))
    try:
        page = call_log.list_calls(ledger, flt, limit=args.limit, cursor=args.cursor)
    finally:
        ledger.close()
    fmt = "json" if args.json else args.format
    text = {"json": lambda: json.dumps(page, indent=2) + "\n", "csv": lambda: call_log.to_csv(page["data"]),
            "text": lambda: call_log.render_text(page["data"])}[fmt]()
    sys.stdout.write(text)
    if page["next_cursor"]:
        print(f"more calls: --cursor {page['next_cursor']}", file=sys.stderr)
    return 0


def calls_since(text: str | None) -> float | None:
    """A period back from now (7d, 2w, 3m) or a moment (ISO date or datetime): where
    ``--since`` of ``usage --calls`` and ``ledger export`` starts."""
    import time

    from runtime.accounting.call_log import parse_moment
    from runtime.accounting.reports import parse_period

    if not text:
        return None
    try:
        return parse_moment(text)
    except ValueError:
        return parse_period(text, None, None, time.time())[0]


def deploy(args: argparse.Namespace) -> int:
    import s3fs

    from runtime.cli.deploy import deploy_template

    client = from_flags(ClientSettings, args)
    if not client.deploy_bucket:
        raise ValueError("--s3-bucket (or LLMFN_DEPLOY_BUCKET) is required")
    settings = settings_of(args)
    admin = _admin_key_or_fail(settings)
    template = load_template(settings.template, parse_parameter_overrides(settings.parameter_overrides))
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": settings.s3_endpoint_url}
                           if settings.s3_endpoint_url else {})
    deploy_template(template, bucket=client.deploy_bucket, endpoint=client.endpoint, fs=fs,
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
