"""A template's ``Parameters``: their declarations, the values given with
``--parameter-overrides`` (in SAM CLI's forms), and the checked value of each.

Values are what ``!Ref`` gives: a string for ``String`` and ``Number`` (as in
CloudFormation, a number parameter is a string wherever it is used), a list of
strings for the list types. A value is checked against ``AllowedValues``,
``AllowedPattern``, ``MinLength``/``MaxLength`` and ``MinValue``/``MaxValue``;
an error names the parameter and never shows a ``NoEcho`` value.
"""
from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from typing import Any

from runtime.errors import TemplateError

ParameterValue = str | list[str]
_LIST_TYPES = ("CommaDelimitedList", "List<Number>")
_PLAIN_TYPES = ("String", "Number")
_OVERRIDE_LONG = re.compile(r"ParameterKey=([^,]+),ParameterValue=(.*)", re.DOTALL)


def parse_parameter_overrides(values: list[str]) -> dict[str, str]:
    """``--parameter-overrides`` as SAM CLI takes it: ``Key=Value`` pairs given as
    separate strings or joined by spaces (values may be quoted), or
    ``ParameterKey=K,ParameterValue=V``."""
    out: dict[str, str] = {}
    for value in values:
        for item in shlex.split(value):
            if long := _OVERRIDE_LONG.fullmatch(item):
                out[long.group(1)] = long.group(2)
                continue
            key, sep, val = item.partition("=")
            if not sep or not key:
                raise TemplateError(f"parameter-overrides: {item!r} is not Key=Value or "
                                    "ParameterKey=Key,ParameterValue=Value")
            out[key] = val
    return out


def resolve_parameters(declared: Any, overrides: Mapping[str, str] | None) -> dict[str, ParameterValue]:
    """Every declared parameter's value: the override, else its ``Default``."""
    declared = declared or {}
    if not isinstance(declared, dict):
        raise TemplateError("Parameters: must be a mapping of parameter name to its declaration")
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - set(declared))
    if unknown:
        raise TemplateError(f"Parameters.{unknown[0]}: given in parameter-overrides but not declared "
                            f"(parameters: {', '.join(declared) or 'none'})")
    return {name: _value(name, decl, overrides.get(name)) for name, decl in declared.items()}


def _value(name: str, decl: Any, override: str | None) -> ParameterValue:
    where = f"Parameters.{name}"
    if not isinstance(decl, dict):
        raise TemplateError(f"{where}: must be a mapping with a Type")
    kind = decl.get("Type")
    if not isinstance(kind, str):
        raise TemplateError(f"{where}.Type: required (String, Number, CommaDelimitedList, List<Number>)")
    raw = override if override is not None else decl.get("Default")
    if raw is None:
        raise TemplateError(f"{where}: no value: give it a Default or pass --parameter-overrides {name}=VALUE")
    text = ",".join(str(v) for v in raw) if isinstance(raw, list) else _scalar(raw)
    shown = "****" if _truthy(decl.get("NoEcho")) else repr(text)
    if kind in _LIST_TYPES or kind.startswith("List<"):
        items = [item.strip() for item in text.split(",")] if text else []
        for item in items:
            _check(item, decl, kind.removeprefix("List<").removesuffix(">"), where, shown)
        return items
    if kind not in _PLAIN_TYPES and not kind.startswith("AWS::"):
        raise TemplateError(f"{where}.Type: {kind!r} is not a parameter type "
                            "(String, Number, CommaDelimitedList, List<Number>, AWS::...)")
    _check(text, decl, kind, where, shown)
    return text


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _truthy(value: Any) -> bool:
    return value is True or str(value).lower() == "true"


def _check(value: str, decl: Mapping[str, Any], kind: str, where: str, shown: str) -> None:
    allowed = decl.get("AllowedValues")
    if allowed is not None and value not in [_scalar(v) for v in allowed]:
        raise TemplateError(f"{where}: {shown} is not one of the AllowedValues "
                            f"({', '.join(_scalar(v) for v in allowed)})")
    pattern = decl.get("AllowedPattern")
    if pattern is not None and not re.fullmatch(str(pattern), value):
        raise TemplateError(f"{where}: {shown} does not match the AllowedPattern {pattern}")
    for key, ok in (("MinLength", lambda n: len(value) >= n), ("MaxLength", lambda n: len(value) <= n)):
        if key in decl and not ok(int(decl[key])):
            raise TemplateError(f"{where}: {shown} is shorter or longer than its {key} {decl[key]}")
    if kind == "Number":
        _check_number(value, decl, where, shown)


def _check_number(value: str, decl: Mapping[str, Any], where: str, shown: str) -> None:
    try:
        number = float(value)
    except ValueError:
        raise TemplateError(f"{where}: {shown} is not a number") from None
    if "MinValue" in decl and number < float(decl["MinValue"]):
        raise TemplateError(f"{where}: {shown} is below its MinValue {decl['MinValue']}")
    if "MaxValue" in decl and number > float(decl["MaxValue"]):
        raise TemplateError(f"{where}: {shown} is above its MaxValue {decl['MaxValue']}")
