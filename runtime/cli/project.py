"""The commands that start a project: ``init`` (from a starter) and
``generate-event`` (sample events, like SAM's)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from runtime.template import load_template


def generate_event(args: argparse.Namespace) -> int:
    from runtime.triggers.events import sample_event

    options = {k: v for k in ("bucket", "key", "method", "path", "body") if (v := getattr(args, k))}
    print(json.dumps(sample_event(args.service, args.event, **options), indent=2))
    return 0


def init(args: argparse.Namespace) -> int:
    from runtime.cli.starters import create_project

    path = create_project(args.name, args.starter)
    print(f"created {path} from the '{args.starter}' starter; next:\n"
          f"  cd {args.name} && llmfn invoke {_first_function(path)} -e events/event.json", file=sys.stderr)
    return 0


def _first_function(project: Path) -> str:
    return next(iter(load_template(project / "template.yaml").functions), "Function")
