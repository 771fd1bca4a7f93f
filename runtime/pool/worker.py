"""The worker process: one llama.cpp model and its engine behind the worker
protocol (``protocol``) on a private Unix socket.

Started by ``ModelPool`` as ``python -m runtime.pool.worker`` ahead of need:
the interpreter imports llama.cpp and then waits, as a spare, for one JSON
line on stdin that hands it a model (path, pool settings, socket path and the
secret the gateway will authenticate with; never on the command line). It
then loads the model once, listens, and prints one JSON line
``{"event": "ready", ...}`` on stdout. EOF on stdin (the gateway is gone) or
SIGTERM ends it."""
from __future__ import annotations

import time

T0 = time.monotonic()

import hmac  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
from concurrent.futures import ThreadPoolExecutor  # noqa: E402

from runtime.pool import engine as eng  # noqa: E402  (imports llama.cpp)
from runtime.pool.protocol import HEADER, MAX_PAYLOAD, Kind, json_frame, text_frame  # noqa: E402

IMPORT_S = time.monotonic() - T0


class Connection(eng.Events):
    """The gateway's connection: frames in, engine events out."""

    def __init__(self, sock: socket.socket, worker: Worker):
        self.sock, self.worker = sock, worker
        self._lock = threading.Lock()
        self._pending: list[bytes] = []  # engine events of the current step
        self.open: set[int] = set()

    def send(self, data: bytes) -> None:
        with self._lock:
            try:
                self.sock.sendall(data)
            except OSError:
                pass  # the reader sees the broken connection and cancels

    def queue(self, data: bytes) -> None:
        """Engine events wait for the end of their step: one write (and one wake-up
        of the gateway) per step, not one per token."""
        with self._lock:
            self._pending.append(data)

    def flush(self) -> None:
        with self._lock:
            data, self._pending = b"".join(self._pending), []
        if data:
            self.send(data)

    # engine events
    def text(self, req_id, index, text, tokens, logprobs):
        if logprobs is None:
            self.queue(text_frame(req_id, index, tokens, text))
        else:
            self.queue(json_frame(Kind.TEXT_LOGPROBS, req_id,
                                 {"i": index, "n": tokens, "text": text, "logprobs": logprobs}))

    def choice_done(self, req_id, index, finish, tokens):
        self.queue(json_frame(Kind.CHOICE_DONE, req_id,
                             {"i": index, "finish_reason": finish, "completion_tokens": tokens}))

    def done(self, req_id, prompt_tokens, cached_tokens):
        self.open.discard(req_id)
        self.queue(json_frame(Kind.DONE, req_id, {"prompt_tokens": prompt_tokens,
                                                 "cached_tokens": cached_tokens}))

    def error(self, req_id, message):
        self.open.discard(req_id)
        self.queue(json_frame(Kind.ERROR, req_id, {"message": message}))

    # frames in
    def serve(self) -> None:
        self.worker.live.add(self)
        try:
            kind, _, payload = self._read()
            if kind != Kind.AUTH or not hmac.compare_digest(payload, self.worker.secret):
                return
            self.sock.settimeout(None)  # a TCP listener bounds the wait for AUTH alone
            while True:
                kind, req_id, payload = self._read()
                self.worker.handle(self, kind, req_id, payload)
        except (ConnectionError, OSError, EOFError):
            pass
        finally:
            self.worker.live.discard(self)
            for req_id in list(self.open):
                self.worker.forget(self, req_id)
            self.sock.close()

    def _read(self) -> tuple[int, int, bytes]:
        length, req_id, kind = HEADER.unpack(self._exactly(HEADER.size))
        if length > MAX_PAYLOAD:
            raise EOFError("frame too large")
        return kind, req_id, self._exactly(length)

    def _exactly(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise EOFError()
            buf += chunk
        return bytes(buf)


ENGINE_KEYS = ("slots", "n_ctx", "n_batch", "n_threads", "kv_unified")


def _setting(cfg: dict, key: str):
    """A pool setting of ``cfg``; the pool's always carries every key, and the
    template's default (imported only then) fills a cfg written by hand."""
    if key in cfg:
        return cfg[key]
    from runtime.template.model_spec import PoolConfig

    return getattr(PoolConfig(), key)


class Prepared:
    """What a spare made while it waited: the model's weights, and for a generative
    model its engine (context and KV cache), whose events go to the worker it becomes."""

    def __init__(self, spec: dict):
        self.spec = spec
        self.model = eng.Model(spec["model"])
        self.events = _Fanout(None)
        self.engine = _new_engine(self.model, self.events, spec) if _generative(self.model) else None

    def fits(self, cfg: dict) -> bool:
        return (self.spec["model"] == cfg["model"] and not _setting(cfg, "n_gpu_layers")
                and all(self.spec.get(k) == cfg.get(k) for k in ENGINE_KEYS))

    def close(self) -> None:
        if self.engine:
            self.engine.close()
        self.model.close()


def _pooling(model: eng.Model) -> str | None:
    arch = model.meta("general.architecture") or "llama"
    return model.meta(f"{arch}.pooling_type")


def _generative(model: eng.Model) -> bool:
    return _pooling(model) in (None, "", "0")


def _new_engine(model: eng.Model, events: eng.Events, cfg: dict) -> eng.Engine:
    return eng.Engine(model, events, slots=cfg["slots"], n_ctx=cfg["n_ctx"],
                      n_batch=_setting(cfg, "n_batch"), n_threads=cfg.get("n_threads"),
                      kv_unified=_setting(cfg, "kv_unified"))


class Worker:
    def __init__(self, cfg: dict, prepared: Prepared | None = None):
        self.cfg = cfg
        self.secret = cfg["secret"].encode()
        t = time.monotonic()
        if prepared is not None and not prepared.fits(cfg):
            prepared.close()
            prepared = None
        gpu_layers = _setting(cfg, "n_gpu_layers")
        self.model = prepared.model if prepared else eng.Model(cfg["model"], n_gpu_layers=gpu_layers)
        self.conns: dict[int, Connection] = {}  # request id -> its connection
        self.live: set[Connection] = set()
        self.pooling = _pooling(self.model)
        self.engine: eng.Engine | None = None
        self.prepared = prepared is not None
        if prepared and prepared.engine:
            self.engine, prepared.events.worker = prepared.engine, self
        elif _generative(self.model):
            self.engine = _new_engine(self.model, _Fanout(self), cfg)
        self.load_s = time.monotonic() - t
        self._embedder = None
        self._embed_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="embed")

    def handle(self, conn: Connection, kind: int, req_id: int, payload: bytes) -> None:
        try:
            if kind == Kind.GENERATE:
                self._generate(conn, req_id, json.loads(payload))
            elif kind == Kind.CANCEL:
                self.forget(conn, req_id)
            elif kind in (Kind.EMBED, Kind.RANK):
                self._embed_pool.submit(self._embed, conn, kind, req_id, json.loads(payload))
            elif kind == Kind.STATS:
                conn.send(json_frame(Kind.RESULT, req_id, self.stats()))
            else:
                conn.send(json_frame(Kind.ERROR, req_id, {"message": f"unknown frame kind {kind}"}))
        except (ValueError, KeyError, TypeError) as exc:
            conn.send(json_frame(Kind.ERROR, req_id, {"message": f"bad request: {exc}"}))

    def forget(self, conn: Connection, req_id: int) -> None:
        """A cancelled request: the engine drops it and sends nothing more for it."""
        if self.engine:
            self.engine.cancel(req_id)
        conn.open.discard(req_id)
        self.conns.pop(req_id, None)

    def _generate(self, conn: Connection, req_id: int, body: dict) -> None:
        if self.engine is None:
            conn.send(json_frame(Kind.ERROR, req_id, {"message": "this model does not generate text"}))
            return
        s = body.get("sampling", {})
        bias = {int(k): float(v) for k, v in (s.pop("logit_bias", None) or {}).items()}
        req = eng.Request(id=req_id, prompt=[int(t) for t in body["prompt_tokens"]],
                          max_tokens=int(body["max_tokens"]), stop=list(body.get("stop") or []),
                          n=int(body.get("n", 1)), logprobs=body.get("logprobs"),
                          special=bool(body.get("special", False)),
                          sampling=eng.Sampling(**s, logit_bias=bias))
        bad = [t for t in req.prompt if not 0 <= t < self.model.n_vocab]
        if bad or not req.prompt:
            conn.send(json_frame(Kind.ERROR, req_id, {"message": f"token id {bad[0]} is out of range"
                                                      if bad else "empty prompt"}))
            return
        self.conns[req_id] = conn
        conn.open.add(req_id)
        self.engine.submit(req)

    def _embed(self, conn: Connection, kind: int, req_id: int, body: dict) -> None:
        try:
            embedder = self.embedder()
            if kind == Kind.EMBED:
                vectors, counts = embedder.embed(list(body["input"]))
                result = {"data": vectors, "tokens": counts}
            else:
                scores, tokens = embedder.rank(body["query"], list(body["documents"]))
                result = {"scores": scores, "tokens": tokens}
            conn.send(json_frame(Kind.RESULT, req_id, result))
        except Exception as exc:  # reported in-band; the worker keeps serving
            conn.send(json_frame(Kind.ERROR, req_id, {"message": f"{type(exc).__name__}: {exc}"}))

    def embedder(self):
        if self._embedder is None:
            from runtime.pool.embedding_engine import Embedder
            self._embedder = Embedder(self.model.ptr, n_ctx=self.cfg["n_ctx"],
                                      n_batch=max(_setting(self.cfg, "n_batch"), self.cfg["n_ctx"]),
                                      n_threads=self.cfg.get("n_threads"))
        return self._embedder

    def stats(self) -> dict:
        e = self.engine
        if e is None:
            return {"processing": 0, "waiting": 0, "kv_cache_usage_ratio": 0.0}
        return {"processing": e.processing, "waiting": len(e.waiting),
                "kv_cache_usage_ratio": round(e.kv_usage(), 4), **e.stats}


