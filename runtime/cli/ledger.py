"""``llmfn ledger export`` and ``llmfn ledger import``: the usage ledger and the
API keys of one database (the data dir's SQLite files, or ``--database-url``)
as JSON lines, and back into another (``runtime.accounting.transfer``)."""
from __future__ import annotations

import argparse
import sys
from contextlib import nullcontext
from pathlib import Path

from runtime.cli.control import calls_since
from runtime.cli.flags import settings_of
from runtime.database import is_postgres, redact
from runtime.datadir import secure


def ledger(args: argparse.Namespace) -> int:
    from runtime.accounting.keys import KeyStore

    settings = settings_of(args)
    secure(settings.data_dir)
    keys = KeyStore(settings.store("keys"))
    try:
        if args.ledger_command == "export":
            return _export(args, settings.store("ledger"), keys)
        return _import(args, settings.store("ledger"), keys)
    finally:
        keys.close()


def _export(args: argparse.Namespace, target, keys) -> int:
    from runtime.accounting.ledger import Ledger
    from runtime.accounting.transfer import export_lines

    since = calls_since(args.since)
    source = Ledger(target, recover=False)  # an export changes no row of its source
    try:
        for line in export_lines(source, keys, since):
            sys.stdout.write(line + "\n")
    finally:
        source.close()
    return 0


def _import(args: argparse.Namespace, target, keys) -> int:
    from runtime.accounting.transfer import import_lines

    with (nullcontext(sys.stdin) if args.file == "-" else Path(args.file).open(encoding="utf-8")) as lines:
        done = import_lines(target, keys, lines)
    where = redact(target) if is_postgres(target) else str(target)
    print(f"imported {done.calls} calls ({done.calls_present} already there) and {done.keys} keys "
          f"({done.keys_present} already there) into {where}", file=sys.stderr)
    return 0
