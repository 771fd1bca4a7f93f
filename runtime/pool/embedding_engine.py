"""Embeddings and cross-encoder rerank scores, inside a worker process.

``Embedder`` owns one llama.cpp context with embeddings on, beside the
worker's generation context on the same loaded weights. It pools the way the
GGUF declares (mean, cls, last, rank) and packs many inputs into one
``llama_decode``, one sequence id per input. ``declared_pooling`` and
``rerank_special_tokens`` read GGUF metadata only, so the gateway uses them to
pick the scoring path and to size a rerank request before dispatch.

Must not: load weights (the worker does, once), run on the gateway's event
loop, or force a pooling type on a model that declares one.
"""
from __future__ import annotations

import ctypes
import re
import threading
from collections.abc import Mapping
from typing import Self

import numpy as np
from llama_cpp import llama_cpp as L

POOLING_NAMES = {L.LLAMA_POOLING_TYPE_NONE: "none", L.LLAMA_POOLING_TYPE_MEAN: "mean",
                 L.LLAMA_POOLING_TYPE_CLS: "cls", L.LLAMA_POOLING_TYPE_LAST: "last",
                 L.LLAMA_POOLING_TYPE_RANK: "rank"}
RERANK_TEMPLATE_KEY = "tokenizer.chat_template.rerank"  # llama_model_chat_template(m, "rerank")
GENERATIVE_TOKEN_BUDGET = 512

# llama.cpp's add-special defaults per tokenizer model, for GGUFs that do not
# write the tokenizer.ggml.add_*_token keys: (add_bos, add_eos, add_sep).
_ADD_SPECIAL_DEFAULTS = {"llama": (True, False, False), "bert": (True, False, True),
                         "t5": (False, True, False)}


def declared_pooling(metadata: Mapping[str, str]) -> str:
    """The pooling type a GGUF declares (``<arch>.pooling_type``): "mean",
    "cls", "last", "rank" (a cross-encoder reranker) or "none" (a generative
    model, or a key llama.cpp would ignore)."""
    arch = metadata.get("general.architecture", "llama")
    try:
        return POOLING_NAMES.get(int(metadata.get(f"{arch}.pooling_type", 0)), "none")
    except ValueError:
        return "none"


def rerank_special_tokens(metadata: Mapping[str, str]) -> int:
    """How many special tokens llama.cpp adds around a rerank pair built
    without a template (BOS query EOS SEP doc EOS). Exact when the GGUF states
    its add-special flags or uses a common tokenizer; otherwise an upper bound."""
    known = _ADD_SPECIAL_DEFAULTS.get(metadata.get("tokenizer.ggml.model", ""), (True, True, True))
    add_bos, add_eos, add_sep = (
        _flag(metadata, f"tokenizer.ggml.add_{name}_token", default)
        for name, default in zip(("bos", "eos", "sep"), known))
    return add_bos + 2 * add_eos + add_sep


def rerank_prompt(template: str, query: str, document: str) -> str:
    """A GGUF's rerank template with ``{query}`` and ``{document}`` filled in.
    One pass, so a query that contains the text "{document}" stays as written."""
    values = {"{query}": query, "{document}": document}
    return re.sub(r"\{query\}|\{document\}", lambda m: values[m.group(0)], template)


def _flag(metadata: Mapping[str, str], key: str, default: bool) -> bool:
    value = metadata.get(key)
    return default if value is None else str(value).lower() == "true"