class _Fanout(eng.Events):
    """Routes engine events to the connection that made the request."""

    def __init__(self, worker: Worker | None):
        self.worker = worker  # set when a spare's prepared engine becomes a worker's

    def _conn(self, req_id: int, last: bool = False) -> Connection | None:
        if self.worker is None:
            return None
        conns = self.worker.conns
        return conns.pop(req_id, None) if last else conns.get(req_id)

    def text(self, req_id, *args):
        if c := self._conn(req_id):
            c.text(req_id, *args)

    def choice_done(self, req_id, *args):
        if c := self._conn(req_id):
            c.choice_done(req_id, *args)

    def done(self, req_id, *args):
        if c := self._conn(req_id, last=True):
            c.done(req_id, *args)

    def error(self, req_id, message):
        if c := self._conn(req_id, last=True):
            c.error(req_id, message)

    def flush(self):
        for c in set(self.worker.live if self.worker else ()):
            c.flush()


def _listen(path: str) -> socket.socket:
    if os.path.exists(path):
        os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)  # the socket is the gateway's alone
    try:
        sock.bind(path)
    finally:
        os.umask(old)
    sock.listen(4)
    return sock


def _exit_on_stdin_eof() -> None:
    """The pool holds our stdin; when the gateway dies, EOF tells us to exit too."""
    while sys.stdin.buffer.read1(4096):
        pass
    os._exit(0)


