"""llama.cpp inside a worker process: one ``Llama`` context per slot, token-level
generation with stop strings, exact token counts and KV-prefix reuse, and
embeddings. Runs in the worker's threads (ctypes releases the GIL); never
imported by the gateway's event loop code paths."""
from __future__ import annotations

import codecs
import random
import threading
from dataclasses import dataclass, field
from typing import Callable

import llama_cpp
from llama_cpp import Llama


@dataclass
class GenerateParams:
    prompt_tokens: list[int]
    max_tokens: int
    stop: list[str] = field(default_factory=list)
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 40
    min_p: float = 0.05
    repeat_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None


@dataclass
class GenerateResult:
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int


class Cancelled(Exception):
    pass


def load_llama(model_path: str, *, n_ctx: int, n_gpu_layers: int, n_threads: int | None,
               n_batch: int, embedding: bool = False) -> Llama:
    kwargs = dict(model_path=model_path, n_ctx=n_ctx, n_gpu_layers=n_gpu_layers,
                  n_batch=min(n_batch, n_ctx), verbose=False, embedding=embedding)
    if n_threads:
        kwargs["n_threads"] = n_threads
        kwargs["n_threads_batch"] = n_threads
    if embedding:
        kwargs["pooling_type"] = llama_cpp.LLAMA_POOLING_TYPE_MEAN
        kwargs["n_ubatch"] = kwargs["n_batch"] = n_ctx  # a whole input is one batch
    return Llama(**kwargs)


class Slot:
    """One generation context. Used by one request at a time."""

    def __init__(self, llm: Llama):
        self.llm = llm
        self.partial_kv_removal = self._probe_partial_kv_removal()

    def _probe_partial_kv_removal(self) -> bool:
        # Sliding-window models cannot drop a KV suffix; then llama.cpp re-evaluates
        # the whole prompt and nothing counts as cached.
        try:
            toks = self.llm.tokenize(b"probe prefix reuse", add_bos=True)
            self.llm.reset()
            self.llm.eval(toks)
            ok = bool(self.llm._ctx.kv_cache_seq_rm(-1, 1, -1))
        finally:
            self.llm.reset()
        return ok

    def cached_prefix(self, tokens: list[int]) -> int:
        """Tokens of this prompt that llama.cpp will take from the KV cache (mirrors
        ``Llama.generate``'s prefix matching)."""
        llm = self.llm
        if llm.n_tokens <= 0:
            return 0
        n = 0
        for a, b in zip(llm._input_ids[: llm.n_tokens], tokens):
            if a != b:
                break
            n += 1
        consumed = n == len(tokens)
        if consumed and llm.n_tokens == len(tokens) and not llm._requires_eval:
            return len(tokens)
        reuse = n - 1 if consumed else n
        return max(0, reuse) if self.partial_kv_removal else 0

    def generate(self, p: GenerateParams, emit: Callable[[str, int], None],
                 cancelled: threading.Event) -> GenerateResult:
        llm = self.llm
        n_ctx = llm.n_ctx()
        cached = self.cached_prefix(p.prompt_tokens)
        llm.set_seed(p.seed if p.seed is not None else random.getrandbits(31))
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        text, sent, count, finish = "", 0, 0, "length"
        hold = max((len(s) for s in p.stop), default=0)
        vocab = llm._model.vocab
        gen = llm.generate(p.prompt_tokens, top_k=p.top_k, top_p=p.top_p, min_p=p.min_p,
                           temp=p.temperature, repeat_penalty=p.repeat_penalty,
                           presence_penalty=p.presence_penalty,
                           frequency_penalty=p.frequency_penalty, reset=True)
        try:
            for token in gen:
                if cancelled.is_set():
                    raise Cancelled()
                if llama_cpp.llama_vocab_is_eog(vocab, token):
                    finish = "stop"
                    break
                count += 1
                text += decoder.decode(llm.detokenize([token], special=False))
                cut = _find_stop(text, p.stop, max(0, sent - hold))
                if cut is not None:
                    text, finish = text[:cut], "stop"
                    break
                safe = len(text) - _partial_stop_len(text, p.stop)
                emit(text[sent:safe], count)
                sent = max(sent, safe)
                if count >= p.max_tokens or len(p.prompt_tokens) + count >= n_ctx:
                    break
        finally:
            gen.close()
        text += decoder.decode(b"", final=True) if finish == "length" else ""
        emit(text[sent:], count)
        return GenerateResult(finish, len(p.prompt_tokens), count, cached)


def _find_stop(text: str, stops: list[str], start: int) -> int | None:
    hits = [i for i in (text.find(s, start) for s in stops) if i >= 0]
    return min(hits) if hits else None


def _partial_stop_len(text: str, stops: list[str]) -> int:
    """Length of the longest tail of ``text`` that could begin a stop string."""
    best = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), best, -1):
            if s.startswith(text[-k:]):
                best = k
                break
    return best


class Embedder:
    """A mean-pooled, normalized embedding context, loaded on first use."""

    def __init__(self, factory: Callable[[], Llama]):
        self._factory = factory
        self._llm: Llama | None = None
        self._lock = threading.Lock()

    def embed(self, texts: list[str]) -> tuple[list[list[float]], list[int]]:
        with self._lock:
            if self._llm is None:
                self._llm = self._factory()
            llm = self._llm
            vectors, counts = [], []
            for t in texts:
                toks = llm.tokenize(t.encode("utf-8"), add_bos=True, special=False)
                counts.append(len(toks))
                vectors.append(llm.embed(t, normalize=True))
            return vectors, counts
