"""``GET /openapi.json``: every route of the gateway's route table, with the
pydantic schemas (the single schema) of the bodies it reads and writes.

The paths come from the router itself, so a route cannot be served without
being listed; ``OPERATIONS`` only adds what a route reads and returns.
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


_SCORE = Operation("Similarity scores of text pairs", s.ScoreRequest, s.ScoreResponse)
_RERANK = Operation("Rerank documents (Cohere/Jina compatible)", s.RerankRequest, s.RerankResponse)
_USAGE_QUERY = ("service_type", "resource", "model", "by", "since", "from", "to")

# (method, path as the router spells it) -> what it reads and returns
OPERATIONS: dict[tuple[str, str], Operation] = {
    ("GET", "/v1/models"): Operation("List models with their pool state", response=s.ModelList),
    ("GET", "/v1/models/{model}"): Operation("One model with its pool state", response=s.ModelCard),
    ("POST", "/v1/chat/completions"): Operation("Chat completion (SSE when stream=true)",
                                                s.ChatCompletionRequest, s.ChatCompletion),
    ("POST", "/v1/completions"): Operation("Text completion (SSE when stream=true)",
                                           s.CompletionRequest, s.Completion),
    ("POST", "/v1/embeddings"): Operation("Embeddings", s.EmbeddingRequest, s.EmbeddingList),
    ("POST", "/score"): _SCORE,
    ("POST", "/v1/score"): _SCORE,
    ("POST", "/rerank"): _RERANK,
    ("POST", "/v1/rerank"): _RERANK,
    ("POST", "/v2/rerank"): _RERANK,
    ("GET", "/health"): Operation("Liveness and pool states"),
    ("GET", "/metrics"): Operation("Prometheus metrics"),
    ("GET", "/openapi.json"): Operation("This document"),
    ("GET", "/v1/usage"): Operation("Token usage from the ledger", query=_USAGE_QUERY),
    ("GET", "/v1/invocation/quota"): Operation("Tokens left to the calling invocation", query=("model",)),
    ("GET", "/v1/invocation/usage"): Operation("Tokens the calling invocation has used so far"),
    ("GET", "/admin/pools"): Operation("Every pool's state and configuration (admin)"),
    ("GET", "/admin/keys"): Operation("List the API keys (admin)"),
    ("POST", "/admin/keys"): Operation("Create an API key; its secret is returned once (admin)",
                                       s.KeyCreateRequest),
    ("DELETE", "/admin/keys/{name}"): Operation("Revoke an API key (admin)"),
    ("GET", "/usage"): Operation("The usage page (HTML)"),
    ("GET", "/usage/static/{filename}"): Operation("The usage page's script and stylesheet"),
}

_PARAM = re.compile(r"\{(\w+)\}")
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


def _operation(method: str, path: str, handler: Any, ref) -> dict[str, Any]:
    info = OPERATIONS.get((method, path)) or Operation(_summary(method, path, handler))
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


def openapi_document(router: web.UrlDispatcher) -> dict[str, Any]:
    served = routes(router)
    models = {m for method, path, _ in served
              for op in [OPERATIONS.get((method, path))] if op for m in (op.request, op.response) if m}
    models.add(s.ErrorResponse)
    _, defs = models_json_schema([(m, "validation") for m in sorted(models, key=lambda m: m.__name__)],
                                 ref_template="#/components/schemas/{model}")
    ref = lambda m: {"$ref": f"#/components/schemas/{m.__name__}"}  # noqa: E731
    paths: dict[str, Any] = {}
    for method, path, handler in served:
        paths.setdefault(path, {})[method.lower()] = _operation(method, path, handler, ref)
    return {"openapi": "3.1.0",
            "info": {"title": "llmfn gateway", "version": "1",
                     "description": "OpenAI-compatible LLM gateway of llmfn."},
            "paths": paths, "components": {"schemas": defs.get("$defs", {}),
                                           "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
            "security": [{"bearer": []}, {}]}


def openapi_handler(router: web.UrlDispatcher):
    """``GET /openapi.json``, built once from the router when first asked (every route is in by then)."""
    document: dict[str, Any] = {}

    async def handle(request: web.Request) -> web.Response:
        if not document:
            document.update(openapi_document(router))
        return web.json_response(document)
    return handle
