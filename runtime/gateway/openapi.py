"""The OpenAPI document of a router: every route it serves, with the pydantic
schemas (the single schema) of the bodies it reads and writes.

The paths come from the router itself, so a route cannot be served without
being listed; the operations (``runtime.gateway.routes``, the route table the
router is built from) only add what a route reads and returns.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from runtime.gateway import schemas as s


@dataclass(frozen=True)
class Operation:
    summary: str
    request: type[BaseModel] | None = None
    response: type[BaseModel] | None = None
    query: tuple[str, ...] = ()  # query parameters (strings)


Operations = dict[tuple[str, str], Operation]  # (method, OpenAPI path) -> operation


_PARAM = re.compile(r"\{(\w+)\}")
_ROUTER_PARAM = re.compile(r"\{(\w+):[^}]*\}")
_DOCUMENTED_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")


def routes(router: web.UrlDispatcher) -> list[tuple[str, str, Any]]:
    """(method, OpenAPI path, handler) of every route the router serves (HEAD aside)."""
    out = []
    for resource in router.resources():
        path = resource.canonical
        if isinstance(resource, web.StaticResource):
            path = path.rstrip("/") + "/{filename}"
        for route in resource:
            if route.method in _DOCUMENTED_METHODS:
                out.append((route.method, path, route.handler))
    return out


def _summary(method: str, path: str, handler: Any) -> str:
    doc = (getattr(handler, "__doc__", None) or "").strip().splitlines()
    return doc[0].strip("` ") if doc else f"{method} {path}"


def openapi_path(path: str) -> str:
    """``/v1/models/{model:.+}`` (a router's spelling) -> ``/v1/models/{model}``."""
    return _ROUTER_PARAM.sub(r"{\1}", path)


def _operation(method: str, path: str, handler: Any, ref, operations: Operations) -> dict[str, Any]:
    info = operations.get((method, path)) or Operation(_summary(method, path, handler))
    error = {"description": "Error", "content": {"application/json": {"schema": ref(s.ErrorResponse)}}}
    params = [{"name": n, "in": "path", "required": True, "schema": {"type": "string", "minLength": 1}}
              for n in _PARAM.findall(path)]
    params += [{"name": n, "in": "query", "required": False, "schema": {"type": "string"}}
               for n in info.query]
    op: dict[str, Any] = {"summary": info.summary, "responses": {"default": error}}
    if params:
        op["parameters"] = params
    if info.request is not None:
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": ref(info.request)}}}
    op["responses"]["200"] = {"description": "OK", "content": {
        "application/json": {"schema": ref(info.response)} if info.response else {}}}
    return op


def openapi_document(router: web.UrlDispatcher, operations: Operations) -> dict[str, Any]:
    served = routes(router)
    models = {m for method, path, _ in served for op in [operations.get((method, path))] if op
              for m in (op.request, op.response) if m}
    models.add(s.ErrorResponse)
    _, defs = models_json_schema([(m, "validation") for m in sorted(models, key=lambda m: m.__name__)],
                                 ref_template="#/components/schemas/{model}")
    ref = lambda m: {"$ref": f"#/components/schemas/{m.__name__}"}  # noqa: E731
    paths: dict[str, Any] = {}
    for method, path, handler in served:
        paths.setdefault(path, {})[method.lower()] = _operation(method, path, handler, ref, operations)
    return {"openapi": "3.1.0",
            "info": {"title": "llmfn gateway", "version": "1",
                     "description": "OpenAI-compatible LLM gateway of llmfn."},
            "paths": paths, "components": {"schemas": defs.get("$defs", {}),
                                           "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
            "security": [{"bearer": []}, {}]}
