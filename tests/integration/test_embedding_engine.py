"""The worker's Embedder on real llama.cpp: tiny BERT GGUFs written by the test
(random weights: shapes, pooling, ordering, batching and token counts, not
semantics) and the embedded Gemma 3 270M, loaded with llama.cpp's C API."""
from __future__ import annotations

import asyncio

import numpy as np
import pytest
from llama_cpp import Llama
from llama_cpp import llama_cpp as L

from runtime.pool import ModelStore
from runtime.pool.embedding_engine import (
    Embedder,
    declared_pooling,
    rerank_prompt,
    rerank_special_tokens,
)
from tests.support.tiny_gguf import CLS, SEP, write_embedding_gguf, write_reranker_gguf

pytestmark = pytest.mark.llama

TEXTS = ["the cat sat on the mat", "paris is the capital of france", "hello world",
         "a", "dogs ran in the park", "what is the capital of germany?", "blue sky",
         "the small llama and the big model", "rome", "where is the moon"]
TEMPLATE = "query: {query} document: {document}"


@pytest.fixture(scope="module")
def paths(tmp_path_factory) -> dict[str, str]:
    """One GGUF per pooling type, all with the same (seed 0) weights, and two rerankers."""
    d = tmp_path_factory.mktemp("tiny-gguf")
    out = {p: str(write_embedding_gguf(d / f"{p}.gguf", pooling=p))
           for p in ("mean", "cls", "last", "none")}
    out["rank"] = str(write_reranker_gguf(d / "rank.gguf"))
    out["rank-template"] = str(write_reranker_gguf(d / "rank-template.gguf",
                                                   rerank_template=TEMPLATE))
    return out


@pytest.fixture(scope="module")
def models(paths):
    """Weights loaded once, as the worker loads them, shared by every Embedder."""
    L.llama_backend_init()
    loaded = {name: _load(path) for name, path in paths.items()}
    yield loaded
    for model in loaded.values():
        L.llama_model_free(model)


def _load(path: str):
    model = L.llama_model_load_from_file(path.encode(), L.llama_model_default_params())
    assert model, path
    return model


def embedder(model, **kw) -> Embedder:
    kw = {"n_ctx": 512, "n_batch": 512, "n_threads": 1} | kw
    return Embedder(model, **kw)


def token_embeddings(model, tokens: list[int]) -> np.ndarray:
    """Per-token output embeddings from a context that does not pool: the
    reference each pooling type is checked against."""
    p = L.llama_context_default_params()
    p.n_ctx = p.n_batch = p.n_ubatch = 512
    p.embeddings = True
    p.pooling_type = L.LLAMA_POOLING_TYPE_NONE
    ctx = L.llama_init_from_model(model, p)
    batch = L.llama_batch_init(len(tokens), 0, 1)
    try:
        for i, tok in enumerate(tokens):
            batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.logits[i] = tok, i, 1, 1
            batch.seq_id[i][0] = 0
        batch.n_tokens = len(tokens)
        assert L.llama_decode(ctx, batch) == 0
        n_embd = L.llama_model_n_embd(model)
        return np.ctypeslib.as_array(L.llama_get_embeddings(ctx), shape=(len(tokens), n_embd)).copy()
    finally:
        L.llama_batch_free(batch)
        L.llama_free(ctx)


def tokenize(path: str, text: str, *, add_special: bool = True, special: bool = False) -> list[int]:
    """Tokens as the gateway's vocab-only tokenizer counts them."""
    return Llama(path, vocab_only=True, verbose=False).tokenize(text.encode(), add_bos=add_special,
                                                                 special=special)


def unit(v) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v)


# ---- embeddings ---------------------------------------------------------------

@pytest.mark.parametrize("pooling", ["mean", "cls", "last"])
def test_vectors_have_the_model_width_and_unit_length(models, pooling):
    with embedder(models[pooling]) as e:
        vectors, counts = e.embed(TEXTS)
    assert e.n_embd == 32
    assert len(vectors) == len(counts) == len(TEXTS)
    assert all(len(v) == 32 for v in vectors)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize("pooling", ["mean", "cls", "last", "rank"])
def test_pooling_is_what_the_gguf_declares(models, paths, pooling):
    with embedder(models[pooling]) as e:
        assert e.pooling == pooling
        assert L.llama_pooling_type(e._ctx) == {"mean": 1, "cls": 2, "last": 3, "rank": 4}[pooling]
    # The gateway reads the same answer from the GGUF's metadata alone.
    assert declared_pooling(Llama(paths[pooling], vocab_only=True, verbose=False).metadata) == pooling


