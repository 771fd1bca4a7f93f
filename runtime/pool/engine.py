"""The serving engine inside a worker process: one llama.cpp model, one
context whose ``n_seq_max`` is the pool's ``slots``, and a scheduler thread
that runs continuous batching over it.

Every step packs one token for each running sequence plus chunks of newly
admitted prompts (at most ``n_batch`` tokens in all) into one
``llama_decode``, then samples each sequence with its own sampler chain. A
request is placed on the free sequence whose cached tokens share the longest
prefix with its prompt; ``n > 1`` choices copy the prompt's KV to sibling
sequences. Uses llama-cpp-python's low-level bindings only. Never imported by
the gateway process: decoding arbitrary token ids can abort."""
from __future__ import annotations

import codecs
import ctypes
import logging
import math
import os
import queue
import random
import threading
import time
from dataclasses import dataclass, field

import llama_cpp as ll
import numpy as np

from runtime.pool.sampling import Sampling

logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)  # llama.cpp's own chatter


@dataclass
class Request:
    """What the gateway asks of the engine: one prompt, ``n`` choices."""
    id: int
    prompt: list[int]
    max_tokens: int
    stop: list[str] = field(default_factory=list)
    n: int = 1
    sampling: Sampling = field(default_factory=Sampling)
    logprobs: int | None = None  # None: none; k >= 0: the sampled token's logprob and the top k
    special: bool = False  # render special tokens as text (a chat template's tool-call tags)
    cached: int = 0  # prompt tokens taken from the KV cache


class Events:
    """Where the engine reports; the worker's transport implements these."""

    def text(self, req_id: int, index: int, text: str, tokens: int, logprobs: list | None) -> None: ...
    def choice_done(self, req_id: int, index: int, finish: str, tokens: int) -> None: ...
    def done(self, req_id: int, prompt_tokens: int, cached_tokens: int) -> None: ...
    def error(self, req_id: int, message: str) -> None: ...
    def flush(self) -> None:
        """The end of a step: what the step produced may go out together."""


class EngineError(Exception):
    pass


class Model:
    """The weights, loaded once per worker (on the GPU when ``n_gpu_layers`` says so)."""

    def __init__(self, path: str, *, n_gpu_layers: int = 0):
        ll.llama_backend_init()
        self.path = path
        params = ll.llama_model_default_params()
        params.n_gpu_layers = 999 if n_gpu_layers < 0 else n_gpu_layers
        self.ptr = ll.llama_model_load_from_file(path.encode(), params)
        if not self.ptr:
            raise EngineError(f"llama.cpp could not load {path}")
        self.vocab = ll.llama_model_get_vocab(self.ptr)
        self.n_vocab = ll.llama_vocab_n_tokens(self.vocab)
        self.n_swa = ll.llama_model_n_swa(self.ptr)
        self._pieces: dict[tuple[int, bool], bytes] = {}
        self._eog: list[int] | None = None

    def piece(self, token: int, special: bool = False) -> bytes:
        """The bytes of one token (cached: detokenizing is on the hot path)."""
        p = self._pieces.get((token, special))
        if p is None:
            buf = ctypes.create_string_buffer(64)
            n = ll.llama_token_to_piece(self.vocab, token, buf, 64, 0, special)
            if n < 0:
                buf = ctypes.create_string_buffer(-n)
                n = ll.llama_token_to_piece(self.vocab, token, buf, -n, 0, special)
            p = self._pieces[(token, special)] = buf.raw[:n]
        return p

    def is_eog(self, token: int) -> bool:
        return bool(ll.llama_vocab_is_eog(self.vocab, token))

    def eog_tokens(self) -> list[int]:
        if self._eog is None:
            self._eog = [t for t in range(self.n_vocab) if ll.llama_vocab_is_eog(self.vocab, t)]
        return self._eog

    def meta(self, key: str) -> str | None:
        buf = ctypes.create_string_buffer(256)
        n = ll.llama_model_meta_val_str(self.ptr, key.encode(), buf, 256)
        return buf.value.decode("utf-8", "replace") if n >= 0 else None

    def close(self) -> None:
        if self.ptr:
            ll.llama_model_free(self.ptr)
            self.ptr = None


