"""``/v1/embeddings``, ``/score`` and ``/rerank``: embeddings from the worker,
and cosine similarity of normalized embeddings for scoring and reranking."""
from __future__ import annotations

import base64
import math
import struct

from aiohttp import web

from runtime.errors import ContextLengthExceeded, InvalidRequest, LlmfnError
from runtime.gateway import schemas as s
from runtime.gateway.errors import parse_body
from runtime.gateway.accounting import ACCOUNTING
from runtime.gateway.state import meter_for, pool_for

RATE_HEADERS = web.RequestKey("rate_headers", dict)


def _json(request: web.Request, body) -> web.Response:
    return web.json_response(text=body.model_dump_json(exclude_none=True),
                             headers=request.get(RATE_HEADERS, {}))


async def _embed(request: web.Request, model: str, texts: list[str], param: str,
                 endpoint: str) -> tuple[list[list[float]], int]:
    """Embeddings of ``texts`` (one per text) and the exact prompt tokens."""
    pool = pool_for(request, model)
    meter = meter_for(request, pool.name, endpoint)
    tokenizer = await pool.ensure_tokenizer()
    n_ctx = pool.config.pool.n_ctx
    counts = []
    for i, text in enumerate(texts):
        n = len(await tokenizer.aencode(text, add_bos=True))
        counts.append(n)
        if n > n_ctx:
            raise ContextLengthExceeded(
                f"This model's maximum context length is {n_ctx} tokens, however input {i} has "
                f"{n} tokens. Please reduce the length of the input.", param=param)
    unique = list(dict.fromkeys(texts))
    acct = request.app[ACCOUNTING]
    grant = await acct.reserve(meter.principal, pool.name, sum(counts))
    request[RATE_HEADERS] = grant.headers() if grant else {}
    try:
        async with pool.lease() as lease:
            out = await lease.embed(unique)
    except LlmfnError as err:
        meter.done(f"error:{err.code}")
        await acct.settle(grant, 0)
        raise
    by_text = dict(zip(unique, zip(out["data"], out["tokens"])))
    tokens = sum(by_text[t][1] for t in texts)
    meter.first_token()
    meter.done("success", tokens)
    await acct.settle(grant, tokens)
    return [by_text[t][0] for t in texts], tokens


def _normalize(v: list[float]) -> list[float]:
    norm = math.sqrt(sum(x * x for x in v)) or 1.0
    return [x / norm for x in v]


def _cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b))  # both are normalized


async def embeddings(request: web.Request) -> web.Response:
    req = await parse_body(request, s.EmbeddingRequest)
    tokenizer = await pool_for(request, req.model).ensure_tokenizer()
    texts = [t if isinstance(t, str) else tokenizer.decode(list(t)) for t in req.inputs()]
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
    vectors, tokens = await _embed(request, req.model, left + right, "text_1", "score")
    lv, rv = vectors[: len(left)], vectors[len(left):]
    if len(lv) == 1:
        lv = lv * len(rv)
    data = [s.ScoreItem(index=i, score=_cosine(a, b)) for i, (a, b) in enumerate(zip(lv, rv))]
    return _json(request, s.ScoreResponse(model=req.model, data=data, usage=s.Usage.of(tokens)))


async def rerank(request: web.Request) -> web.Response:
    req = await parse_body(request, s.RerankRequest)
    docs = req.texts()
    vectors, tokens = await _embed(request, req.model, [req.query] + docs, "documents", "rerank")
    query, doc_vectors = vectors[0], vectors[1:]
    scored = sorted(((_cosine(query, v), i) for i, v in enumerate(doc_vectors)), key=lambda t: -t[0])
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