@pytest.mark.parametrize("pooling, pick", [
    ("mean", lambda t: t.mean(axis=0)),
    ("cls", lambda t: t[0]),
    ("last", lambda t: t[-1]),
])
def test_each_pooling_type_pools_the_token_embeddings_its_way(models, paths, pooling, pick):
    # Same weights in every file: only the declared pooling differs.
    with embedder(models[pooling]) as e:
        (vector,), (n,) = e.embed([TEXTS[1]])
    tokens = tokenize(paths[pooling], TEXTS[1])
    assert n == len(tokens)
    reference = unit(pick(token_embeddings(models["none"], tokens)))
    assert np.allclose(vector, reference, atol=1e-4)


def test_identical_texts_give_identical_vectors(models):
    with embedder(models["mean"]) as e:
        (a, b, c), _ = e.embed(["the cat sat", "the dog ran", "the cat sat"])
        (again,), _ = e.embed(["the cat sat"])
    assert np.allclose(a, c, atol=1e-6) and np.allclose(a, again, atol=1e-4)
    assert not np.allclose(a, b, atol=1e-2)


def test_many_inputs_share_one_decode_and_match_one_by_one(models):
    with embedder(models["mean"], n_seq_max=16) as e:
        batched, _ = e.embed(TEXTS)
        assert e.decodes == 1
        singles = [e.embed([t])[0][0] for t in TEXTS]
    assert e.decodes == 1 + len(TEXTS)
    assert np.allclose(batched, singles, atol=1e-3)
    # Order is kept: each vector is closest to its own text's.
    similarity = np.asarray(batched) @ np.asarray(singles).T
    assert list(similarity.argmax(axis=1)) == list(range(len(TEXTS)))


