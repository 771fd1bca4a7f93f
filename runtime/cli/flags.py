"""The command line's flags. Every settings flag is generated from the settings
models (``--port`` / ``LLMFN_PORT``), so a laptop and a container are configured
alike and ``--help`` lists every variable; the flags become settings here too."""
from __future__ import annotations

import argparse
import logging
import os
import sys

from runtime.settings import ClientSettings, PoolSettings, Settings, add_flags, from_flags

# Flags of every command that runs the product; serve adds its own.
_SERVICE_ONLY = ("api_port", "lambda_port", "bundle_max_bytes", "bundle_max_unzipped_bytes", "bundle_max_entries",
                 "event_queue_limit", "failure_destination", "retry_delay_s", "s3_poll_s")
_RUN = tuple(f for f in Settings.model_fields if f not in _SERVICE_ONLY)
_FLAGS = {"env_vars": ("--env-vars", "-n")}
_FLAGS["debug_port"] = ("--debug-port", "-d")
# Where a client of the control plane finds the admin key: LLMFN_ADMIN_KEY, the key
# file, the data dir's admin.key (on the service's machine).
_ADMIN = ("admin_key", "admin_key_file", "data_dir")
# Secrets a flag can carry, and where they belong instead: a command line is readable by every local user.
_SECRET_FLAGS = {"admin_key": ("--admin-key", "LLMFN_ADMIN_KEY or --admin-key-file"),
                 "api_keys": ("--api-keys", "LLMFN_API_KEYS or --api-keys-file")}


def _run_flags(p: argparse.ArgumentParser, extra: tuple[str, ...] = (), **kw) -> None:
    add_flags(p, Settings, _RUN + extra, flags={**_FLAGS, "api_port": ("--api-port", "-p")}, **kw)
    pools = p.add_argument_group("model pools", "Each one given overrides every served model's pool.")
    add_flags(pools, PoolSettings)


def _add_commands(sub) -> None:
    p = sub.add_parser("serve", help="Run the whole product: gateway, functions, HTTP routes, triggers.")
    _run_flags(p, _SERVICE_ONLY)

    p = sub.add_parser("invoke", help="Invoke one function once (like sam local invoke).")
    p.add_argument("function", help="Logical ID of the function in the template.")
    p.add_argument("-e", "--event", help="Event JSON file, or - for standard input.")
    _run_flags(p, defaults={"port": "0"})

    p = sub.add_parser("start-api", help="Serve the HttpApi/Api events as HTTP routes (like sam local start-api).")
    _run_flags(p, ("api_port",))

    p = sub.add_parser("start-lambda", help="Serve the Lambda Invoke API (like sam local start-lambda).")
    _run_flags(p, ("lambda_port",))

    p = sub.add_parser("keys", help="Create, list and revoke API keys.")
    ksub = p.add_subparsers(dest="keys_command", required=True)
    k = ksub.add_parser("create", help="Create a key; its secret is printed once.")
    k.add_argument("name")
    k.add_argument("--models", help="Comma-separated models the key may use (default: all).")
    for flag in ("--rpm", "--tpm", "--daily-tokens", "--monthly-tokens"):
        k.add_argument(flag, type=int, default=None)
    ksub.add_parser("list", help="List keys (never their secrets).")
    k = ksub.add_parser("revoke", help="Revoke a key.")
    k.add_argument("name")
    for k in ksub.choices.values():
        add_flags(k, Settings, ("data_dir", "admin_key_file"))
        k.add_argument("--endpoint", default=None, help="Manage the keys of this running gateway through its "
                       "/admin/keys (with the admin key) instead of the data dir's key store.")

    p = sub.add_parser("usage", help="Usage report from the ledger.")
    who = p.add_mutually_exclusive_group()
    who.add_argument("--function", help="One function's usage.")
    who.add_argument("--key", help="One key's usage.")
    p.add_argument("--model")
    p.add_argument("--since", help="7d, 2w, 3m (at most 3 months back).")
    p.add_argument("--from", dest="from_", help="First day, YYYY-MM-DD.")
    p.add_argument("--to", help="Last day, YYYY-MM-DD.")
    p.add_argument("--by", choices=["day", "model", "resource"], default="day")
    p.add_argument("--json", action="store_true", help="The report as JSON.")
    add_flags(p, Settings, ("data_dir",))

    p = sub.add_parser("deploy", help="Build, upload to S3 and switch the running service to new code.")
    add_flags(p, ClientSettings, flags={"deploy_bucket": ("--s3-bucket",)})
    add_flags(p, Settings, ("template", "parameter_overrides", "s3_endpoint_url", "cache_dir", *_ADMIN))

    p = sub.add_parser("rollback", help="Switch a function back to an earlier deployed version.")
    p.add_argument("function")
    p.add_argument("--to", type=int, default=None, help="Version number (default: the one before).")
    add_flags(p, ClientSettings, ("endpoint",))
    add_flags(p, Settings, _ADMIN)

    p = sub.add_parser("init", help="Create a working project from a starter.")
    p.add_argument("name", help="Folder to create.")
    p.add_argument("--template", dest="starter", default="hello-llm",
                   help="hello-llm | s3-summarizer | scheduled-digest")

    p = sub.add_parser("generate-event", help="Print a sample event (like sam local generate-event).")
    p.add_argument("service", help="apigateway | s3 | schedule")
    p.add_argument("event", nargs="?", default=None, help="http | aws-proxy (apigateway), put (s3)")
    p.add_argument("--bucket", default=None)
    p.add_argument("--key", default=None)
    p.add_argument("--method", default=None)
    p.add_argument("--path", default=None)
    p.add_argument("--body", default=None)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="llmfn", description=__doc__.splitlines()[0])
    _add_commands(p.add_subparsers(dest="command", required=True))
    return p


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
