"""``/v1/embeddings``, ``/score`` and ``/rerank``: embeddings from the worker;
scores from the model's cross-encoder when its GGUF declares rank pooling,
else cosine similarity of normalized embeddings.

Counts every input's tokens before dispatch (context check, quota reserve) and
settles with the worker's count. Must not run llama.cpp here: the worker
embeds and scores.
"""
from __future__ import annotations

import base64
import math
import struct
from collections.abc import Awaitable, Callable

from aiohttp import web

from runtime.accounting.status import CallStatus
from runtime.errors import ContextLengthExceeded, InvalidRequest
from runtime.gateway import schemas as s
from runtime.gateway.charging import ACCOUNTING, charge
from runtime.gateway.http_errors import BODY_BYTES, parse_body
from runtime.gateway.state import meter_for, pool_for
from runtime.pool.embedding_engine import (
    RERANK_TEMPLATE_KEY,
    declared_pooling,
    rerank_prompt,
    rerank_special_tokens,
)
from runtime.pool.tokenizer import offload

RATE_HEADERS = web.RequestKey("rate_headers", dict)


def _json(request: web.Request, body) -> web.Response:
    return web.json_response(text=body.model_dump_json(exclude_none=True),
                             headers=request.get(RATE_HEADERS, {}))


def _limit(pool, tokenizer) -> int:
    """Tokens one input may have: the pool's context, and no more than the
    model was trained on (encoders have no position past it)."""
    n_ctx = pool.config.pool.n_ctx
    return min(n_ctx, tokenizer.n_ctx_train) if tokenizer.n_ctx_train > 0 else n_ctx


def _check_length(i: int, n: int, limit: int, param: str) -> None:
    if n > limit:
        raise ContextLengthExceeded(
            f"This model's maximum context length is {limit} tokens, however input {i} has "
            f"{n} tokens. Please reduce the length of the input.", param=param)


async def _metered(request: web.Request, pool, meter, estimate: int,
                   call: Callable[..., Awaitable[tuple[object, int]]]):
    """Charge ``estimate`` tokens, run ``call(lease)`` on a worker, settle to
    the tokens it reports."""
    async with charge(request.app[ACCOUNTING], meter, estimate, estimate) as spent:
        request[RATE_HEADERS] = spent.headers
        async with pool.lease() as lease:
            result, tokens = await call(lease)
        meter.first_token()
        spent.prompt = tokens
        await meter.finish(CallStatus.SUCCESS, tokens)
    return result, tokens


async def _embed(request: web.Request, model: str, texts: list[str], param: str,
                 endpoint: str) -> tuple[list[list[float]], int]:
    """Embeddings of ``texts`` (one per text) and the exact prompt tokens."""
    pool = pool_for(request, model)
    meter = meter_for(request, pool.name, endpoint)
    tokenizer = await pool.ensure_tokenizer()
    limit = _limit(pool, tokenizer)
    counts = [len(ids) for ids in await tokenizer.aencode_all(texts, add_bos=True, max_tokens=limit, param=param)]
    for i, n in enumerate(counts):
        _check_length(i, n, limit, param)
    unique = list(dict.fromkeys(texts))

    async def call(lease):
        out = await lease.embed(unique)
        by_text = dict(zip(unique, zip(out["data"], out["tokens"])))
        return [by_text[t][0] for t in texts], sum(by_text[t][1] for t in texts)

    return await _metered(request, pool, meter, sum(counts), call)


async def _pair_counts(tokenizer, pairs: list[tuple[str, str]], limit: int, param: str) -> list[int]:
    """Tokens of each (query, document) pair as the worker builds it: the GGUF's
    rerank template, or both texts plus the special tokens around them."""
    template = tokenizer.metadata.get(RERANK_TEMPLATE_KEY)
    fits = {"max_tokens": limit, "param": param}
    if template is not None:
        prompts = [rerank_prompt(template, q, d) for q, d in pairs]
        return [len(ids) for ids in await tokenizer.aencode_all(prompts, add_bos=False, special=True, **fits)]
    specials = rerank_special_tokens(tokenizer.metadata)
    unique = list(dict.fromkeys(q for q, _ in pairs))
    queries = dict(zip(unique, map(len, await tokenizer.aencode_all(unique, add_bos=False, **fits))))
    docs = await tokenizer.aencode_all([d for _, d in pairs], add_bos=False, **fits)
    return [queries[q] + len(ids) + specials for (q, _), ids in zip(pairs, docs)]