@pytest.mark.parametrize("n_seq_max, expected", [(4, 3), (3, 4), (1, 10)])
def test_batches_hold_at_most_n_seq_max_inputs(models, n_seq_max, expected):
    with embedder(models["cls"], n_seq_max=n_seq_max) as e:
        e.embed(TEXTS)
    assert e.decodes == expected == -(-len(TEXTS) // n_seq_max)


def test_batches_hold_at_most_n_batch_tokens(models):
    texts = ["the cat sat on the mat " * 4] * 6  # 26 tokens each
    with embedder(models["mean"], n_ctx=64, n_batch=64) as e:
        vectors, counts = e.embed(texts)
    assert counts == [26] * 6
    assert e.decodes == 3  # two inputs (52 tokens) per 64-token batch
    assert np.allclose(vectors, vectors[0], atol=1e-4)


def test_token_counts_are_the_gateway_tokenizers_and_grow_with_the_text(models, paths):
    texts = [" ".join(["the cat sat"] * k) for k in (1, 2, 4, 8)] + ["hello", "hello " * 10]
    with embedder(models["mean"]) as e:
        _, counts = e.embed(texts)
    assert counts == [len(tokenize(paths["mean"], t)) for t in texts]
    # [CLS] ... [SEP] around 3 word tokens per repeat; unknown words cost a token per letter.
    assert counts[:4] == [2 + 3 * k for k in (1, 2, 4, 8)]
    assert counts[4] == 2 + len("hello") and counts[5] == 2 + 10 * len("hello")
    chars_per_token = [len(t) / (n - 2) for t, n in zip(texts, counts)]
    assert all(0.9 <= r <= 4.0 for r in chars_per_token), chars_per_token


def test_no_inputs_need_no_decode(models):
    with embedder(models["mean"]) as e, embedder(models["rank"]) as r:
        assert e.embed([]) == ([], []) and r.rank("the cat", []) == ([], 0)
        assert e.decodes == r.decodes == 0


def test_an_input_longer_than_the_context_is_a_value_error(models):
    with embedder(models["mean"], n_ctx=64, n_batch=64) as e:
        with pytest.raises(ValueError, match=r"input 1 has \d+ tokens, more than the 64"):
            e.embed(["short", "the cat sat on the mat " * 20])
        assert e.decodes == 0


def test_embed_on_a_reranker_is_a_value_error(models):
    with embedder(models["rank"]) as e, pytest.raises(ValueError, match="reranker"):
        e.embed(["the cat"])


# ---- rerank -------------------------------------------------------------------

def test_reranker_scores_each_document_deterministically_in_one_decode(models):
    docs = TEXTS[:6]
    with embedder(models["rank"]) as e:
        scores, tokens = e.rank("what is the capital of france", docs)
        assert e.decodes == 1
        again, _ = e.rank("what is the capital of france", docs)
        reversed_scores, _ = e.rank("what is the capital of france", docs[::-1])
        one_by_one = [e.rank("what is the capital of france", [d])[0][0] for d in docs]
        pairs = [e.pair_tokens("what is the capital of france", d) for d in docs]
    assert len(scores) == len(docs) and all(isinstance(s, float) for s in scores)
    assert scores == again
    assert np.allclose(reversed_scores[::-1], scores, atol=1e-5)
    assert np.allclose(one_by_one, scores, atol=2e-3)  # other sequences in the batch shift rounding
    assert len(set(np.round(scores, 4))) == len(docs)  # random weights still tell them apart
    assert tokens == sum(len(p) for p in pairs)


def test_rerank_pairs_are_built_like_llama_server(models, paths):
    q = tokenize(paths["rank"], "the cat", add_special=False)
    d = tokenize(paths["rank"], "a dog", add_special=False)
    with embedder(models["rank"]) as e:
        # BOS query EOS SEP doc EOS, with this vocab's EOS being [SEP] (XLM-R style).
        assert e.pair_tokens("the cat", "a dog") == [CLS, *q, SEP, SEP, *d, SEP]


def test_a_rerank_template_in_the_gguf_builds_the_pair(models, paths):
    expected = tokenize(paths["rank-template"], "query: the cat document: a dog",
                        add_special=False, special=True)
    with embedder(models["rank-template"]) as e:
        pair = e.pair_tokens("the cat", "a dog")
        scores, tokens = e.rank("the cat", ["a dog", "the mat"])
    assert pair == expected and len(scores) == 2
    assert tokens == len(pair) + len(e.pair_tokens("the cat", "the mat"))


def gateway_pair_count(path: str, query: str, doc: str) -> int:
    """A pair's tokens as the gateway counts them, from the vocab and metadata alone."""
    meta = Llama(path, vocab_only=True, verbose=False).metadata
    template = meta.get("tokenizer.chat_template.rerank")
    if template is not None:
        return len(tokenize(path, rerank_prompt(template, query, doc), add_special=False,
                            special=True))
    return (len(tokenize(path, query, add_special=False)) + len(tokenize(path, doc, add_special=False))
            + rerank_special_tokens(meta))


@pytest.mark.parametrize("name", ["rank", "rank-template"])
def test_gateway_counts_rerank_pairs_as_the_worker_builds_them(models, paths, name):
    query, doc = "where is paris", "paris is the capital of france"
    with embedder(models[name]) as e:
        _, tokens = e.rank(query, [doc])
    assert gateway_pair_count(paths[name], query, doc) == tokens


def test_rank_on_an_embedding_model_is_a_value_error(models):
    with embedder(models["mean"]) as e, pytest.raises(ValueError, match="not a reranker"):
        e.rank("the cat", ["a dog"])


def test_rerank_prompt_fills_placeholders_once():
    assert rerank_prompt(TEMPLATE, "{document}", "x") == "query: {document} document: x"


def test_declared_pooling_reads_the_arch_key():
    assert declared_pooling({"general.architecture": "bert", "bert.pooling_type": "4"}) == "rank"
    assert declared_pooling({"general.architecture": "bert", "bert.pooling_type": "2"}) == "cls"
    assert declared_pooling({"general.architecture": "gemma3"}) == "none"
    assert declared_pooling({"general.architecture": "qwen3", "qwen3.pooling_type": "x"}) == "none"


# ---- a generative model -----------------------------------------------------------

@pytest.fixture(scope="module")
def gemma_path(model_cache) -> str:
    store = ModelStore(model_cache, show_progress=False)
    return str(asyncio.run(store.fetch("gemma3-270m", "embedded")).path)


@pytest.fixture(scope="module")
def gemma(gemma_path):
    L.llama_backend_init()
    model = _load(gemma_path)
    yield model
    L.llama_model_free(model)


def test_a_generative_model_gets_mean_pooled_vectors(gemma, gemma_path):
    texts = ["The cat sat on the mat.", "Paris is the capital of France.", "hello"]
    with embedder(gemma, n_ctx=256, n_batch=256, n_threads=2) as e:
        assert e.pooling == "none" and e.n_embd == 640
        vectors, counts = e.embed(texts)
        assert e.decodes == 1
        (single,), _ = e.embed([texts[1]])
    tokens = tokenize(gemma_path, texts[1])
    assert counts[1] == len(tokens) and tokens[0] == L.llama_vocab_bos(L.llama_model_get_vocab(gemma))
    reference = unit(token_embeddings(gemma, tokens).mean(axis=0))
    assert np.allclose(vectors[1], reference, atol=1e-3)
    assert float(np.dot(vectors[1], single)) > 0.999
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_a_generative_models_rerank_pair_is_counted_alike_by_gateway_and_worker(gemma, gemma_path):
    query, doc = "where is paris", "paris is in france"
    with embedder(gemma, n_ctx=256, n_batch=256, n_threads=2) as e:
        pair = e.pair_tokens(query, doc)  # BOS query doc for Gemma's vocab
    assert len(pair) == gateway_pair_count(gemma_path, query, doc)


def test_embedder_contexts_share_the_loaded_weights(models):
    # Two contexts on one model, as the worker runs generation beside embeddings.
    with embedder(models["cls"]) as a, embedder(models["cls"]) as b:
        assert np.allclose(a.embed(["the cat"])[0], b.embed(["the cat"])[0], atol=1e-6)
    with embedder(models["cls"]) as c:  # the weights outlive the contexts that used them
        assert len(c.embed(["the cat"])[0][0]) == 32