def main() -> None:
    print(json.dumps({"event": "spare", "import_s": round(IMPORT_S, 4)}), flush=True)
    line = sys.stdin.readline()  # a spare waits here until the pool hands it a model
    if not line:
        return
    cfg = json.loads(line)
    prepared = None
    if "preload" in cfg:  # a CPU pool's spare maps the weights and creates its context while it waits
        try:
            prepared = Prepared(cfg["preload"])
        except Exception:
            prepared = None  # loaded again, and reported, when the model is handed over
        print(json.dumps({"event": "preloaded", "ok": prepared is not None}), flush=True)
        line = sys.stdin.readline()
        if not line:
            return
        cfg = json.loads(line)
    t = time.monotonic()
    try:
        worker = Worker(cfg, prepared)
        sock = _listen(cfg["socket"])
    except Exception as exc:
        print(json.dumps({"event": "error", "error": f"{type(exc).__name__}: {exc}"}), flush=True)
        sys.exit(1)
    print(json.dumps({"event": "ready", "pid": os.getpid(), "import_s": round(IMPORT_S, 4),
                      "load_s": round(worker.load_s, 4), "listen_s": round(time.monotonic() - t, 4),
                      "slots": cfg["slots"], "pooling": worker.pooling,
                      "prepared": worker.prepared}), flush=True)
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    threading.Thread(target=_exit_on_stdin_eof, name="stdin", daemon=True).start()
    while True:
        conn, _ = sock.accept()
        threading.Thread(target=Connection(conn, worker).serve, name="conn", daemon=True).start()


if __name__ == "__main__":
    main()