async def _rank(request: web.Request, pool, tokenizer, pairs: list[tuple[str, str]], param: str,
                endpoint: str) -> tuple[list[float], int]:
    """Cross-encoder scores of (query, document) pairs, in order, and the
    worker's token count. Pairs that share a query go to the worker together."""
    meter = meter_for(request, pool.name, endpoint)
    limit = _limit(pool, tokenizer)
    counts = await _pair_counts(tokenizer, pairs, limit, param)
    for i, n in enumerate(counts):
        _check_length(i, n, limit, param)
    by_query: dict[str, list[int]] = {}
    for i, (query, _) in enumerate(pairs):
        by_query.setdefault(query, []).append(i)

    async def call(lease):
        scores, tokens = [0.0] * len(pairs), 0
        for query, indices in by_query.items():
            out = await lease.rank(query, [pairs[i][1] for i in indices])
            for i, score in zip(indices, out["scores"]):
                scores[i] = score
            tokens += out["tokens"]
        return scores, tokens

    return await _metered(request, pool, meter, sum(counts), call)


async def _reranker(request: web.Request, model: str):
    """(pool, tokenizer) when the model is a cross-encoder, else None."""
    pool = pool_for(request, model)
    tokenizer = await pool.ensure_tokenizer()
    return (pool, tokenizer) if declared_pooling(tokenizer.metadata) == "rank" else None


def _normalize(v: list[float]) -> list[float]:
    norm = math.sqrt(sum(x * x for x in v)) or 1.0
    return [x / norm for x in v]


def _cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b))  # both are normalized


async def embeddings(request: web.Request) -> web.Response:
    req = await parse_body(request, s.EmbeddingRequest)
    tokenizer = await pool_for(request, req.model).ensure_tokenizer()
    if declared_pooling(tokenizer.metadata) == "rank":
        raise InvalidRequest(f"The model '{req.model}' is a reranker (rank pooling) and returns "
                             "no embeddings: use /v1/rerank or /v1/score", param="model")
    # Token-id inputs become text here, each id checked first (llama.cpp aborts on a bad one).
    texts = await offload(lambda: [t if isinstance(t, str) else tokenizer.decode(list(t), "input")
                                   for t in req.inputs()], request[BODY_BYTES])
    vectors, tokens = await _embed(request, req.model, texts, "input", "embeddings")
    if req.dimensions is not None:
        if req.dimensions > len(vectors[0]):
            raise InvalidRequest(f"dimensions must be at most {len(vectors[0])} for this model",
                                 param="dimensions")
        vectors = [_normalize(v[: req.dimensions]) for v in vectors]
    data = []
    for i, v in enumerate(vectors):
        emb: list[float] | str = v
        if req.encoding_format == "base64":
            emb = base64.b64encode(struct.pack(f"<{len(v)}f", *v)).decode()
        data.append(s.Embedding(index=i, embedding=emb))
    return _json(request, s.EmbeddingList(data=data, model=req.model, usage=s.Usage.of(tokens)))


async def score(request: web.Request) -> web.Response:
    req = await parse_body(request, s.ScoreRequest)
    left, right = req.pairs_lists()
    reranker = await _reranker(request, req.model)
    if reranker:
        queries = left * len(right) if len(left) == 1 else left
        scores, tokens = await _rank(request, *reranker, list(zip(queries, right)), "text_2", "score")
    else:
        vectors, tokens = await _embed(request, req.model, left + right, "text_1", "score")
        lv, rv = vectors[: len(left)], vectors[len(left):]
        scores = [_cosine(a, b) for a, b in zip(lv * len(rv) if len(lv) == 1 else lv, rv)]
    data = [s.ScoreItem(index=i, score=sc) for i, sc in enumerate(scores)]
    return _json(request, s.ScoreResponse(model=req.model, data=data, usage=s.Usage.of(tokens)))


async def rerank(request: web.Request) -> web.Response:
    req = await parse_body(request, s.RerankRequest)
    docs = req.texts()
    reranker = await _reranker(request, req.model)
    if reranker:
        scores, tokens = await _rank(request, *reranker, [(req.query, d) for d in docs],
                                     "documents", "rerank")
    else:
        vectors, tokens = await _embed(request, req.model, [req.query] + docs, "documents", "rerank")
        scores = [_cosine(vectors[0], v) for v in vectors[1:]]
    scored = sorted(((sc, i) for i, sc in enumerate(scores)), key=lambda t: -t[0])
    if req.top_n is not None:
        scored = scored[: req.top_n]
    results = [s.RerankResult(index=i, relevance_score=sc,
                              document=s.RerankDocument(text=docs[i]) if req.return_documents else None)
               for sc, i in scored]
    meta = {"billed_units": {"search_units": 1, "input_tokens": tokens}}
    if request.path.startswith("/v2/"):
        meta["api_version"] = {"version": "2"}
    return _json(request, s.RerankResponse(model=req.model, results=results, usage=s.Usage.of(tokens),
                                           meta=meta))
