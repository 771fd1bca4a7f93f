"""What the gateway adds to a request, against two baselines, each on its own warm
one-slot llama.cpp engine of the same model, taken in turn (never at once: all
share the same CPU cores):

- ``direct``: the worker's own protocol (a GENERATE frame with token ids on its
  Unix socket, as the gateway sends it): no HTTP at all, so the added time is
  the client's HTTP, the gateway and its hop to the worker together;
- ``http``: the same engine served over HTTP in one process
  (``bench/engine_http.py``, ``POST /generate`` with token ids, NDJSON back), as
  a client reaching an engine's server directly; the added time is the
  gateway (auth, tokenizer, quotas, ledger, metrics) and its hop to the worker.

against the gateway (``/v1/completions``, ``llmfn serve``). Prints p50/p95 of
the added latency (gateway minus baseline, paired request by request) for whole
responses, and of the added time to first token for streams, with the
gateway/baseline ratio of the medians.

    .venv/bin/python bench/gateway_overhead.py [--requests 100] [--max-tokens 8]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import math
import secrets
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from _common import (
    EMBEDDED,
    PROMPT,
    Gateway,
    bars,
    completion_body,
    default_cache_dir,
    embedded_model,
    figures_line,
    keepalive_session,
    log,
    percentile,
    ratio,
    stream_completion,
    worker_payload,
)

from runtime.pool.client import Text, WorkerClient
from runtime.pool.local import worker_env
from runtime.pool.tokenizer import ModelTokenizer


@dataclass
class Timing:
    ttft_s: float
    total_s: float
    text: str


class HttpEngine:
    """``bench/engine_http.py`` in its own process: the engine behind one HTTP hop."""

    def __init__(self, model: Path, n_ctx: int, n_threads: int):
        self.cfg = {"model": str(model), "slots": 1, "n_ctx": n_ctx, "n_threads": n_threads}
        self.url = ""

    async def __aenter__(self) -> HttpEngine:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, str(Path(__file__).with_name("engine_http.py")), stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL, env=worker_env())
        self.proc.stdin.write(json.dumps(self.cfg).encode() + b"\n")
        ready = json.loads(await asyncio.wait_for(self.proc.stdout.readline(), 120) or b"{}")
        if ready.get("event") != "ready":
            raise RuntimeError(f"the HTTP engine failed to start: {ready}")
        self.url = f"http://127.0.0.1:{ready['port']}"
        return self

    async def __aexit__(self, *exc) -> None:
        self.proc.stdin.close()
        await asyncio.wait_for(self.proc.wait(), 30)


class DirectWorker:
    """One worker process started by hand and spoken to over the worker protocol,
    as the pool does (same handoff, same socket, same client)."""

    def __init__(self, model: Path, n_ctx: int, n_threads: int):
        self.cfg = {"model": str(model), "slots": 1, "n_ctx": n_ctx, "n_threads": n_threads,
                    "n_gpu_layers": 0, "n_batch": 512, "secret": secrets.token_urlsafe(16)}
        self.tmp = tempfile.mkdtemp(prefix="llmfn-bench-")
        self.client: WorkerClient | None = None

    async def __aenter__(self) -> DirectWorker:
        self.cfg["socket"] = str(Path(self.tmp) / "w.sock")
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "runtime.pool.worker", stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL, env=worker_env())
        self.proc.stdin.write(json.dumps(self.cfg).encode() + b"\n")
        await self.proc.stdout.readline()  # {"event": "spare"}: imported, now loading
        ready = json.loads(await asyncio.wait_for(self.proc.stdout.readline(), 120) or b"{}")
        if ready.get("event") != "ready":
            raise RuntimeError(f"worker failed to start: {ready}")
        self.client = await WorkerClient.connect(self.cfg["socket"], self.cfg["secret"])
        return self

    async def __aexit__(self, *exc) -> None:
        await self.client.close()
        self.proc.stdin.close()  # the worker exits when its stdin closes
        await asyncio.wait_for(self.proc.wait(), 30)
        shutil.rmtree(self.tmp, ignore_errors=True)


async def direct(client: WorkerClient, payload: dict) -> Timing:
    t0 = time.perf_counter()
    ttft, parts = math.nan, []
    async for ev in client.generate(payload):
        if isinstance(ev, Text) and ev.text:
            ttft = ttft if parts else time.perf_counter() - t0
            parts.append(ev.text)
    return Timing(ttft, time.perf_counter() - t0, "".join(parts))


async def via_http(http: aiohttp.ClientSession, url: str, payload: dict) -> Timing:
    """One NDJSON generation from the HTTP engine: time to the first text, and to the end."""
    t0 = time.perf_counter()
    ttft, parts = math.nan, []
    async with http.post(f"{url}/generate", json=payload) as resp:
        resp.raise_for_status()
        async for line in resp.content:
            item = json.loads(line)
            if item.get("text"):
                ttft = ttft if parts else time.perf_counter() - t0
                parts.append(item["text"])
            if item.get("done"):
                break
    return Timing(ttft, time.perf_counter() - t0, "".join(parts))


async def via_gateway_whole(http: aiohttp.ClientSession, url: str, body: dict) -> Timing:
    t0 = time.perf_counter()
    async with http.post(f"{url}/v1/completions", json=body) as resp:
        data = await resp.json()
        if resp.status != 200:
            raise RuntimeError(f"HTTP {resp.status}: {data}")
    return Timing(math.nan, time.perf_counter() - t0, data["choices"][0]["text"])


async def via_gateway_stream(http: aiohttp.ClientSession, url: str, body: dict) -> Timing:
    s = await stream_completion(http, url, body)
    return Timing(s.ttft_s, s.total_s, s.text)


async def rounds(n: int, runs: list) -> list[tuple[Timing, ...]]:
    """n rounds, one request of each run per round; who goes first rotates, so
    drift and the wake-up of an idle engine hit every side alike."""
    out = []
    for i in range(n):
        k = i % len(runs)
        order = list(range(len(runs)))[k:] + list(range(len(runs)))[:k]
        timings: list[Timing | None] = [None] * len(runs)
        for j in order:
            timings[j] = await runs[j]()
        out.append(tuple(timings))
    return out


def summary(prefix: str, base_s: list[float], gateway_s: list[float], base: str = "direct") -> dict[str, float]:
    added = [(g - d) * 1000 for d, g in zip(base_s, gateway_s)]
    d50, g50 = percentile(base_s, 50) * 1000, percentile(gateway_s, 50) * 1000
    tag = "" if base == "direct" else f"_vs_{base}"
    out = {f"{prefix}_{base}_p50_ms": d50}
    if base == "direct":
        out[f"{prefix}_gateway_p50_ms"] = g50
    return {**out, f"{prefix}_added{tag}_p50_ms": percentile(added, 50),
            f"{prefix}_added{tag}_p95_ms": percentile(added, 95),
            f"{prefix}_ratio{tag}": ratio(g50, d50)}


def check_same_output(triples: list[tuple[Timing, ...]], label: str) -> None:
    """Temperature 0 on the same model: every side should say the same thing."""
    differ = sum(len({t.text for t in triple}) > 1 for triple in triples)
    if differ:
        log(f"warning: {label}: {differ}/{len(triples)} rounds generated different text")


async def run(args: argparse.Namespace) -> dict:
    model = await embedded_model(args.cache_dir)
    tokens = ModelTokenizer(str(model)).encode(PROMPT, add_bos=True, special=True)
    payload = worker_payload(tokens, args.max_tokens)
    body = completion_body(EMBEDDED, args.max_tokens)
    pool = dict(min_workers=1, max_workers=1, slots=1, n_ctx=args.n_ctx, n_threads=args.n_threads,
                idle_timeout=3600)
    log(f"starting a worker, an HTTP engine and a gateway on {model.name} ({len(tokens)} prompt tokens)")
    async with DirectWorker(model, args.n_ctx, args.n_threads) as worker, \
            HttpEngine(model, args.n_ctx, args.n_threads) as engine, \
            Gateway([f"{EMBEDDED}=embedded"], args.cache_dir, pool=pool) as gw, \
            keepalive_session() as http:
        await gw.wait_pool(http, EMBEDDED, state="warm", warm=1)
        base = [lambda: direct(worker.client, payload), lambda: via_http(http, engine.url, payload)]
        whole = [*base, lambda: via_gateway_whole(http, gw.url, body)]
        stream = [*base, lambda: via_gateway_stream(http, gw.url, body)]
        log(f"warming up ({args.warmup} rounds each)")
        await rounds(args.warmup, whole)
        await rounds(args.warmup, stream)
        log(f"whole responses: {args.requests} rounds, max_tokens={args.max_tokens}")
        whole_runs = await rounds(args.requests, whole)
        log(f"streams: {args.requests} rounds, time to first token")
        stream_runs = await rounds(args.requests, stream)
    check_same_output(whole_runs, "whole")
    check_same_output(stream_runs, "stream")
    figures: dict = {"n": args.requests, "max_tokens": args.max_tokens, "prompt_tokens": len(tokens)}
    for prefix, runs, of in (("whole", whole_runs, lambda t: t.total_s), ("ttft", stream_runs, lambda t: t.ttft_s)):
        gateway = [of(r[2]) for r in runs]
        figures.update(summary(prefix, [of(r[0]) for r in runs], gateway))
        figures.update(summary(prefix, [of(r[1]) for r in runs], gateway, base="http"))
    return figures


def chart(f: dict) -> str:
    return bars([("whole  direct", f["whole_direct_p50_ms"]), ("whole  http", f["whole_http_p50_ms"]),
                 ("whole  gateway", f["whole_gateway_p50_ms"]),
                 ("ttft   direct", f["ttft_direct_p50_ms"]), ("ttft   http", f["ttft_http_p50_ms"]),
                 ("ttft   gateway", f["ttft_gateway_p50_ms"])],
                unit="ms (p50)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=100, help="rounds per mode (whole, stream)")
    p.add_argument("--warmup", type=int, default=3, help="rounds per mode not counted")
    p.add_argument("--max-tokens", type=int, default=8)
    p.add_argument("--n-ctx", type=int, default=512)
    p.add_argument("--n-threads", type=int, default=2, help="llama.cpp threads of each worker")
    p.add_argument("--cache-dir", type=Path, default=default_cache_dir())
    args = p.parse_args()
    figures = asyncio.run(run(args))
    print(chart(figures), file=sys.stderr)
    print(figures_line("gateway_overhead", figures), flush=True)


if __name__ == "__main__":
    main()
