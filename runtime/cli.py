"""The ``llmfn`` command. Every flag mirrors an environment variable
(``--port`` / ``LLMFN_PORT``), so a laptop and a container are configured alike."""
from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys

from runtime.app import PoolConfig, load_template, parse_model_flag
from runtime.app.template import TemplateError
from runtime.settings import GatewaySettings

log = logging.getLogger("llmfn")


def _env_help(field: str) -> str:
    info = GatewaySettings.model_fields[field]
    return f"{info.description} [env LLMFN_{field.upper()}]"


def _gateway_flags(p) -> None:
    for field, flag in (("host", "--host"), ("port", "--port"), ("template", "--template"),
                        ("cache_dir", "--cache-dir"), ("s3_endpoint_url", "--s3-endpoint-url"),
                        ("api_keys", "--api-keys"), ("api_keys_file", "--api-keys-file"),
                        ("require_keys", "--require-keys"), ("data_dir", "--data-dir"),
                        ("admin_key", "--admin-key"), ("admin_key_file", "--admin-key-file"),
                        ("redis_url", "--redis-url"), ("log_level", "--log-level")):
        p.add_argument(flag, dest=field, default=None, help=_env_help(field))
    for field in ("max_body_bytes", "max_messages", "max_tools", "max_tools_bytes"):  # input limits
        p.add_argument("--" + field.replace("_", "-"), dest=field, default=None, help=_env_help(field))
    p.add_argument("--model", action="append", default=[], metavar="[NAME=]SOURCE",
                   help="Serve this model (s3://bucket/key.gguf, a path, or 'embedded'); "
                        "repeatable; replaces the template's models. [env LLMFN_MODEL]")
    for name, info in PoolConfig.model_fields.items():
        env = f"LLMFN_{name.upper()}"
        p.add_argument("--" + name.replace("_", "-"), dest="pool_" + name, default=os.environ.get(env),
                       help=f"{info.description} For --model models. [env {env}]")


# A client of the control plane finds the admin key in this order: LLMFN_ADMIN_KEY,
# the key file, the data dir's admin.key (on the service's machine).
_ADMIN_KEY_FLAGS = (("admin_key", "--admin-key"), ("admin_key_file", "--admin-key-file"), ("data_dir", "--data-dir"))
# Secrets a flag can carry, and where they belong instead: a command line is readable by every local user.
_SECRET_FLAGS = {"admin_key": ("--admin-key", "LLMFN_ADMIN_KEY or --admin-key-file"),
                 "api_keys": ("--api-keys", "LLMFN_API_KEYS or --api-keys-file")}
# Commands that write the data dir: what they create is the service user's alone.
_PRIVATE_COMMANDS = frozenset({"serve", "invoke", "start-api", "start-lambda", "keys", "usage"})


def _add_commands(sub) -> None:
    p = sub.add_parser("serve", help="Run the whole product: gateway, functions, HTTP routes, triggers.")
    _gateway_flags(p)
    p.add_argument("--api-port", dest="api_port", type=int,
                   default=int(os.environ.get("LLMFN_API_PORT", "3000")), help="[env LLMFN_API_PORT]")
    p.add_argument("--lambda-port", dest="lambda_port", type=int,
                   default=int(os.environ.get("LLMFN_LAMBDA_PORT", "3001")), help="[env LLMFN_LAMBDA_PORT]")
    p.add_argument("--env-vars", "-n", help="JSON file of environment variables per function.")

    p = sub.add_parser("invoke", help="Invoke one function once (like sam local invoke).")
    p.add_argument("function", help="Logical ID of the function in the template.")
    p.add_argument("-e", "--event", help="Event JSON file, or - for standard input.")
    p.add_argument("--env-vars", "-n", help="JSON file of environment variables per function.")
    p.add_argument("--parameter-overrides", nargs="+", default=[], metavar="KEY=VALUE",
                   help="Values of the template's Parameters: Key=Value or ParameterKey=Key,ParameterValue=Value.")
    _gateway_flags(p)
    p.set_defaults(port="0")

    p = sub.add_parser("start-api", help="Serve the HttpApi/Api events as HTTP routes (like sam local start-api).")
    p.add_argument("--api-port", "-p", dest="api_port", type=int,
                   default=int(os.environ.get("LLMFN_API_PORT", "3000")), help="[env LLMFN_API_PORT]")
    p.add_argument("--env-vars", "-n", help="JSON file of environment variables per function.")
    _gateway_flags(p)

    p = sub.add_parser("start-lambda", help="Serve the Lambda Invoke API (like sam local start-lambda).")
    p.add_argument("--lambda-port", dest="lambda_port", type=int,
                   default=int(os.environ.get("LLMFN_LAMBDA_PORT", "3001")), help="[env LLMFN_LAMBDA_PORT]")
    p.add_argument("--env-vars", "-n", help="JSON file of environment variables per function.")
    _gateway_flags(p)

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
        k.add_argument("--data-dir", dest="data_dir", default=None, help=_env_help("data_dir"))
        k.add_argument("--endpoint", default=None, help="Manage the keys of this running gateway through its "
                       "/admin/keys (with the admin key) instead of the data dir's key store.")
        k.add_argument("--admin-key-file", dest="admin_key_file", default=None, help=_env_help("admin_key_file"))

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
    p.add_argument("--data-dir", dest="data_dir", default=None, help=_env_help("data_dir"))

    p = sub.add_parser("deploy", help="Build, upload to S3 and switch the running service to new code.")
    p.add_argument("--s3-bucket", default=os.environ.get("LLMFN_DEPLOY_BUCKET"), required=False,
                   help="Bucket for the code bundles. [env LLMFN_DEPLOY_BUCKET]")
    p.add_argument("--endpoint", default=os.environ.get("LLMFN_ENDPOINT", "http://127.0.0.1:3001"),
                   help="The running service's Lambda API. [env LLMFN_ENDPOINT]")
    for field, flag in (("template", "--template"), ("s3_endpoint_url", "--s3-endpoint-url"),
                        ("cache_dir", "--cache-dir"), *_ADMIN_KEY_FLAGS):
        p.add_argument(flag, dest=field, default=None, help=_env_help(field))

    p = sub.add_parser("rollback", help="Switch a function back to an earlier deployed version.")
    p.add_argument("function")
    p.add_argument("--to", type=int, default=None, help="Version number (default: the one before).")
    p.add_argument("--endpoint", default=os.environ.get("LLMFN_ENDPOINT", "http://127.0.0.1:3001"),
                   help="The running service's Lambda API. [env LLMFN_ENDPOINT]")
    for field, flag in _ADMIN_KEY_FLAGS:
        p.add_argument(flag, dest=field, default=None, help=_env_help(field))

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


