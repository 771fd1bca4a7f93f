"""llama.cpp's engine reached over HTTP with no gateway in between: one process
holds the model, the engine (the same ``runtime.pool.engine`` a worker runs)
and an aiohttp server, so a client's request reaches the engine with one HTTP
hop, as a client reaching llama-server directly does. It is the baseline
``bench/gateway_overhead.py`` measures the gateway's hop to its worker against,
beside the worker's own protocol.

``POST /generate`` takes the worker protocol's GENERATE body (prompt token ids,
``max_tokens``, ``sampling``) and answers NDJSON: ``{"text": ...}`` lines, then
``{"done": true, "prompt_tokens": ..., "cached_tokens": ...}``.

Started by the bench, one JSON line on stdin (``model``, ``n_ctx``, ``n_threads``,
``slots``); prints ``{"event": "ready", "port": N}`` once it listens."""
from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from runtime.pool import engine as eng  # noqa: E402  (imports llama.cpp)


class LoopEvents(eng.Events):
    """Engine events (from the scheduler thread) handed to each request's queue on
    the event loop, once per engine step, as the worker writes one frame batch per step."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop, self.queues, self.pending = loop, {}, []

    def text(self, req_id, index, text, tokens, logprobs):
        self.pending.append((req_id, {"text": text}))

    def choice_done(self, req_id, index, finish, tokens):
        self.pending.append((req_id, {"finish_reason": finish, "completion_tokens": tokens}))

    def done(self, req_id, prompt_tokens, cached_tokens):
        self.pending.append((req_id, {"done": True, "prompt_tokens": prompt_tokens,
                                      "cached_tokens": cached_tokens}))

    def error(self, req_id, message):
        self.pending.append((req_id, {"done": True, "error": message}))

    def flush(self):
        batch, self.pending = self.pending, []
        if batch:
            self.loop.call_soon_threadsafe(self._deliver, batch)

    def _deliver(self, batch):
        for req_id, item in batch:
            q = self.queues.get(req_id)
            if q is not None:
                q.put_nowait(item)


async def serve(cfg: dict) -> None:
    loop = asyncio.get_running_loop()
    events = LoopEvents(loop)
    model = eng.Model(cfg["model"])
    engine = eng.Engine(model, events, slots=cfg["slots"], n_ctx=cfg["n_ctx"], n_batch=512,
                        n_threads=cfg["n_threads"], kv_unified=True)
    ids = iter(range(1, 1 << 31))

    async def generate(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        req_id, q = next(ids), asyncio.Queue()
        events.queues[req_id] = q
        engine.submit(eng.Request(id=req_id, prompt=body["prompt_tokens"], max_tokens=body["max_tokens"],
                                  stop=body.get("stop") or [], sampling=eng.Sampling(**body["sampling"])))
        resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await resp.prepare(request)
        try:
            while True:
                item = await q.get()
                await resp.write(json.dumps(item).encode() + b"\n")
                if item.get("done"):
                    break
        finally:
            events.queues.pop(req_id, None)
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_post("/generate", generate)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    print(json.dumps({"event": "ready", "port": port}), flush=True)
    await loop.run_in_executor(None, sys.stdin.readline)  # until the bench closes our stdin
    engine.close()
    await runner.cleanup()


if __name__ == "__main__":
    asyncio.run(serve(json.loads(sys.stdin.readline())))
