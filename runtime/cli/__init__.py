"""The ``llmfn`` command: ``runtime.cli.flags`` declares the flags (generated
from the settings), and each command's body lives with its kind: ``run``
(serve, invoke, start-api, start-lambda), ``control`` (keys, usage, deploy,
rollback), ``ledger`` (export, import), ``project`` (init, generate-event), ``logs`` (the function log
lines kept in the data dir), ``validate``."""
from __future__ import annotations

import logging
import os
import sys

from runtime.cli.flags import parser
from runtime.embedded_s3 import EmbeddedS3Unavailable
from runtime.log_format import TEXT_FORMAT
from runtime.template import TemplateError

# Commands that write the data dir: what they create is the service user's alone.
_PRIVATE_COMMANDS = frozenset({"serve", "invoke", "start-api", "start-lambda", "keys", "usage", "logs", "ledger"})


def _commands() -> dict:
    from runtime.cli import control, ledger, logs, project, run, validate

    return {"serve": run.serve, "invoke": run.invoke, "start-api": run.start_api, "start-lambda": run.start_lambda,
            "generate-event": project.generate_event, "init": project.init, "keys": control.keys,
            "usage": control.usage, "logs": logs.logs, "deploy": control.deploy, "rollback": control.rollback,
            "validate": validate.validate, "ledger": ledger.ledger}


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format=TEXT_FORMAT)
    args = parser().parse_args(argv)
    if args.command in _PRIVATE_COMMANDS:
        os.umask(0o077)
    try:
        return _commands()[args.command](args)
    except BrokenPipeError:  # output piped into `head` and the like
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (TemplateError, EmbeddedS3Unavailable, ValueError, OSError) as exc:
        print(f"llmfn: {exc}", file=sys.stderr)
        return 2