_TOKEN_DATA = np.dtype([("id", "<i4"), ("logit", "<f4"), ("p", "<f4")])


class Sampler:
    """A llama.cpp sampler chain for one choice. With a grammar it does
    rejection sampling as llama.cpp's common sampler does: sample freely, check
    the token against the grammar, and only constrain the whole vocabulary when
    it was rejected (a grammar over 262k candidates every token is slow)."""

    def __init__(self, model: Model, s: Sampling, seed: int, *, prompt: list[int], max_tokens: int,
                 n_ctx: int):
        self.model = model
        self.chain = ll.llama_sampler_chain_init(ll.llama_sampler_chain_default_params())
        self.grammar = None
        bias = dict(s.logit_bias)
        if s.ignore_eos:
            bias.update({t: -math.inf for t in model.eog_tokens()})
        # Greedy without penalties or a grammar is an argmax over the logits row (with
        # the few biased entries adjusted in place): no 262k-entry candidate array.
        self.argmax = (s.temperature <= 0 and not s.grammar and (s.repeat_penalty == 1.0 or not s.repeat_last_n)
                       and not s.presence_penalty and not s.frequency_penalty)
        if self.argmax:
            self._bias_ids = np.fromiter(bias, dtype=np.int64, count=len(bias))
            self._bias = np.fromiter(bias.values(), dtype=np.float32, count=len(bias))
            return
        if bias:
            arr = (ll.llama_logit_bias * len(bias))(*[ll.llama_logit_bias(t, b) for t, b in bias.items()])
            self._add(ll.llama_sampler_init_logit_bias(model.n_vocab, len(bias), arr))
        last_n = n_ctx if s.repeat_last_n < 0 else min(s.repeat_last_n, n_ctx)
        if s.repeat_penalty != 1.0 and last_n:
            # llama.cpp's: the last repeat_last_n tokens, the prompt's among them (as llama-server)
            repeat = ll.llama_sampler_init_penalties(model.n_vocab, last_n, s.repeat_penalty, 0.0, 0.0)
            for token in prompt[-last_n:]:
                ll.llama_sampler_accept(repeat, token)
            self._add(repeat)
        if s.presence_penalty or s.frequency_penalty:
            # OpenAI's: every token generated so far, and only those
            self._add(ll.llama_sampler_init_penalties(model.n_vocab, max(max_tokens, 1), 1.0,
                                                      s.frequency_penalty, s.presence_penalty))
        if s.temperature <= 0:
            self._add(ll.llama_sampler_init_greedy())
        else:
            if s.top_k > 0:
                self._add(ll.llama_sampler_init_top_k(s.top_k))
            if s.top_p < 1.0:
                self._add(ll.llama_sampler_init_top_p(s.top_p, 1))
            if s.min_p > 0:
                self._add(ll.llama_sampler_init_min_p(s.min_p, 1))
            self._add(ll.llama_sampler_init_temp(s.temperature))
            self._add(ll.llama_sampler_init_dist(seed & 0xFFFFFFFF))
        if s.grammar:
            self.grammar = ll.llama_sampler_init_grammar(model.vocab, s.grammar.encode(), b"root")
            if not self.grammar:
                self.close()
                raise EngineError("the grammar could not be parsed")
            self._cur = (ll.llama_token_data * model.n_vocab)()
            self._cur_np = np.frombuffer(self._cur, dtype=_TOKEN_DATA)
            self._ids = np.arange(model.n_vocab, dtype=np.int32)
            self._single = ll.llama_token_data(0, 1.0, 0.0)

    def _add(self, smpl) -> None:
        ll.llama_sampler_chain_add(self.chain, smpl)

    def sample(self, ctx, idx: int) -> int:
        if self.argmax:
            row = np.ctypeslib.as_array(ll.llama_get_logits_ith(ctx, idx), shape=(self.model.n_vocab,))
            if not len(self._bias_ids):
                return int(row.argmax())
            kept = row[self._bias_ids]  # the model's own values, for logprobs afterwards
            row[self._bias_ids] = kept + self._bias
            token = int(row.argmax())
            row[self._bias_ids] = kept
            return token
        if self.grammar is None:
            return ll.llama_sampler_sample(self.chain, ctx, idx)  # also accepts the token
        token = self._apply(ctx, idx, grammar_first=False)
        if not self._allowed(token):
            token = self._apply(ctx, idx, grammar_first=True)
        ll.llama_sampler_accept(self.grammar, token)
        ll.llama_sampler_accept(self.chain, token)
        return token

    def _apply(self, ctx, idx: int, *, grammar_first: bool) -> int:
        cur = self._cur_np
        cur["id"] = self._ids
        cur["logit"] = np.ctypeslib.as_array(ll.llama_get_logits_ith(ctx, idx), shape=(self.model.n_vocab,))
        cur["p"] = 0.0
        arr = ll.llama_token_data_array(self._cur, self.model.n_vocab, -1, False)
        if grammar_first:
            ll.llama_sampler_apply(self.grammar, ctypes.byref(arr))
        ll.llama_sampler_apply(self.chain, ctypes.byref(arr))
        if arr.selected < 0 or (grammar_first and self._cur[arr.selected].logit == -math.inf):
            raise EngineError("the grammar allows no token here")
        return int(self._cur[arr.selected].id)

    def _allowed(self, token: int) -> bool:
        self._single.id, self._single.logit, self._single.p = token, 1.0, 0.0
        arr = ll.llama_token_data_array(ctypes.pointer(self._single), 1, -1, False)
        ll.llama_sampler_apply(self.grammar, ctypes.byref(arr))
        return self._single.logit != -math.inf

    def close(self) -> None:
        if self.chain:
            ll.llama_sampler_free(self.chain)
            self.chain = None
        if self.grammar:
            ll.llama_sampler_free(self.grammar)
            self.grammar = None


