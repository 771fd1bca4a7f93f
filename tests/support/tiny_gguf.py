"""Tiny but real GGUF files that llama.cpp loads: BERT-architecture encoders
with random (seeded) weights and a small WordPiece vocab, one for each pooling
type an embedding model can declare, and a cross-encoder reranker with the
classifier head that llama.cpp's rank pooling reads.

Test support only: the weights mean nothing, so tests built on these check
shapes, pooling, ordering, batching and token counts, never semantics. Each
file is a few hundred KB and is written in milliseconds.
"""
from __future__ import annotations

import string
from pathlib import Path

import gguf
import numpy as np

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
PAD, UNK, CLS, SEP, MASK = range(len(SPECIALS))
WORDS = ["the", "a", "an", "of", "to", "in", "on", "is", "are", "was", "and", "or", "for",
         "with", "what", "where", "who", "how", "capital", "city", "country", "paris",
         "france", "berlin", "germany", "rome", "italy", "cat", "cats", "dog", "dogs", "sat",
         "mat", "ran", "park", "sun", "moon", "sky", "blue", "red", "green", "big", "small",
         "fast", "slow", "llama", "model", "token", "search", "query", "document", "answer"]
PIECES = list(string.ascii_lowercase) + list(string.digits)
PUNCT = list(".,;:!?'\"()-")

POOLING = {"none": gguf.PoolingType.NONE, "mean": gguf.PoolingType.MEAN,
           "cls": gguf.PoolingType.CLS, "last": gguf.PoolingType.LAST,
           "rank": gguf.PoolingType.RANK}


def vocab() -> list[str]:
    """WordPiece tokens in llama.cpp's "phantom space" form (what its BERT
    converter writes): a word start is ``\u2581word``, a continuation piece is
    bare. Every lowercase letter and digit is both, so any ASCII text tokenizes
    without [UNK], into more tokens the longer it is."""
    starts = ["\u2581" + w for w in dict.fromkeys(WORDS + PIECES + PUNCT)]
    return SPECIALS + starts + PIECES


def write_embedding_gguf(path: str | Path, *, pooling: str = "mean", n_embd: int = 32,
                         n_layer: int = 2, n_head: int = 4, n_ctx_train: int = 512,
                         seed: int = 0) -> Path:
    """A BERT sentence encoder that declares ``pooling`` (mean, cls, last or none)."""
    if pooling not in POOLING or pooling == "rank":
        raise ValueError(f"unknown embedding pooling {pooling!r}")
    return _write(Path(path), pooling=pooling, n_embd=n_embd, n_layer=n_layer, n_head=n_head,
                  n_ctx_train=n_ctx_train, seed=seed, name=f"tiny-bert-{pooling}", reranker=False)


def write_reranker_gguf(path: str | Path, *, n_embd: int = 32, n_layer: int = 2, n_head: int = 4,
                        n_ctx_train: int = 512, seed: int = 0,
                        rerank_template: str | None = None) -> Path:
    """A BERT cross-encoder like bge-reranker-v2-m3: rank pooling over [CLS],
    then the ``cls`` dense layer (tanh) and the one-logit ``cls.output`` head.

    Like an XLM-R tokenizer it adds EOS (= [SEP]) after each text, so llama.cpp
    builds a pair as ``[CLS] query [SEP] [SEP] doc [SEP]``. ``rerank_template``
    is written as ``tokenizer.chat_template.rerank`` (with ``{query}`` and
    ``{document}`` placeholders) for models that declare their own pair format.
    """
    return _write(Path(path), pooling="rank", n_embd=n_embd,
                  n_layer=n_layer, n_head=n_head, n_ctx_train=n_ctx_train, seed=seed,
                  name="tiny-bert-reranker", reranker=True, rerank_template=rerank_template)


def _write(path: Path, *, pooling: str, n_embd: int, n_layer: int, n_head: int,
           n_ctx_train: int, seed: int, name: str, reranker: bool,
           rerank_template: str | None = None) -> Path:
    rng = np.random.default_rng(seed)
    tokens = vocab()
    w = gguf.GGUFWriter(str(path), arch="bert")
    _hparams(w, name=name, n_embd=n_embd, n_layer=n_layer, n_head=n_head, n_ctx_train=n_ctx_train)
    w.add_pooling_type(POOLING[pooling])
    _tokenizer(w, tokens, eos_after_text=reranker)
    if reranker:
        w.add_classifier_output_labels(["LABEL_0"])
        if rerank_template is not None:
            w.add_chat_template([{"name": "rerank", "template": rerank_template}])
    for tensor_name, data in _tensors(rng, len(tokens), n_embd, n_layer, n_ctx_train,
                                      reranker=reranker):
        w.add_tensor(tensor_name, data)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def _hparams(w: gguf.GGUFWriter, *, name: str, n_embd: int, n_layer: int, n_head: int,
             n_ctx_train: int) -> None:
    w.add_name(name)
    w.add_context_length(n_ctx_train)
    w.add_embedding_length(n_embd)
    w.add_feed_forward_length(2 * n_embd)
    w.add_block_count(n_layer)
    w.add_head_count(n_head)
    w.add_layer_norm_eps(1e-12)
    w.add_causal_attention(False)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)


def _tokenizer(w: gguf.GGUFWriter, tokens: list[str], *, eos_after_text: bool) -> None:
    w.add_tokenizer_model("bert")
    w.add_token_list(tokens)
    w.add_token_types([gguf.TokenType.CONTROL] * len(SPECIALS)
                      + [gguf.TokenType.NORMAL] * (len(tokens) - len(SPECIALS)))
    w.add_token_type_count(2)
    w.add_bos_token_id(CLS)
    w.add_sep_token_id(SEP)
    w.add_pad_token_id(PAD)
    w.add_unk_token_id(UNK)
    w.add_mask_token_id(MASK)
    if eos_after_text:
        w.add_eos_token_id(SEP)
        w.add_add_eos_token(True)


def _tensors(rng: np.random.Generator, n_vocab: int, n_embd: int, n_layer: int, n_ctx_train: int,
             *, reranker: bool):
    """(name, array) in llama.cpp's BERT names; numpy shapes are ggml's reversed."""
    n_ff = 2 * n_embd

    def rand(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.2).astype(np.float32)

    def norm(prefix: str):
        yield f"{prefix}.weight", (1.0 + rand(n_embd)).astype(np.float32)
        yield f"{prefix}.bias", rand(n_embd)

    yield "token_embd.weight", rand(n_vocab, n_embd)
    yield "token_types.weight", rand(2, n_embd)
    yield "position_embd.weight", rand(n_ctx_train, n_embd)
    yield from norm("token_embd_norm")
    for i in range(n_layer):
        blk = f"blk.{i}"
        for part in ("attn_q", "attn_k", "attn_v", "attn_output"):
            yield f"{blk}.{part}.weight", rand(n_embd, n_embd)
            yield f"{blk}.{part}.bias", rand(n_embd)
        yield from norm(f"{blk}.attn_output_norm")
        yield f"{blk}.ffn_up.weight", rand(n_ff, n_embd)
        yield f"{blk}.ffn_up.bias", rand(n_ff)
        yield f"{blk}.ffn_down.weight", rand(n_embd, n_ff)
        yield f"{blk}.ffn_down.bias", rand(n_embd)
        yield from norm(f"{blk}.layer_output_norm")
    if reranker:
        yield "cls.weight", rand(n_embd, n_embd)
        yield "cls.bias", rand(n_embd)
        yield "cls.output.weight", rand(1, n_embd)
        yield "cls.output.bias", rand(1)
