"""``GET /openapi.json``, generated from the pydantic schemas (the single schema)."""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from runtime.gateway import schemas as s

# (method, path, request model, response model, summary)
ROUTES: list[tuple[str, str, type[BaseModel] | None, type[BaseModel] | None, str]] = [
    ("get", "/v1/models", None, s.ModelList, "List models with their pool state"),
    ("post", "/v1/chat/completions", s.ChatCompletionRequest, s.ChatCompletion, "Chat completion (SSE when stream=true)"),
    ("post", "/v1/completions", s.CompletionRequest, s.Completion, "Text completion (SSE when stream=true)"),
    ("post", "/v1/embeddings", s.EmbeddingRequest, s.EmbeddingList, "Embeddings"),
    ("post", "/v1/score", s.ScoreRequest, s.ScoreResponse, "Similarity scores of text pairs"),
    ("post", "/score", s.ScoreRequest, s.ScoreResponse, "Similarity scores of text pairs"),
    ("post", "/v1/rerank", s.RerankRequest, s.RerankResponse, "Rerank documents (Cohere/Jina compatible)"),
    ("post", "/rerank", s.RerankRequest, s.RerankResponse, "Rerank documents"),
    ("post", "/v2/rerank", s.RerankRequest, s.RerankResponse, "Rerank documents (Cohere v2)"),
    ("get", "/health", None, None, "Liveness and pool states"),
    ("get", "/metrics", None, None, "Prometheus metrics"),
]


def openapi_document() -> dict[str, Any]:
    models = {m for _, _, req, resp, _ in ROUTES for m in (req, resp) if m is not None}
    models.add(s.ErrorResponse)
    _, defs = models_json_schema([(m, "validation") for m in sorted(models, key=lambda m: m.__name__)],
                                 ref_template="#/components/schemas/{model}")
    ref = lambda m: {"$ref": f"#/components/schemas/{m.__name__}"}  # noqa: E731
    error = {"description": "Error", "content": {"application/json": {"schema": ref(s.ErrorResponse)}}}
    paths: dict[str, Any] = {}
    for method, path, req, resp, summary in ROUTES:
        op: dict[str, Any] = {"summary": summary, "responses": {"default": error}}
        if req is not None:
            op["requestBody"] = {"required": True, "content": {"application/json": {"schema": ref(req)}}}
        op["responses"]["200"] = {"description": "OK", "content": {
            "application/json": {"schema": ref(resp)} if resp else {}}}
        paths.setdefault(path, {})[method] = op
    return {"openapi": "3.1.0",
            "info": {"title": "llmfn gateway", "version": "1",
                     "description": "OpenAI-compatible LLM gateway of llmfn."},
            "paths": paths, "components": {"schemas": defs.get("$defs", {}),
                                           "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
            "security": [{"bearer": []}, {}]}
