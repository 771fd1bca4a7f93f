"""The gateway's route table: every route it serves, its handler and what it
reads and returns. The router is built from ``ROUTES`` and ``GET /openapi.json``
describes the router with the same entries, so a route cannot be served
without being documented, nor documented without being served."""
from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from runtime.gateway import admin, embeddings, generation, health, models_api, usage_api, usage_page
from runtime.gateway import schemas as s
from runtime.gateway.metrics import metrics
from runtime.gateway.openapi import Operation, Operations, openapi_document, openapi_path

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
OPENAPI_DOCUMENT = web.AppKey("openapi_document", dict)  # built at the first request


@dataclass(frozen=True)
class Route:
    method: str
    path: str  # as the router spells it
    handler: Handler | None  # None: a folder of static files (``static``)
    operation: Operation
    endpoint: str | None = None  # the LLM endpoint a call is metered as (ledger, metrics)
    static: Path | None = None


async def openapi(request: web.Request) -> web.Response:
    """This document."""
    document = request.app[OPENAPI_DOCUMENT]
    if not document:
        document.update(openapi_document(request.app.router, OPERATIONS))
    return web.json_response(document)


_CHAT = Operation("Chat completion (SSE when stream=true)", s.ChatCompletionRequest, s.ChatCompletion)
_COMPLETION = Operation("Text completion (SSE when stream=true)", s.CompletionRequest, s.Completion)
_SCORE = Operation("Similarity scores of text pairs", s.ScoreRequest, s.ScoreResponse)
_RERANK = Operation("Rerank documents (Cohere/Jina compatible)", s.RerankRequest, s.RerankResponse)

ROUTES: tuple[Route, ...] = (
    Route("GET", "/v1/models", models_api.list_models,
          Operation("List models with their pool state", response=s.ModelList)),
    Route("GET", "/v1/models/{model:.+}", models_api.get_model,
          Operation("One model with its pool state", response=s.ModelCard)),
    Route("POST", "/v1/chat/completions", generation.chat_completions, _CHAT, "chat"),
    Route("POST", "/v1/completions", generation.completions, _COMPLETION, "completions"),
    Route("POST", "/v1/embeddings", embeddings.embeddings,
          Operation("Embeddings", s.EmbeddingRequest, s.EmbeddingList), "embeddings"),
    *(Route("POST", path, embeddings.score, _SCORE, "score") for path in ("/score", "/v1/score")),
    *(Route("POST", path, embeddings.rerank, _RERANK, "rerank")
      for path in ("/rerank", "/v1/rerank", "/v2/rerank")),
    Route("GET", "/health", health.health, Operation("Liveness and pool states")),
    Route("GET", "/health/live", health.live, Operation("Liveness: 200 while the gateway serves")),
    Route("GET", "/health/ready", health.ready,
          Operation("Readiness: 200 when a call would be admitted now, 503 with the reasons")),
    Route("GET", "/metrics", metrics, Operation("Prometheus metrics")),
    Route("GET", "/openapi.json", openapi, Operation("This document")),
    Route("GET", "/v1/usage", usage_api.usage, Operation("Token usage from the ledger", query=usage_api.USAGE_QUERY)),
    Route("GET", "/v1/usage/calls", usage_api.calls,
          Operation("Individual calls from the ledger, paged, as JSON or CSV", query=usage_api.CALLS_QUERY)),
    Route("GET", "/v1/invocation/quota", usage_api.invocation_quota,
          Operation("Tokens left to the calling invocation", query=("model",))),
    Route("GET", "/v1/invocation/usage", usage_api.invocation_usage,
          Operation("Tokens the calling invocation has used so far")),
    Route("GET", "/admin/pools", admin.pools, Operation("Every pool's state and configuration (admin)")),
    Route("GET", "/admin/keys", admin.list_keys, Operation("List the API keys (admin)")),
    Route("POST", "/admin/keys", admin.create_key,
          Operation("Create an API key; its secret is returned once (admin)", s.KeyCreateRequest)),
    Route("DELETE", "/admin/keys/{name}", admin.revoke_key, Operation("Revoke an API key (admin)")),
    Route("GET", usage_page.PAGE_PATH, usage_page.usage_page, Operation("The usage page (HTML)")),
    Route("GET", usage_page.STATIC_PREFIX + "/{filename}", None,
          Operation("The usage page's script and stylesheet"), static=usage_page.STATIC_DIR),
)

OPERATIONS: Operations = {(r.method, openapi_path(r.path)): r.operation for r in ROUTES}
LLM_ENDPOINTS: dict[str, str] = {r.path: r.endpoint for r in ROUTES if r.endpoint}


def add_routes(app: web.Application) -> None:
    app[OPENAPI_DOCUMENT] = {}
    for route in ROUTES:
        if route.static is not None:
            app.router.add_static(route.path.removesuffix("/{filename}"), route.static)
        elif route.method == "GET":
            app.router.add_get(route.path, route.handler)  # and HEAD
        else:
            app.router.add_route(route.method, route.path, route.handler)
