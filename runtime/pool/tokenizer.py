"""The model's own tokenizer, loaded vocab-only (no weights) in the gateway,
so prompt sizes are known exactly before a request is dispatched. It also
renders chat messages with the model's chat template from the GGUF, or with a
plain transcript for base models that ship none. Tool calls reach it already
in the form the model is to see (``runtime.gateway.tools`` prepares them).

Token ids from callers are checked against the vocabulary before llama.cpp
reads them, and ``offload`` keeps large work off the event loop."""
from __future__ import annotations

import asyncio
import ctypes
import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import cachetools
import jinja2
import llama_cpp
from llama_cpp.llama_chat_format import Jinja2ChatFormatter

from runtime.errors import ContextLengthExceeded, InvalidRequest

logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)  # llama.cpp's own chatter

# Small work (a short text, a small body) takes microseconds: inline. Anything
# larger goes to a thread, so a large document or body never holds up the event
# loop. The size is in characters or bytes, never a count of parts: 100,000 empty
# messages are a large body.
INLINE_SIZE = 8192
CACHED_CHARS, CACHED_PROMPTS = 8192, 2048
_EXECUTOR = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tokenizer")
T = TypeVar("T")

# Base models ship no chat template: a plain transcript they can continue.
_FALLBACK_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{{ m['role'] }}: {{ m['content'] or '' }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant: {% endif %}")


class ModelTokenizer:
    def __init__(self, model_path: str, *, chat_template: str | None = None):
        """``chat_template`` replaces the GGUF's own (as llama.cpp's ``--chat-template-file``)."""
        # The low-level API, not ``Llama(verbose=False)``: that silences llama.cpp by
        # redirecting the whole process's stdout and stderr while it loads, which swallows
        # whatever the service prints meanwhile (its "ready" line, functions' REPORTs).
        llama_cpp.llama_backend_init()
        params = llama_cpp.llama_model_default_params()
        params.vocab_only = True
        self._model = llama_cpp.llama_model_load_from_file(model_path.encode(), params)
        if not self._model:
            raise ValueError(f"llama.cpp could not read the vocabulary of {model_path}")
        self._vocab = llama_cpp.llama_model_get_vocab(self._model)
        self._metadata = _read_metadata(self._model)
        self._template_override = chat_template
        self._lock = threading.Lock()  # a llama vocab is not documented as thread-safe
        self._cache_lock = threading.Lock()  # encode runs inline and on the thread
        self._cache: cachetools.LRUCache = cachetools.LRUCache(maxsize=CACHED_PROMPTS)
        self.n_ctx_train = int(self.metadata.get(
            f"{self.metadata.get('general.architecture', 'llama')}.context_length", 0) or 0)
        self._longest = self._longest_piece()
        eos = llama_cpp.llama_vocab_eos(self._vocab)
        bos = llama_cpp.llama_vocab_bos(self._vocab)
        text = lambda t: llama_cpp.llama_vocab_get_text(self._vocab, t).decode("utf-8", "replace")  # noqa: E731
        self._chat = Jinja2ChatFormatter(
            template=self.chat_template or _FALLBACK_TEMPLATE,
            eos_token=text(eos) if eos != -1 else "",
            bos_token=text(bos) if bos != -1 else "",
            add_generation_prompt=True)

    @property
    def metadata(self) -> dict[str, str]:
        """The GGUF's key/value metadata."""
        return self._metadata

    @property
    def chat_template(self) -> str | None:
        """The GGUF's Jinja chat template; None for base models that have none."""
        return self._template_override or self.metadata.get("tokenizer.chat_template") or None

    @property
    def n_vocab(self) -> int:
        """Token ids are ``0 <= id < n_vocab``; anything else is refused before it reaches llama.cpp."""
        return llama_cpp.llama_vocab_n_tokens(self._vocab)

    @property
    def vocab(self):
        """llama.cpp's vocab handle (``llama_vocab *``), e.g. to parse a grammar against it."""
        return self._vocab

    def encode(self, text: str, *, add_bos: bool = True, special: bool = False) -> list[int]:
        """Token ids of ``text``. Prompts repeat (a function's template, a system
        prompt): short ones are remembered, so the gateway's hop stays cheap."""
        if len(text) > CACHED_CHARS:
            return self._encode(text, add_bos, special)
        key = (text, add_bos, special)
        with self._cache_lock:
            tokens = self._cache.get(key)
        if tokens is None:
            tokens = self._encode(text, add_bos, special)
            with self._cache_lock:
                self._cache[key] = tokens
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

    def check_ids(self, tokens: list[int], param: str) -> None:
        """Every id in the vocabulary, or a 400 naming the first that is not:
        llama.cpp aborts the whole process on an id out of range."""
        n_vocab = self.n_vocab
        for tok in tokens:
            if not isinstance(tok, int) or not 0 <= tok < n_vocab:
                raise InvalidRequest(f"token id {tok} is out of range (the vocabulary has {n_vocab} "
                                     "tokens)", param=param, code="invalid_token_id")

    def decode(self, tokens: list[int], param: str = "prompt") -> str:
        self.check_ids(tokens, param)
        with self._lock:
            return b"".join(_piece(self._vocab, t) for t in tokens).decode("utf-8", errors="replace")

    def render_prompt(self, messages: list[dict], tools: list[dict] | None = None) -> str:
        """Messages (and the tools for the template's ``tools``) -> the prompt text."""
        return self._render(messages, tools).prompt

    def render_chat(self, messages: list[dict], tools: list[dict] | None = None, *,
                    max_tokens: int | None = None) -> list[int]:
        """Messages -> prompt tokens, exactly as the model will see them."""
        result = self._render(messages, tools)
        if max_tokens is not None:
            self.check_fits(result.prompt, max_tokens, "messages")
        return self.encode(result.prompt, add_bos=not result.added_special, special=True)

    def check_fits(self, text: str, max_tokens: int, param: str) -> None:
        """A 400 when ``text`` certainly has more than ``max_tokens`` tokens, known without
        tokenizing it: no token covers more bytes than the vocabulary's longest piece.
        llama.cpp takes time quadratic in the length of some texts; such a text is refused
        before it can hold the tokenizer thread for minutes."""
        longest = self._longest
        if longest is None:
            return
        size = len(text.encode("utf-8", "surrogatepass"))
        if size > max_tokens * longest:
            raise ContextLengthExceeded(
                f"This model's maximum context length is {max_tokens} tokens. However, your input "
                f"is longer than that ({size} bytes, at least {size // longest} tokens). Please "
                f"reduce the length of the {param}.", param=param)

    def _longest_piece(self) -> int | None:
        """Bytes of the longest token (None where the tokenizer normalizes text, so that a
        token may stand for more text than its piece: WordPiece, Unigram)."""
        if llama_cpp.llama_vocab_type(self._vocab) not in (llama_cpp.LLAMA_VOCAB_TYPE_SPM,
                                                           llama_cpp.LLAMA_VOCAB_TYPE_BPE):
            return None
        return max((len(_piece(self._vocab, t, special=True)) for t in range(self.n_vocab)), default=1) or 1

    def _render(self, messages: list[dict], tools: list[dict] | None):
        """The template's output; whatever it cannot render is a ValueError (the caller's 400)."""
        try:
            return self._chat(messages=messages, tools=tools)
        except (TypeError, LookupError, AttributeError, jinja2.TemplateError, RecursionError) as exc:
            raise ValueError(f"the chat template cannot render these messages: {exc}") from None

    async def aencode_all(self, texts: list[str], *, add_bos: bool = True, special: bool = False,
                          max_tokens: int | None = None, param: str = "input") -> list[list[int]]:
        """Token ids of each text, in one hop: many short texts are a large input too.
        With ``max_tokens``, a text that certainly has more is a 400 before it is tokenized."""
        def call() -> list[list[int]]:
            if max_tokens is not None:
                for text in texts:
                    self.check_fits(text, max_tokens, param)
            return [self.encode(t, add_bos=add_bos, special=special) for t in texts]
        return await offload(call, sum(len(t) for t in texts))


def _read_metadata(model) -> dict[str, str]:
    buf = ctypes.create_string_buffer(1 << 16)
    out = {}
    for i in range(llama_cpp.llama_model_meta_count(model)):
        if llama_cpp.llama_model_meta_key_by_index(model, i, buf, len(buf)) < 0:
            continue
        key = buf.value.decode("utf-8", "replace")
        n = llama_cpp.llama_model_meta_val_str_by_index(model, i, buf, len(buf))
        if n >= len(buf):  # a long value (a chat template): read it whole
            big = ctypes.create_string_buffer(n + 1)
            llama_cpp.llama_model_meta_val_str_by_index(model, i, big, n + 1)
            out[key] = big.value.decode("utf-8", "replace")
        elif n >= 0:
            out[key] = buf.value.decode("utf-8", "replace")
    return out


def _piece(vocab, token: int, special: bool = False) -> bytes:
    buf = ctypes.create_string_buffer(64)
    n = llama_cpp.llama_token_to_piece(vocab, token, buf, 64, 0, special)
    if n < 0:
        buf = ctypes.create_string_buffer(-n)
        n = llama_cpp.llama_token_to_piece(vocab, token, buf, -n, 0, special)
    return buf.raw[:n]


async def offload(call: Callable[[], T], size: int) -> T:
    """``call()``, inline when ``size`` (characters or bytes) is small, else on the
    tokenizer thread."""
    if size <= INLINE_SIZE:
        return call()
    return await asyncio.get_running_loop().run_in_executor(_EXECUTOR, call)
