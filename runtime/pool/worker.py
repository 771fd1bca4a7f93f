"""The worker process: llama.cpp behind a small HTTP API on loopback.

Started by ``ModelPool`` as ``python -m runtime.pool.worker``; prints one JSON
line ``{"event": "ready", ...}`` on stdout when the model is loaded. Speaks
the worker protocol, not the OpenAI API (the gateway owns that):

- ``POST /generate`` ``{prompt_tokens, max_tokens, stop, temperature, ...}`` →
  NDJSON lines ``{"text", "tokens"}`` then ``{"done": true, "finish_reason",
  "prompt_tokens", "completion_tokens", "cached_tokens"}``.
- ``POST /embed`` ``{"input": [str, ...]}`` → ``{"data": [[float]], "tokens": [int]}``.
- ``GET /health``.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict

T0 = time.monotonic()

from aiohttp import web  # noqa: E402

from runtime.pool.engine import Cancelled, Embedder, GenerateParams, Slot, load_llama  # noqa: E402

SLOTS = web.AppKey("slots", asyncio.Queue)
EMBEDDER = web.AppKey("embedder", Embedder)
EXECUTOR = web.AppKey("executor", ThreadPoolExecutor)


async def generate(request: web.Request) -> web.StreamResponse:
    body = await request.json()
    params = GenerateParams(**body)
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()
    cancelled = threading.Event()
    slots = request.app[SLOTS]
    slot: Slot = await slots.get()

    def emit(text: str, tokens: int) -> None:
        if text:
            loop.call_soon_threadsafe(queue.put_nowait, {"text": text, "tokens": tokens})

    def run() -> None:
        try:
            result = slot.generate(params, emit, cancelled)
            item = {"done": True, **asdict(result)}
        except Cancelled:
            item = {"done": True, "cancelled": True}
        except Exception as exc:  # reported in-band; the worker keeps serving
            item = {"done": True, "error": f"{type(exc).__name__}: {exc}"}
        loop.call_soon_threadsafe(queue.put_nowait, item)

    future = loop.run_in_executor(request.app[EXECUTOR], run)
    resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
    try:
        await resp.prepare(request)
        while True:
            item = await queue.get()
            await resp.write(json.dumps(item).encode() + b"\n")
            if item.get("done"):
                break
        await resp.write_eof()
    finally:
        cancelled.set()  # the caller went away: stop generating
        await asyncio.shield(future)
        slots.put_nowait(slot)
    return resp


async def embed(request: web.Request) -> web.Response:
    body = await request.json()
    texts = body["input"]
    loop = asyncio.get_running_loop()
    vectors, counts = await loop.run_in_executor(request.app[EXECUTOR],
                                                 request.app[EMBEDDER].embed, texts)
    return web.json_response({"data": vectors, "tokens": counts})


async def health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok", "pid": os.getpid(),
                              "free_slots": request.app[SLOTS].qsize()})


def build_app(args: argparse.Namespace) -> tuple[web.Application, float]:
    t = time.monotonic()
    opts = dict(n_ctx=args.n_ctx, n_gpu_layers=args.n_gpu_layers, n_threads=args.n_threads,
                n_batch=args.n_batch)
    slots: asyncio.Queue = asyncio.Queue()
    for _ in range(args.slots):
        slots.put_nowait(Slot(load_llama(args.model, **opts)))
    load_s = time.monotonic() - t
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app[SLOTS] = slots
    app[EMBEDDER] = Embedder(lambda: load_llama(args.model, embedding=True, **opts))
    app[EXECUTOR] = ThreadPoolExecutor(max_workers=args.slots + 1, thread_name_prefix="llama")
    app.router.add_post("/generate", generate)
    app.router.add_post("/embed", embed)
    app.router.add_get("/health", health)
    return app, load_s


async def serve(args: argparse.Namespace) -> None:
    import_s = time.monotonic() - T0
    app, load_s = build_app(args)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, args.host, args.port)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    print(json.dumps({"event": "ready", "port": port, "pid": os.getpid(),
                      "import_s": round(import_s, 4), "load_s": round(load_s, 4)}), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # The pool holds our stdin; when the gateway dies, EOF tells us to exit too.
    loop.add_reader(sys.stdin.fileno(), lambda: sys.stdin.buffer.read1() or stop.set())
    await stop.wait()
    await runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="llmfn-worker")
    p.add_argument("--model", required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--slots", type=int, default=1)
    p.add_argument("--n-ctx", type=int, default=4096)
    p.add_argument("--n-gpu-layers", type=int, default=0)
    p.add_argument("--n-threads", type=int, default=None)
    p.add_argument("--n-batch", type=int, default=512)
    args = p.parse_args(argv)
    try:
        asyncio.run(serve(args))
    except Exception as exc:
        print(json.dumps({"event": "error", "error": f"{type(exc).__name__}: {exc}"}), flush=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
