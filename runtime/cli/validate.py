"""``llmfn validate``: a template checked without running anything. cfn-lint
checks it as CloudFormation/SAM; llmfn's own checks are the template reader's
(every ``TemplateError``: parameters, intrinsics, events, quotas) and what only
the whole project shows: the models functions name are served, and each
handler's module is in its ``CodeUri``. One line per problem, ``path: message``.
It starts nothing and reads no model."""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from runtime.server import served_models
from runtime.settings import Settings, from_flags
from runtime.template import (
    Template,
    TemplateError,
    load_template,
    parse_parameter_overrides,
    parse_template,
    read_document,
)

FUNCTION = "AWS::Serverless::Function"
INSTALL = "pip install 'llmfn[validate]'"


def validate(args: argparse.Namespace) -> int:
    settings = from_flags(Settings, args)
    if not settings.template.is_file():
        raise TemplateError(f"{settings.template}: no such template")  # a usage error: exit 2
    problems = lint_problems(settings.template)
    if problems is None:
        print(f"llmfn: validate needs cfn-lint: {INSTALL}", file=sys.stderr)
        return 2
    overrides = parse_parameter_overrides(settings.parameter_overrides)
    template, read = read_problems(settings.template, overrides)
    problems = read + problems
    if template is not None:
        served = served_models(settings, template, {})
        problems += model_problems(template, {n for m in served for n in (m.name, *m.aliases)})
        problems += handler_problems(template)
    for line in problems:
        print(line)
    if not problems:
        print(f"{settings.template}: valid", file=sys.stderr)
    return 1 if problems else 0


def lint_problems(path: Path) -> list[str] | None:
    """cfn-lint's errors and warnings, one per place (its details of a place it already
    names are left out); None when cfn-lint is not installed."""
    try:
        from cfnlint.api import ManualArgs, lint_file
    except ImportError:
        return None
    logging.getLogger("cfnlint").setLevel(logging.WARNING)  # its progress is not a problem
    matches = [m for m in lint_file(path, config=ManualArgs(regions=["us-east-1"]))
               if m.rule.severity in ("error", "warning")]
    kept: list[tuple[str, ...]] = []
    lines = []
    for m in sorted(matches, key=lambda m: (m.linenumber, len(m.path or ()))):
        where = tuple(str(p) for p in m.path or ())
        if any(where[:len(k)] == k for k in kept):
            continue
        kept.append(where)
        lines.append(f"{'.'.join(where) or path}: {m.message} (cfn-lint {m.rule.id}, line {m.linenumber})")
    return lines


def read_problems(path: Path, overrides: dict[str, str]) -> tuple[Template | None, list[str]]:
    """The template, or every function's first ``TemplateError``: the reader stops at
    the first, so each function is read again on its own to find the others."""
    try:
        return load_template(path, overrides), []
    except TemplateError as exc:
        first = str(exc)
    try:
        doc = read_document(path)
        resources = dict(doc["Resources"])
    except (TemplateError, TypeError, KeyError, ValueError):  # no functions to read one by one
        return None, [first]
    others = {k: v for k, v in resources.items() if not _is_function(v)}
    found = [first]
    for name, resource in resources.items():
        if _is_function(resource):
            try:
                parse_template({**doc, "Resources": {**others, name: resource}}, path, overrides)
            except TemplateError as exc:
                found.append(str(exc))
    return None, list(dict.fromkeys(found))


def _is_function(resource) -> bool:
    return isinstance(resource, dict) and resource.get("Type") == FUNCTION


def model_problems(template: Template, served: set[str]) -> list[str]:
    """Each model a function may call or has a quota for is one the gateway serves."""
    known = ", ".join(sorted(served))
    problems = []
    for name, spec in template.functions.items():
        where = f"Resources.{name}.Metadata.llmfn"
        for model in spec.llm.models or ():
            if model not in served:
                problems.append(f"{where}.models: '{model}' is not a served model (served: {known})")
        for model in spec.llm.quotas:
            if model != "*" and model not in served:
                problems.append(f"{where}.quotas.{model}: '{model}' is not a served model (served: {known})")
    return problems


def handler_problems(template: Template) -> list[str]:
    """Each handler's module is a file in its CodeUri, as the function's instance will import it."""
    problems = []
    for name, spec in template.functions.items():
        where = f"Resources.{name}.Properties"
        if not spec.code_uri.is_dir():
            problems.append(f"{where}.CodeUri: no folder {spec.code_uri}")
            continue
        module = spec.handler.rsplit(".", 1)[0].replace(".", "/")
        if not any((spec.code_uri / f).is_file() for f in (f"{module}.py", f"{module}/__init__.py")):
            problems.append(f"{where}.Handler: no module {module}.py in {spec.code_uri}")
    return problems
