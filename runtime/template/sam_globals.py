"""SAM's ``Globals`` merge, as the SAM translator applies it before anything
else reads a resource: a function's own value replaces a primitive from
``Globals``; maps (``Environment.Variables``, ``EventInvokeConfig``, ...) are
merged key by key, recursively; lists (``Layers``) are additive, Globals'
items first. A value of another shape than Globals' (a list against a map)
replaces it, and an intrinsic (``!Ref``, ``!Sub``, ...) counts as a primitive,
as SAM evaluates it in the resource's own context."""
from __future__ import annotations

from typing import Any

from runtime.errors import TemplateError
from runtime.template.intrinsics import is_intrinsic

# Properties SAM refuses in Globals.Function: they belong to one function.
NOT_GLOBAL = ("Events", "FunctionName", "Role", "Policies")


def function_globals(doc_globals: Any) -> dict[str, Any]:
    """``Globals.Function``, checked for what SAM does not allow there."""
    if doc_globals is None:
        return {}
    if not isinstance(doc_globals, dict):
        raise TemplateError("Globals: must be a mapping of resource kind (Function, Api, ...) to properties")
    fn = doc_globals.get("Function") or {}
    if not isinstance(fn, dict):
        raise TemplateError("Globals.Function: must be a mapping of properties")
    for key in NOT_GLOBAL:
        if key in fn:
            raise TemplateError(f"Globals.Function.{key}: SAM does not allow {key} in Globals")
    return fn


def merge(global_value: Any, local_value: Any) -> Any:
    """One property: ``Globals``' value with the function's own merged over it."""
    token_g, token_l = _token(global_value), _token(local_value)
    if token_g != token_l or token_g == "primitive":
        return local_value
    if token_g == "list":
        return [*global_value, *local_value]
    out = dict(global_value)
    for key, value in local_value.items():
        out[key] = merge(out[key], value) if key in out else value
    return out


def _token(value: Any) -> str:
    if isinstance(value, dict) and not is_intrinsic(value):
        return "map"
    return "list" if isinstance(value, list) else "primitive"
