"""The command line's flags. Every settings flag is generated from the settings
models (``--gateway-port`` / ``LLMFN_GATEWAY_PORT``), so a laptop and a container are configured
alike and ``--help`` lists every variable; the flags become settings here too."""
from __future__ import annotations

import argparse
import logging
import os
import sys
from urllib.parse import urlsplit

from runtime import log_format
from runtime.settings import ClientSettings, PoolSettings, Settings, add_flags, from_flags

# Flags of every command that runs the product; serve adds its own.
_SERVICE_ONLY = ("api_port", "lambda_port", "bundle_max_bytes", "bundle_max_unzipped_bytes", "bundle_max_entries",
                 "event_queue_limit", "failure_destination", "retry_delay_s", "s3_poll_s")
_SERVICE_ONLY += ("delivery_lease_s",)
# What a long-running server has and a single invoke has not.
_SERVERS_ONLY = ("warm_containers",)
_NEGATED = ("reload",)  # on by default: --no-<name> turns it off (the variable takes true or false)
_RUN = tuple(f for f in Settings.model_fields if f not in _SERVICE_ONLY + _SERVERS_ONLY + _NEGATED)
_FLAGS = {"env_vars": ("--env-vars", "-n"), "template": ("--template", "-t"), "log_file": ("--log-file", "-l")}
# SAM's -p/--port: the port of what the command serves (start-api: the HTTP API,
# start-lambda: the Lambda API); the gateway's own is --gateway-port.
_SAM_PORT = {"api_port": ("-p", "--port", "--api-port"), "lambda_port": ("-p", "--port", "--lambda-port")}
_FLAGS["debug_port"] = ("--debug-port", "-d")
# Where a client of the control plane finds the admin key: LLMFN_ADMIN_KEY, the key
# file, the data dir's admin.key (on the service's machine).
_ADMIN = ("admin_key", "admin_key_file", "data_dir")
# Secrets a flag can carry, and where they belong instead: a command line is readable by every local user.
_SECRET_FLAGS = {"admin_key": ("--admin-key", "LLMFN_ADMIN_KEY or --admin-key-file"),
                 "api_keys": ("--api-keys", "LLMFN_API_KEYS or --api-keys-file")}


class _Deprecated(argparse.Action):
    """A flag's former name: it still works, and says what to use instead."""

    def __init__(self, *args, instead: str, **kw):
        super().__init__(*args, **kw)
        self.instead = instead

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"llmfn: warning: {option_string} is deprecated; use {self.instead}", file=sys.stderr, flush=True)
        setattr(namespace, self.dest, values)


def _run_flags(p: argparse.ArgumentParser, extra: tuple[str, ...] = (), ports: dict | None = None, **kw) -> None:
    add_flags(p, Settings, _RUN + extra, flags={**_FLAGS, "api_port": ("--api-port", "-p"), **(ports or {})}, **kw)
    for name in _NEGATED:
        p.add_argument(f"--{name.replace('_', '-')}", dest=name, action=argparse.BooleanOptionalAction, default=None,
                       help=f"{Settings.model_fields[name].description} [env LLMFN_{name.upper()}]")
    pools = p.add_argument_group("model pools", "Each one given overrides every served model's pool.")
    add_flags(pools, PoolSettings)