def _settings(args: argparse.Namespace) -> GatewaySettings:
    given = {k: v for k, v in vars(args).items()
             if k in GatewaySettings.model_fields and v is not None}
    for field, (flag, instead) in _SECRET_FLAGS.items():
        if field in given:
            print(f"llmfn: warning: {flag} puts a secret on the command line, where every local user can "
                  f"read it (ps, /proc/PID/cmdline); use {instead}", file=sys.stderr, flush=True)
    return GatewaySettings(**given)


def _forget_secret_env() -> None:
    """Once the settings hold them, the secrets leave the environment that workers and
    every other child process inherit."""
    for field in _SECRET_FLAGS:
        os.environ.pop(f"LLMFN_{field.upper()}", None)


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
    from runtime.app import Template
    from runtime.service import Service, run
    from runtime.stack import Stack, load_env_vars

    settings = _settings(args)
    _forget_secret_env()
    logging.getLogger().setLevel(settings.log_level.upper())
    models = _models(args, settings)
    # `--model` alone runs a plain gateway; the template's functions come with it
    # when the template is named (or when no --model is given).
    use_template = settings.template.exists() and (not args.model or args.template is not None)
    template = load_template(settings.template) if use_template else Template()
    stack = Stack(settings=settings, template=template, models=models,
                  env_vars=load_env_vars(getattr(args, "env_vars", None)))
    stack.admin_key = _admin_key_for_serve(settings)
    names = ", ".join(f"{m.name} ({m.source})" for m in models)
    print(f"llmfn models: {names}", file=sys.stderr, flush=True)
    asyncio.run(run(Service(stack, api_port=args.api_port, lambda_port=args.lambda_port,
                            s3_endpoint_url=settings.s3_endpoint_url)))
    return 0


def _admin_key_for_serve(settings: GatewaySettings) -> str:
    """The configured admin key, or the data dir's, created at first start; says where (never what) it is."""
    from runtime.datadir import admin_key, secure

    secure(settings.data_dir)
    existed = settings.admin_key_path.exists()
    key = admin_key(settings, create=True)
    if settings.admin_key is None or not settings.admin_key.get_secret_value():
        said = "read from" if existed else "created in"
        print(f"llmfn admin key {said} {settings.admin_key_path} (deploy, rollback, keys and /admin/* need it)",
              file=sys.stderr, flush=True)
    return key


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(prog="llmfn", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    _add_commands(sub)
    args = parser.parse_args(argv)
    if args.command in _PRIVATE_COMMANDS:
        os.umask(0o077)
    from runtime.commands import (deploy, generate_event, init, invoke, keys, rollback, start_api,
                                  start_lambda, usage)
    commands = {"serve": serve, "invoke": invoke, "start-api": start_api, "start-lambda": start_lambda,
                "generate-event": generate_event, "keys": keys, "usage": usage, "init": init,
                "deploy": deploy, "rollback": rollback}
    try:
        return commands[args.command](args)
    except BrokenPipeError:  # output piped into `head` and the like
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (TemplateError, ValueError, FileNotFoundError, OSError) as exc:
        print(f"llmfn: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