class Embedder:
    """One llama.cpp context with embeddings on, sharing the worker's already
    loaded model weights.

    ``pooling`` is what the GGUF declares, which llama.cpp applies as is. A
    generative model declares none (pooling "none", like the embedded Gemma 3
    270M): for it the context mean-pools the token embeddings, rather than
    failing, so ``embed`` still returns one vector per input.

    Inputs are packed into as few ``llama_decode`` calls as fit: up to
    ``n_seq_max`` inputs and ``token_budget`` tokens per call (``n_batch``, less
    for a generative model), one sequence id per input (``decodes`` counts the
    calls). One call at a time: a lock guards the context, so it can run in a
    thread beside the generation scheduler.
    """

    def __init__(self, model, *, n_ctx: int, n_batch: int, n_threads: int | None,
                 n_seq_max: int = 16):
        self._model = model
        self._vocab = L.llama_model_get_vocab(model)
        self._lock = threading.Lock()
        self.pooling = _model_pooling(model)
        self.n_embd = L.llama_model_n_embd_out(model)
        self.n_cls_out = L.llama_model_n_cls_out(model)
        template = L.llama_model_chat_template(model, b"rerank")
        self._rerank_template = template.decode("utf-8") if template is not None else None
        self.decodes = 0
        self._ctx = _new_context(model, n_ctx=n_ctx, n_batch=min(n_batch, n_ctx),
                                 n_seq_max=max(1, min(n_seq_max, 256)), n_threads=n_threads,
                                 mean=self.pooling == "none")
        self.n_batch = L.llama_n_batch(self._ctx)
        self.n_seq_max = L.llama_n_seq_max(self._ctx)
        # Positions past the trained length have no embedding row in BERT-style models.
        self.max_tokens = min(L.llama_n_ctx(self._ctx), self.n_batch,
                              L.llama_model_n_ctx_train(model) or self.n_batch)
        # A generative model also computes logits for every token it embeds
        # (n_vocab floats each: 1 MB a token for Gemma 3), so it packs fewer.
        budget = GENERATIVE_TOKEN_BUDGET if self.pooling == "none" else self.n_batch
        self.token_budget = min(self.n_batch, budget)
        self._batch = L.llama_batch_init(self.n_batch, 0, 1)

    # ---- public ------------------------------------------------------------

    def embed(self, texts: list[str]) -> tuple[list[list[float]], list[int]]:
        """L2-normalized vectors, and the token count of each text."""
        with self._lock:
            if self.pooling == "rank":
                raise ValueError("this model is a reranker (rank pooling): it scores "
                                 "query/document pairs and returns no embeddings")
            seqs = [self._tokenize(t, add_special=True, parse_special=False) for t in texts]
            self._check_lengths(seqs, "input")
            vectors = [_normalized(v) for v in self._pooled(seqs, self.n_embd)]
            return vectors, [len(s) for s in seqs]

    def rank(self, query: str, documents: list[str]) -> tuple[list[float], int]:
        """A relevance score per document (the first of the classifier head's
        outputs, as llama-server reports it), and the tokens of all pairs."""
        with self._lock:
            if self.pooling != "rank":
                raise ValueError("this model does not declare rank pooling: it is not a "
                                 "reranker (score with cosine similarity of embeddings)")
            seqs = [self.pair_tokens(query, d) for d in documents]
            self._check_lengths(seqs, "document")
            scores = [float(out[0]) for out in self._pooled(seqs, self.n_cls_out)]
            return scores, sum(len(s) for s in seqs)

    def pair_tokens(self, query: str, document: str) -> list[int]:
        """The pair as llama-server's ``format_prompt_rerank`` builds it: the
        GGUF's rerank template if it has one, else BOS query EOS SEP doc EOS,
        each special token only where the vocab adds it."""
        if self._rerank_template is not None:
            return self._tokenize(rerank_prompt(self._rerank_template, query, document),
                                  add_special=False, parse_special=True)
        v = self._vocab
        eos = L.llama_vocab_eos(v)
        eos = eos if eos != L.LLAMA_TOKEN_NULL else L.llama_vocab_sep(v)
        q = self._tokenize(query, add_special=False, parse_special=False)
        d = self._tokenize(document, add_special=False, parse_special=False)
        bos = [L.llama_vocab_bos(v)] if L.llama_vocab_get_add_bos(v) else []
        end = [eos] if L.llama_vocab_get_add_eos(v) else []
        sep = [L.llama_vocab_sep(v)] if L.llama_vocab_get_add_sep(v) else []
        return bos + q + end + sep + d + end

    def close(self) -> None:
        with self._lock:
            if self._ctx is not None:
                L.llama_batch_free(self._batch)
                L.llama_free(self._ctx)
                self._ctx = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- internals -----------------------------------------------------------

    def _tokenize(self, text: str, *, add_special: bool, parse_special: bool) -> list[int]:
        data = text.encode("utf-8")
        size = len(data) + 8
        for _ in range(2):
            buf = (L.llama_token * size)()
            n = L.llama_tokenize(self._vocab, data, len(data), buf, size, add_special, parse_special)
            if n >= 0:
                return list(buf[:n])
            size = -n
        raise RuntimeError("llama_tokenize failed")

    def _check_lengths(self, seqs: list[list[int]], what: str) -> None:
        if self._ctx is None:
            raise RuntimeError("the embedder is closed")
        for i, seq in enumerate(seqs):
            if not seq:
                raise ValueError(f"{what} {i} is empty")
            if len(seq) > self.max_tokens:
                raise ValueError(
                    f"{what} {i} has {len(seq)} tokens, more than the {self.max_tokens} this "
                    f"model embeds at once (n_ctx {L.llama_n_ctx(self._ctx)}, n_batch "
                    f"{self.n_batch}, trained context {L.llama_model_n_ctx_train(self._model)})")

    def _pooled(self, seqs: list[list[int]], width: int) -> list[np.ndarray]:
        """One pooled output (``width`` floats) per sequence, in order."""
        out: list[np.ndarray] = [np.empty(0)] * len(seqs)
        for group in self._groups(seqs):
            self._decode([seqs[i] for i in group])
            for seq_id, i in enumerate(group):
                ptr = L.llama_get_embeddings_seq(self._ctx, seq_id)
                if not ptr:
                    raise RuntimeError(f"llama.cpp returned no pooled output for input {i}")
                out[i] = np.ctypeslib.as_array(ptr, shape=(width,)).copy()
        return out

    def _groups(self, seqs: list[list[int]]) -> list[list[int]]:
        """Consecutive inputs packed up to n_seq_max sequences and the token
        budget; a longer input goes alone."""
        groups: list[list[int]] = []
        tokens, budget = 0, self.token_budget
        for i, seq in enumerate(seqs):
            if not groups or len(groups[-1]) == self.n_seq_max or tokens + len(seq) > budget:
                groups.append([])
                tokens = 0
            groups[-1].append(i)
            tokens += len(seq)
        return groups

    def _decode(self, seqs: list[list[int]]) -> None:
        memory = L.llama_get_memory(self._ctx)
        if memory:  # encoder-only models keep no KV cache
            L.llama_memory_clear(memory, True)
        n = self._fill(seqs)
        rc = L.llama_decode(self._ctx, self._batch)
        self.decodes += 1
        if rc != 0:
            raise RuntimeError(f"llama_decode failed ({rc}) on a batch of {n} tokens")

    def _fill(self, seqs: list[list[int]]) -> int:
        b = self._batch
        n = sum(len(s) for s in seqs)
        np.ctypeslib.as_array(b.token, shape=(n,))[:] = np.concatenate(seqs)
        np.ctypeslib.as_array(b.pos, shape=(n,))[:] = np.concatenate([np.arange(len(s)) for s in seqs])
        np.ctypeslib.as_array(b.n_seq_id, shape=(n,))[:] = 1
        np.ctypeslib.as_array(b.logits, shape=(n,))[:] = 1  # pooling reads every token
        k = 0
        for seq_id, seq in enumerate(seqs):
            for _ in seq:
                b.seq_id[k][0] = seq_id
                k += 1
        b.n_tokens = n
        return n