def _add_commands(sub) -> None:
    p = sub.add_parser("serve", help="Run the whole product: gateway, functions, HTTP routes, triggers.")
    _run_flags(p, _SERVICE_ONLY + _SERVERS_ONLY)
    p.add_argument("--port", dest="gateway_port", action=_Deprecated, instead="--gateway-port",
                   help=argparse.SUPPRESS)

    for add in _SAM_COMMANDS:
        add(sub)
    p = sub.add_parser("local", help="SAM's command line: llmfn local invoke | start-api | start-lambda | "
                                     "generate-event, as sam local takes them.")
    local = p.add_subparsers(dest="command", required=True)  # `local X` runs X
    for add in _SAM_COMMANDS:
        add(local)

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
        add_flags(k, Settings, ("data_dir", "admin_key_file", "database_url"))
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
    p.add_argument("--calls", action="store_true", help="List individual calls (newest first) instead of a report.")
    p.add_argument("--status", choices=["success", "failure", "running"], help="With --calls: only these calls.")
    p.add_argument("--limit", type=int, default=100, help="With --calls: calls per page (at most 1000).")
    p.add_argument("--cursor", help="With --calls: the next page, from the cursor the last one printed.")
    p.add_argument("--format", choices=["text", "csv", "json"], default="text", help="With --calls: output format.")
    add_flags(p, Settings, ("data_dir", "database_url"))

    p = sub.add_parser("ledger", help="Move the usage ledger and the API keys from one database to another.")
    lsub = p.add_subparsers(dest="ledger_command", required=True)
    k = lsub.add_parser("export", help="Write every ledger row and every API key (its hash, never a secret) "
                                       "to standard output, one JSON object a line.")
    k.add_argument("--format", choices=["jsonl"], default="jsonl", help="JSON lines (the only format).")
    k.add_argument("--since", help="Only the calls from then on: 7d, 2w, 3m, or an ISO date or datetime "
                                   "(every key is written).")
    k = lsub.add_parser("import", help="Add the rows and keys of an export; importing one twice adds nothing.")
    k.add_argument("file", help="The export, or - for standard input.")
    for k in lsub.choices.values():
        add_flags(k, Settings, ("data_dir", "database_url"))

    p = sub.add_parser("deploy", help="Build, upload to S3 and switch the running service to new code.")
    add_flags(p, ClientSettings, flags={"deploy_bucket": ("--s3-bucket",)})
    add_flags(p, Settings, ("template", "parameter_overrides", "s3_endpoint_url", "cache_dir", *_ADMIN))

    p = sub.add_parser("rollback", help="Switch a function back to an earlier deployed version.")
    p.add_argument("function")
    p.add_argument("--to", type=int, default=None, help="Version number (default: the one before).")
    add_flags(p, ClientSettings, ("endpoint",))
    add_flags(p, Settings, _ADMIN)

    p = sub.add_parser("logs", help="Print a function's log lines kept by serve and the emulators (like sam logs).")
    p.add_argument("function", help="Logical ID of the function in the template.")
    p.add_argument("--since", default="10m", help="From this long ago (30s, 10m, 2h, 1d) or this time "
                   "(ISO 8601, e.g. 2026-11-22T05:00:00; UTC unless it names a zone). Default: 10m.")
    p.add_argument("--tail", action="store_true", help="Keep printing new lines until Ctrl-C.")
    p.add_argument("--filter", default=None, help="Only lines whose message contains this text "
                   "(a plain, case-sensitive substring).")
    add_flags(p, Settings, ("data_dir",))

    p = sub.add_parser("validate", help="Check a template (cfn-lint, and llmfn's own checks): exit 0 when clean, "
                                        "1 with one 'path: message' line per problem.")
    add_flags(p, Settings, ("template", "parameter_overrides", "model"), flags=_FLAGS)

    p = sub.add_parser("init", help="Create a working project from a starter.")
    p.add_argument("name", help="Folder to create.")
    p.add_argument("--starter", default="hello-llm", help="hello-llm | s3-summarizer | scheduled-digest")
    p.add_argument("--template", dest="starter", action=_Deprecated, instead="--starter", help=argparse.SUPPRESS)


def _invoke(sub) -> None:
    p = sub.add_parser("invoke", help="Invoke one function once (like sam local invoke).")
    p.add_argument("function", help="Logical ID of the function in the template.")
    p.add_argument("-e", "--event", help="Event JSON file, or - for standard input.")
    _run_flags(p, defaults={"gateway_port": "0"})


def _start_api(sub) -> None:
    p = sub.add_parser("start-api", help="Serve the HttpApi/Api events as HTTP routes (like sam local start-api).")
    _run_flags(p, ("api_port", *_SERVERS_ONLY), ports=_SAM_PORT)


def _start_lambda(sub) -> None:
    p = sub.add_parser("start-lambda", help="Serve the Lambda Invoke API (like sam local start-lambda).")
    _run_flags(p, ("lambda_port", *_SERVERS_ONLY), ports=_SAM_PORT)


def _generate_event(sub) -> None:
    p = sub.add_parser("generate-event", help="Print a sample event (like sam local generate-event).")
    p.add_argument("service", help="apigateway | s3 | schedule")
    p.add_argument("event", nargs="?", default=None, help="http | aws-proxy (apigateway), put (s3)")
    p.add_argument("--bucket", default=None)
    p.add_argument("--key", default=None)
    p.add_argument("--method", default=None)
    p.add_argument("--path", default=None)
    p.add_argument("--body", default=None)


# The commands SAM has under `sam local`: llmfn has them at the top and under `local`.
_SAM_COMMANDS = (_invoke, _start_api, _start_lambda, _generate_event)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="llmfn", description=__doc__.splitlines()[0])
    _add_commands(p.add_subparsers(dest="command", required=True))
    return p


def settings_of(args: argparse.Namespace) -> Settings:
    for field, (flag, instead) in _SECRET_FLAGS.items():
        if getattr(args, field, None) is not None:
            print(f"llmfn: warning: {flag} puts a secret on the command line, where every local user can "
                  f"read it (ps, /proc/PID/cmdline); use {instead}", file=sys.stderr, flush=True)
    if urlsplit(getattr(args, "database_url", None) or "").password:
        print("llmfn: warning: --database-url holds a password, which every local user can read on the "
              "command line (ps, /proc/PID/cmdline); use LLMFN_DATABASE_URL, PGPASSWORD or ~/.pgpass",
              file=sys.stderr, flush=True)
    settings = from_flags(Settings, args)
    # Once the settings hold them, the secrets leave the environment that workers and
    # every other child process inherit.
    for field in (*_SECRET_FLAGS, "database_url"):
        os.environ.pop(f"LLMFN_{field.upper()}", None)
    logging.getLogger().setLevel(settings.log_level.upper())
    if hasattr(args, "log_format"):  # the commands that run the product
        log_format.configure(settings.log_format)
        if settings.log_format == "json":
            log_format.relay_stderr()
    return settings
