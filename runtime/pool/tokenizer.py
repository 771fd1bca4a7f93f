"""The model's own tokenizer, loaded vocab-only (no weights) in the gateway,
so prompt sizes are known exactly before a request is dispatched. It also
renders chat messages with the model's chat template from the GGUF, or with a
plain transcript for base models that ship none. Tool calls reach it already
in the form the model is to see (``runtime.gateway.tools`` prepares them)."""
from __future__ import annotations

import asyncio
import functools
import threading
from concurrent.futures import ThreadPoolExecutor

import cachetools
import llama_cpp
from llama_cpp import Llama
from llama_cpp.llama_chat_format import Jinja2ChatFormatter

# Short texts tokenize in microseconds: inline. Long ones go to a thread, so a
# large document never holds up the event loop.
INLINE_CHARS = 8192
CACHED_CHARS, CACHED_PROMPTS = 8192, 2048
_EXECUTOR = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tokenizer")

# Base models ship no chat template: a plain transcript they can continue.
_FALLBACK_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{{ m['role'] }}: {{ m['content'] or '' }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant: {% endif %}")


class ModelTokenizer:
    def __init__(self, model_path: str, *, chat_template: str | None = None):
        """``chat_template`` replaces the GGUF's own (as llama.cpp's ``--chat-template-file``)."""
        self._llm = Llama(model_path=model_path, vocab_only=True, verbose=False)
        self._template_override = chat_template
        self._lock = threading.Lock()  # a llama vocab is not documented as thread-safe
        self._cache: cachetools.LRUCache = cachetools.LRUCache(maxsize=CACHED_PROMPTS)
        self.n_ctx_train = int(self.metadata.get(
            f"{self.metadata.get('general.architecture', 'llama')}.context_length", 0) or 0)
        eos = self._llm.token_eos()
        bos = self._llm.token_bos()
        text = self._llm._model.token_get_text
        self._chat = Jinja2ChatFormatter(
            template=self.chat_template or _FALLBACK_TEMPLATE,
            eos_token=text(eos) if eos != -1 else "",
            bos_token=text(bos) if bos != -1 else "",
            add_generation_prompt=True)

    @property
    def metadata(self) -> dict[str, str]:
        """The GGUF's key/value metadata."""
        return self._llm.metadata

    @property
    def chat_template(self) -> str | None:
        """The GGUF's Jinja chat template; None for base models that have none."""
        return self._template_override or self.metadata.get("tokenizer.chat_template") or None

    @property
    def n_vocab(self) -> int:
        """Token ids are ``0 <= id < n_vocab``; anything else is refused before it reaches llama.cpp."""
        return self._llm.n_vocab()

    @property
    def vocab(self):
        """llama.cpp's vocab handle (``llama_vocab *``), e.g. to parse a grammar against it."""
        return self._llm._model.vocab

    def encode(self, text: str, *, add_bos: bool = True, special: bool = False) -> list[int]:
        """Token ids of ``text``. Prompts repeat (a function's template, a system
        prompt): short ones are remembered, so the gateway's hop stays cheap."""
        if len(text) > CACHED_CHARS:
            return self._encode(text, add_bos, special)
        key = (text, add_bos, special)
        tokens = self._cache.get(key)
        if tokens is None:
            tokens = self._cache[key] = self._encode(text, add_bos, special)
        return list(tokens)

    def _encode(self, text: str, add_bos: bool, special: bool) -> list[int]:
        # llama_tokenize directly, into a buffer sized to the text (the wrapper allocates
        # n_ctx_train ids per call, which costs more than tokenizing a short prompt).
        data = text.encode("utf-8")
        size = len(data) + 2
        with self._lock:
            buf = (llama_cpp.llama_token * size)()
            n = llama_cpp.llama_tokenize(self.vocab, data, len(data), buf, size, add_bos, special)
            if n < 0:
                size = -n
                buf = (llama_cpp.llama_token * size)()
                n = llama_cpp.llama_tokenize(self.vocab, data, len(data), buf, size, add_bos, special)
            if n < 0:
                raise ValueError("the text could not be tokenized")
            return buf[:n]

    def decode(self, tokens: list[int]) -> str:
        with self._lock:
            return self._llm.detokenize(tokens).decode("utf-8", errors="replace")

    def render_prompt(self, messages: list[dict], tools: list[dict] | None = None) -> str:
        """Messages (and the tools for the template's ``tools``) -> the prompt text."""
        return self._chat(messages=messages, tools=tools).prompt

    def render_chat(self, messages: list[dict], tools: list[dict] | None = None) -> list[int]:
        """Messages -> prompt tokens, exactly as the model will see them."""
        result = self._chat(messages=messages, tools=tools)
        return self.encode(result.prompt, add_bos=not result.added_special, special=True)

    async def aencode(self, text: str, *, add_bos: bool = True, special: bool = False) -> list[int]:
        call = functools.partial(self.encode, text, add_bos=add_bos, special=special)
        return await _run(call, len(text))

    async def arender_chat(self, messages: list[dict], tools: list[dict] | None = None) -> list[int]:
        size = sum(len(str(m.get("content") or "")) for m in messages)
        return await _run(functools.partial(self.render_chat, messages, tools), size)


async def _run(call, size: int):
    if size <= INLINE_CHARS:
        return call()
    return await asyncio.get_running_loop().run_in_executor(_EXECUTOR, call)