def _new_context(model, *, n_ctx: int, n_batch: int, n_seq_max: int, n_threads: int | None,
                 mean: bool):
    p = L.llama_context_default_params()
    p.n_ctx = n_ctx
    # Non-causal encoders see a whole sequence in one micro-batch.
    p.n_batch = p.n_ubatch = n_batch
    p.n_seq_max = n_seq_max
    p.embeddings = True
    p.pooling_type = L.LLAMA_POOLING_TYPE_MEAN if mean else L.LLAMA_POOLING_TYPE_UNSPECIFIED
    # One KV buffer for all sequences, so one long input may use the whole context.
    p.kv_unified = True
    if n_threads:
        p.n_threads = p.n_threads_batch = n_threads
    ctx = L.llama_init_from_model(model, p)
    if not ctx:
        raise RuntimeError("llama.cpp could not create the embedding context")
    return ctx


def _model_pooling(model) -> str:
    arch = _meta(model, "general.architecture") or "llama"
    key = f"{arch}.pooling_type"
    return declared_pooling({"general.architecture": arch, key: _meta(model, key) or "0"})


def _meta(model, key: str) -> str | None:
    buf = ctypes.create_string_buffer(256)
    n = L.llama_model_meta_val_str(model, key.encode(), buf, len(buf))
    if n < 0:
        return None
    if n >= len(buf):
        buf = ctypes.create_string_buffer(n + 1)
        L.llama_model_meta_val_str(model, key.encode(), buf, len(buf))
    return buf.value.decode("utf-8", errors="replace")


def _normalized(v: np.ndarray) -> list[float]:
    norm = float(np.linalg.norm(v))
    return (v / norm if norm > 0 else v).tolist()