@dataclass
class Choice:
    """One sequence of output being generated for a request."""
    req: Request
    index: int
    sampler: Sampler
    seq: Sequence
    pending: list[int] = field(default_factory=list)  # prompt tokens not yet evaluated
    next_token: int | None = None  # sampled, not yet decoded
    count: int = 0
    text: str = ""
    sent: int = 0
    finish: str | None = None
    lp_pending: list[tuple[int, int, dict]] = field(default_factory=list)  # (start, end) in text, entry
    decoder: codecs.IncrementalDecoder = field(
        default_factory=lambda: codecs.getincrementaldecoder("utf-8")(errors="replace"))
    waits_for: Choice | None = None  # a sibling that evaluates the shared prompt
    out_idx: int = -1  # this step's output row


@dataclass
class Sequence:
    id: int
    kv: list[int] = field(default_factory=list)  # tokens whose KV this sequence holds, from position 0
    choice: Choice | None = None


class Engine:
    """Continuous batching over one context. ``submit`` and ``cancel`` are
    thread-safe; everything else runs on the scheduler thread."""

    def __init__(self, model: Model, events: Events, *, slots: int, n_ctx: int, n_batch: int,
                 n_threads: int | None, kv_unified: bool):  # the pool's settings (``PoolConfig``)
        self.model, self.events = model, events
        self.slots = slots
        params = ll.llama_context_default_params()
        params.n_ctx = n_ctx * slots
        params.n_seq_max = slots
        params.n_batch = params.n_ubatch = max(n_batch, slots)
        params.kv_unified = kv_unified
        # A sliding-window cache sized to the window, not the context (prefix reuse
        # checks what it still holds), and logits for one row per sequence, not per
        # batch token: 262k floats a row is what a 512-row buffer would cost.
        params.swa_full = False
        params.n_outputs_max = slots
        params.no_perf = True
        # One thread per core this process may use (llama.cpp's default of 4 oversubscribes
        # small machines, and its OpenMP threads then wait on each other).
        params.n_threads = params.n_threads_batch = n_threads or len(os.sched_getaffinity(0))
        self.ctx = ll.llama_init_from_model(model.ptr, params)
        if not self.ctx:
            raise EngineError("llama.cpp could not create the context")
        self.mem = ll.llama_get_memory(self.ctx)
        self.n_batch = params.n_batch
        self.n_ctx_seq = n_ctx  # each sequence's share, unified buffer or not
        self.batch = ll.llama_batch_init(self.n_batch, 0, 1)
        self.seqs = [Sequence(i) for i in range(slots)]
        self.choices: list[Choice] = []
        self.waiting: list[Request] = []
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._wake = threading.Event()
        self._stop = False
        self.stats = {"prompt_tokens": 0, "predicted_tokens": 0, "decode_calls": 0, "decode_s": 0.0,
                      "step_s": 0.0}
        self._thread = threading.Thread(target=self._run, name="llama-scheduler", daemon=True)
        self._thread.start()

    # ---- outside the scheduler ---------------------------------------------

    def submit(self, req: Request) -> None:
        self._inbox.put(req)
        self._wake.set()

    def cancel(self, req_id: int) -> None:
        self._inbox.put(("cancel", req_id))
        self._wake.set()

    def close(self) -> None:
        self._stop = True
        self._wake.set()
        self._thread.join(timeout=10)
        ll.llama_batch_free(self.batch)
        ll.llama_free(self.ctx)

    def kv_usage(self) -> float:
        used = sum(len(s.kv) for s in self.seqs)
        return used / float(self.n_ctx_seq * self.slots)

    @property
    def processing(self) -> int:
        return len({id(c.req) for c in self.choices})

    # ---- the scheduler loop --------------------------------------------------

    def _run(self) -> None:
        while not self._stop:
            try:
                self._drain_inbox()
                self._admit()
                self.events.flush()  # refusals at admission
                if not self.choices:
                    self._wake.wait(0.5)
                    self._wake.clear()
                    continue
                t0 = time.perf_counter()
                self._step()
                self.stats["step_s"] += time.perf_counter() - t0
            except Exception as exc:  # a bug or llama.cpp failure: fail what runs, keep serving
                logging.getLogger("llmfn.engine").exception("engine step failed")
                failed = {id(c.req): c.req for c in self.choices}
                failed.update({id(r): r for r in self.waiting})
                self.waiting.clear()
                try:
                    for req in failed.values():
                        self._fail(req, f"{type(exc).__name__}: {exc}")
                    self.events.flush()
                except Exception:  # noqa: BLE001 - the scheduler must outlive its listener
                    logging.getLogger("llmfn.engine").exception("engine events failed")

    def _drain_inbox(self) -> None:
        while True:
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                return
            if isinstance(item, Request):
                self.waiting.append(item)
            else:
                self._cancel(item[1])

    def _cancel(self, req_id: int) -> None:
        self.waiting = [r for r in self.waiting if r.id != req_id]
        for c in [c for c in self.choices if c.req.id == req_id]:
            self._free(c)

    def _admit(self) -> None:
        while self.waiting:
            req = self.waiting[0]
            free = [s for s in self.seqs if s.choice is None]
            if req.n > self.slots:
                self.waiting.pop(0)
                self.events.error(req.id, f"n={req.n} exceeds this worker's {self.slots} slots")
                continue
            if len(free) < req.n:
                return
            self.waiting.pop(0)
            try:
                self._place(req, free)
            except EngineError as exc:
                self._fail(req, str(exc))

    def _place(self, req: Request, free: list[Sequence]) -> None:
        """Put the request on the free sequence with the longest cached prefix."""
        best = max(free, key=lambda s: _common_prefix(s.kv, req.prompt))
        keep = self._reuse(best, req.prompt)
        seed = req.sampling.seed if req.sampling.seed is not None else random.getrandbits(32)
        samplers = []
        try:
            for k in range(req.n):
                samplers.append(Sampler(self.model, req.sampling, seed + k, prompt=req.prompt,
                                        max_tokens=req.max_tokens, n_ctx=self.n_ctx_seq))
        except EngineError:
            for smp in samplers:
                smp.close()
            raise
        first = Choice(req, 0, samplers[0], best, pending=req.prompt[keep:])
        best.choice = first
        self.choices.append(first)
        req.cached = keep
        others = [s for s in free if s is not best]
        for k in range(1, req.n):
            seq = others[k - 1]
            c = Choice(req, k, samplers[k], seq, waits_for=first)
            seq.choice = c
            self.choices.append(c)

    def _reuse(self, seq: Sequence, prompt: list[int]) -> int:
        """Drop what the sequence holds past the shared prefix; return how many
        prompt tokens stay cached. At least the last prompt token is evaluated
        again, for its logits."""
        keep = min(_common_prefix(seq.kv, prompt), len(prompt) - 1)
        if keep > 0 and ll.llama_memory_seq_rm(self.mem, seq.id, keep, -1):
            # A sliding-window cache may have dropped what the new tokens attend to.
            pos_min = ll.llama_memory_seq_pos_min(self.mem, seq.id)
            if self.model.n_swa <= 0 or pos_min <= max(0, keep - self.model.n_swa):
                del seq.kv[keep:]
                return keep
        ll.llama_memory_seq_rm(self.mem, seq.id, -1, -1)
        seq.kv.clear()
        return 0

    def _step(self) -> None:
        b = self.batch
        n = 0
        decoding = [c for c in self.choices if c.next_token is not None]
        for c in decoding:
            n = self._add(n, c.next_token, len(c.seq.kv), c.seq.id, True)
            c.out_idx = n - 1
            c.seq.kv.append(c.next_token)
            c.next_token = None
        budget = self.n_batch - n
        prefilling = []
        for c in self.choices:
            if not c.pending or budget <= 0:
                continue
            chunk = c.pending[:budget]
            del c.pending[:len(chunk)]
            base = len(c.seq.kv)
            for i, tok in enumerate(chunk):
                last = not c.pending and i == len(chunk) - 1
                n = self._add(n, tok, base + i, c.seq.id, last)
            c.seq.kv.extend(chunk)
            budget -= len(chunk)
            c.out_idx = n - 1 if not c.pending else -1
            if not c.pending:
                prefilling.append(c)
            self.stats["prompt_tokens"] += len(chunk)
        if n == 0:
            return
        b.n_tokens = n
        t0 = time.perf_counter()
        rc = ll.llama_decode(self.ctx, b)
        self.stats["decode_s"] += time.perf_counter() - t0
        self.stats["decode_calls"] += 1
        if rc != 0:
            raise EngineError(f"llama_decode returned {rc}")
        for c in prefilling:
            self._fork_siblings(c)
        for c in list(self.choices):
            if c.out_idx >= 0 and c.finish is None:
                self._sample(c)
        for c in self.choices:
            c.out_idx = -1
        self.events.flush()

    def _add(self, n: int, token: int, pos: int, seq_id: int, logits: bool) -> int:
        b = self.batch
        b.token[n] = token
        b.pos[n] = pos
        b.n_seq_id[n] = 1
        b.seq_id[n][0] = seq_id
        b.logits[n] = logits
        return n + 1

    def _fork_siblings(self, first: Choice) -> None:
        """The prompt is evaluated: its KV goes to the other choices' sequences,
        which sample from the same logits row."""
        for c in self.choices:
            if c.waits_for is first:
                ll.llama_memory_seq_rm(self.mem, c.seq.id, -1, -1)
                ll.llama_memory_seq_cp(self.mem, first.seq.id, c.seq.id, -1, -1)
                c.seq.kv = list(first.seq.kv)
                c.waits_for = None
                c.out_idx = first.out_idx

    def _sample(self, c: Choice) -> None:
        try:
            token = c.sampler.sample(self.ctx, c.out_idx)
        except EngineError as exc:
            self._fail(c.req, str(exc))
            return
        req = c.req
        if self.model.is_eog(token) and not req.sampling.ignore_eos:
            self._finish(c, "stop")
            return
        if req.logprobs is not None:
            entry = self._logprob_entry(c.out_idx, token, req.logprobs)
        c.count += 1
        self.stats["predicted_tokens"] += 1
        start = len(c.text)
        c.text += c.decoder.decode(self.model.piece(token, req.special))
        if req.logprobs is not None:
            c.lp_pending.append((start, len(c.text), entry))
        hold = max((len(s) for s in req.stop), default=0)
        cut = _find_stop(c.text, req.stop, max(0, c.sent - hold))
        if cut is not None:
            c.text = c.text[:cut]
            self._finish(c, "stop")
            return
        self._emit(c, len(c.text) - _partial_stop_len(c.text, req.stop))
        if c.count >= req.max_tokens or len(c.seq.kv) + 1 >= self.n_ctx_seq:
            self._finish(c, "length")
            return
        c.next_token = token

    def _logprob_entry(self, idx: int, token: int, top: int) -> dict:
        """The sampled token's log-probability and the ``top`` most likely, from
        the model's distribution before sampling (as OpenAI reports them)."""
        logits = np.ctypeslib.as_array(ll.llama_get_logits_ith(self.ctx, idx), shape=(self.model.n_vocab,))
        m = float(logits.max())
        lse = m + math.log(float(np.exp(logits - m).sum()))
        piece = self.model.piece
        entry = {"token": piece(token).decode("utf-8", "replace"), "bytes": list(piece(token)),
                 "logprob": float(logits[token]) - lse, "top_logprobs": []}
        if top > 0:
            ids = np.argpartition(-logits, top)[:top]
            for t in ids[np.argsort(-logits[ids])]:
                t = int(t)
                entry["top_logprobs"].append({"token": piece(t).decode("utf-8", "replace"),
                                              "bytes": list(piece(t)), "logprob": float(logits[t]) - lse})
        return entry

    def _emit(self, c: Choice, upto: int) -> None:
        """Send the text up to ``upto`` (past it may be a stop string) with the
        logprobs of the tokens it completes."""
        entries = None
        if c.req.logprobs is not None:
            entries = [e for _, end, e in c.lp_pending if end <= upto]
            c.lp_pending = [x for x in c.lp_pending if x[1] > upto]
        if upto <= c.sent and not entries:
            return
        self.events.text(c.req.id, c.index, c.text[c.sent:upto], c.count, entries)
        c.sent = max(c.sent, upto)

    def _finish(self, c: Choice, reason: str) -> None:
        c.finish = reason
        if reason == "length":
            c.text += c.decoder.decode(b"", final=True)
        # Tokens that begin before a stop string keep their logprobs; the rest go.
        c.lp_pending = [(s, min(e, len(c.text)), x) for s, e, x in c.lp_pending if s < len(c.text)]
        self._emit(c, len(c.text))
        self.events.choice_done(c.req.id, c.index, reason, c.count)
        self._free(c)
        if not any(x.req is c.req for x in self.choices):
            self.events.done(c.req.id, len(c.req.prompt), c.req.cached)

    def _free(self, c: Choice) -> None:
        """The sequence is free at once; its KV stays for prefix reuse."""
        if c in self.choices:
            self.choices.remove(c)
        c.sampler.close()
        if c.seq.choice is c:
            c.seq.choice = None
        if c.pending or c.waits_for is not None:
            # A prompt cut short, or never copied: the KV no longer matches ``kv``.
            ll.llama_memory_seq_rm(self.mem, c.seq.id, -1, -1)
            c.seq.kv.clear()

    def _fail(self, req: Request, message: str) -> None:
        for c in [c for c in self.choices if c.req is req]:
            c.finish = "error"
            c.pending = c.pending or [-1]  # what the KV holds is no longer known: clear it
            self._free(c)
        self.events.error(req.id, message)


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


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


