"""Beyond one machine: what running a pool's workers on a Ray cluster costs,
on a local cluster of a head and two simulated nodes (``ray.cluster_utils``).

Ray section, against the local backend measured in the same run:

- **added latency per token**: the same prompt streamed, alternately, from a
  warm one-slot worker of the same model three ways: a local worker process
  (its Unix socket: the baseline), a Ray actor on its node's TCP port (the
  product's path), and the same kind of actor through a Ray streaming
  generator call (each engine step one object). Per channel: the median gap
  between tokens after the first and its ratio to the local one, the median
  time to the first token, and the CPU time the receiving (gateway's) process
  spends per token, Ray's own threads in it included.
- **tokens/s** of one pool of two workers with both actors on one node vs one
  on each node, with four clients streaming back to back (on a 2-core machine
  expect no speed-up: the nodes share the cores).

Both are measured at the pool (a lease and its token stream), not over HTTP,
so the figures are the channel's and nothing else's.

Ledger section: the shared ledger's write rate, admitted + completed calls per
second on PostgreSQL vs SQLite (``ledger_rate.py``, whose figures it prefixes
with ``ledger_``).

    .venv/bin/python bench/scale_out.py [--requests 20] [--max-tokens 48] [--seconds 10] [--sections ray,ledger]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import ledger_rate
import ray
from _common import (
    EMBEDDED,
    PROMPTS,
    bars,
    default_cache_dir,
    embedded_model,
    figures_line,
    log,
    ratio,
    worker_payload,
)
from ray.cluster_utils import Cluster

from runtime.pool import ModelPool, ModelStore
from runtime.pool.client import Text
from runtime.pool.local import engine_spec
from runtime.pool.protocol import HEADER, TEXT_HEAD, Kind
from runtime.pool.ray_backend import NAMESPACE, RayBackend
from runtime.pool.ray_worker import WorkerActor
from runtime.pool.tokenizer import ModelTokenizer
from runtime.template.model_spec import ModelConfig, PoolConfig

STREAM_IDS = 1 << 30  # request ids of the streaming channel, apart from any connection's


# ---- the channel the product does not use: Ray streaming generator calls ----------------

class StreamingWorker(WorkerActor):
    """The product's worker actor plus a ``stream`` method: the engine's frames of
    one generation as a Ray streaming generator, one object per engine step."""

    def stream(self, req_id: int, body: dict):
        # pickled by value into the actor: everything it uses is imported or defined here
        import queue

        from runtime.pool import worker as w
        from runtime.pool.protocol import HEADER, Kind

        def last(data: bytes) -> bool:
            at = 0
            while at < len(data):
                length, _, kind = HEADER.unpack_from(data, at)
                if kind in (Kind.DONE, Kind.ERROR):
                    return True
                at += HEADER.size + length
            return False

        steps: queue.Queue[bytes] = queue.Queue()

        class Steps(w.Connection):  # the engine's frames, a step at a time, into the queue
            def send(self, data: bytes) -> None:
                steps.put(data)

        conn = Steps(None, self._worker)
        self._worker.live.add(conn)
        try:
            self._worker.handle(conn, Kind.GENERATE, req_id, json.dumps(body).encode())
            while True:
                data = steps.get()
                yield data
                if last(data):
                    return
        finally:
            self._worker.live.discard(conn)


def _frames(data: bytes):
    at = 0
    while at < len(data):
        length, _, kind = HEADER.unpack_from(data, at)
        yield kind, data[at + HEADER.size: at + HEADER.size + length]
        at += HEADER.size + length


# ---- one stream, timed token by token ------------------------------------------------------

@dataclass
class Stream:
    """One stream as the receiving side saw it."""
    ttft_s: float  # request sent -> first token
    gap_s: float  # mean time between tokens after the first
    tokens: int
    cpu_s: float  # CPU time this process (the gateway's side) spent on it, all its threads


def timed(t0: float, cpu0: float, times: list[tuple[float, int]]) -> Stream:
    (first, n0), (last, n1) = times[0], times[-1]
    return Stream(first - t0, (last - first) / max(1, n1 - n0), n1, time.process_time() - cpu0)


async def via_pool(pool: ModelPool, body: dict) -> Stream:
    t0, cpu0, times = time.perf_counter(), time.process_time(), []
    async with pool.lease() as lease:
        async for ev in lease.generate(body):
            if isinstance(ev, Text):
                times.append((time.perf_counter(), ev.tokens))
    return timed(t0, cpu0, times)


async def via_ray_stream(actor, req_id: int, body: dict) -> Stream:
    t0, cpu0, times = time.perf_counter(), time.process_time(), []
    async for ref in actor.stream.options(num_returns="streaming").remote(req_id, body):
        data = await ref
        now = time.perf_counter()
        for kind, payload in _frames(data):
            if kind == Kind.TEXT:
                times.append((now, TEXT_HEAD.unpack_from(payload)[1]))
            elif kind == Kind.ERROR:
                raise RuntimeError(payload.decode())
    return timed(t0, cpu0, times)


# ---- the cluster and the pools ------------------------------------------------------------

def start_cluster() -> Cluster:
    """A head that runs nothing; node_a and node_b, each with one 'spread' resource, so a
    pool asking for 'spread' gets one worker per node and one asking for node_a both on one."""
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    for name in ("node_a", "node_b"):
        cluster.add_node(num_cpus=4, resources={name: 4, "spread": 1})
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, namespace=NAMESPACE, log_to_driver=False)
    return cluster


def pool_config(name: str, args: argparse.Namespace, **pool) -> ModelConfig:
    return ModelConfig(name=name, source="embedded", pool=PoolConfig(
        n_ctx=args.n_ctx, n_threads=args.n_threads, slots=1, idle_timeout=3600, **pool))


async def warm(pool: ModelPool, workers: int = 1) -> ModelPool:
    await pool.start()
    await pool.ensure_tokenizer()
    while pool.status()["workers"]["warm"] < workers:
        if pool.last_cold_start is None and not pool.workers:
            raise RuntimeError(f"pool {pool.name}: its workers failed to start")
        await asyncio.sleep(0.1)
    return pool


async def streaming_actor(store: ModelStore, args: argparse.Namespace):
    p = pool_config("stream", args).pool
    actor = ray.remote(max_concurrency=4)(StreamingWorker).options(resources={"node_a": 1}).remote()
    cfg = {**engine_spec("", p), "n_gpu_layers": 0, "secret": secrets.token_urlsafe(32), "name": EMBEDDED,
           "source": "embedded", "sha256": None, "cache_dir": str(store.cache_dir), "s3_endpoint_url": None}
    ready = await actor.start.remote(cfg)
    if ready.get("event") != "ready":
        raise RuntimeError(f"streaming actor: {ready.get('error')}")
    return actor


# ---- the Ray section -----------------------------------------------------------------------

async def per_token(store: ModelStore, body: dict, args: argparse.Namespace) -> dict[str, list[Stream]]:
    backend = RayBackend(None, store)
    await backend.start()
    local = await warm(ModelPool(pool_config("local", args), store))
    tcp = await warm(ModelPool(pool_config("ray-tcp", args, backend="ray", resources={"node_a": 1}),
                               store, backend=backend))
    actor = await streaming_actor(store, args)
    ids = iter(range(STREAM_IDS, STREAM_IDS + 10 * args.requests))
    channels: dict[str, Callable[[], Awaitable[Stream]]] = {
        "local": lambda: via_pool(local, body), "ray_tcp": lambda: via_pool(tcp, body),
        "ray_stream": lambda: via_ray_stream(actor, next(ids), body)}
    streams: dict[str, list[Stream]] = {name: [] for name in channels}
    try:
        for i in range(args.warmup + args.requests):
            names = list(channels)
            for name in names[i % 3:] + names[:i % 3]:  # which goes first rotates: drift hits all alike
                stream = await channels[name]()
                if i >= args.warmup:
                    streams[name].append(stream)
    finally:
        ray.kill(actor)
        await asyncio.gather(local.close(), tcp.close())
    return streams


async def tokens_per_s(pool: ModelPool, body: dict, args: argparse.Namespace) -> float:
    tokens, deadline = 0, time.perf_counter() + args.seconds

    async def client(i: int) -> None:
        nonlocal tokens
        while time.perf_counter() < deadline:
            async with pool.lease() as lease:
                async for ev in lease.generate({**body, "prompt_tokens": body["prompts"][i % 4]}):
                    if isinstance(ev, Text):
                        tokens += 1
    t0 = time.perf_counter()
    await asyncio.gather(*(client(i) for i in range(args.clients)))
    return tokens / (time.perf_counter() - t0)


async def throughput(store: ModelStore, body: dict, args: argparse.Namespace) -> dict[str, float]:
    backend = RayBackend(None, store)
    out = {}
    for label, resources in (("one_node", {"node_a": 1}), ("two_nodes", {"spread": 1})):
        pool = await warm(ModelPool(pool_config(label, args, backend="ray", resources=resources, min_workers=2,
                                                max_workers=2), store, backend=backend), workers=2)
        nodes = {w["node_id"] for w in pool.status()["placement"]}
        log(f"{label}: 2 workers on {len(nodes)} node(s), {args.clients} clients for {args.seconds:g}s")
        try:
            out[label] = await tokens_per_s(pool, body, args)
        finally:
            await pool.close()
        log(f"{label}: {out[label]:.1f} tokens/s")
    return out


async def ray_section(args: argparse.Namespace) -> dict[str, float]:
    path = await embedded_model(args.cache_dir)
    store = ModelStore(args.cache_dir, show_progress=False)
    tok = ModelTokenizer(str(path))
    prompts = [tok.encode(p, add_bos=True, special=True) for p in PROMPTS[:4]]
    body = worker_payload(prompts[0], args.max_tokens)
    log("starting a Ray cluster: a head and two nodes")
    cluster = start_cluster()
    try:
        log(f"per-token latency: {args.requests} streams of {args.max_tokens} tokens per channel")
        streams = await per_token(store, body, args)
        rates = await throughput(store, {**body, "prompts": prompts}, args)
    finally:
        ray.shutdown()
        cluster.shutdown()
    gap = {name: statistics.median(s.gap_s for s in v) * 1000 for name, v in streams.items()}
    ttft = {name: statistics.median(s.ttft_s for s in v) * 1000 for name, v in streams.items()}
    cpu = {name: sum(s.cpu_s for s in v) / sum(s.tokens for s in v) * 1e6 for name, v in streams.items()}
    print(bars([(f"{name} ms/token", v) for name, v in gap.items()], unit="ms"), file=sys.stderr)
    print(bars([(f"{name} gateway CPU/token", v) for name, v in cpu.items()], unit="us"), file=sys.stderr)
    print(bars([(label, v) for label, v in rates.items()], unit="tokens/s"), file=sys.stderr)
    return {"max_tokens": args.max_tokens, "requests": args.requests,
            **{f"token_gap_{name}_p50_ms": v for name, v in gap.items()},
            **{f"ttft_{name}_p50_ms": v for name, v in ttft.items()},
            **{f"gateway_cpu_{name}_us_per_token": v for name, v in cpu.items()},
            "ray_tcp_added_ms_per_token": gap["ray_tcp"] - gap["local"],
            "ray_stream_added_ms_per_token": gap["ray_stream"] - gap["local"],
            "ray_tcp_over_local": ratio(gap["ray_tcp"], gap["local"]),
            "ray_stream_over_local": ratio(gap["ray_stream"], gap["local"]),
            "ray_stream_over_tcp_cpu": ratio(cpu["ray_stream"], cpu["ray_tcp"]),
            "one_node_tok_s": rates["one_node"], "two_nodes_tok_s": rates["two_nodes"],
            "two_nodes_over_one": ratio(rates["two_nodes"], rates["one_node"])}


async def ledger_section(args: argparse.Namespace) -> dict[str, float]:
    """The shared ledger: admitted + completed calls per second on PostgreSQL vs SQLite."""
    figures = await ledger_rate.run(argparse.Namespace(calls=args.ledger_calls, concurrency=args.ledger_concurrency))
    return {f"ledger_{k}": v for k, v in figures.items()}


# Each section measures one part of scaling out and returns its figures; the final line
# joins them.
SECTIONS: dict[str, Callable[[argparse.Namespace], Awaitable[dict[str, float]]]] = {
    "ray": ray_section, "ledger": ledger_section}


async def run(args: argparse.Namespace) -> dict[str, float]:
    figures: dict[str, float] = {}
    for name in args.sections.split(","):
        figures.update(await SECTIONS[name](args))
    return figures


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=20, help="measured streams per channel")
    p.add_argument("--warmup", type=int, default=2, help="uncounted streams per channel first")
    p.add_argument("--max-tokens", type=int, default=48)
    p.add_argument("--seconds", type=float, default=10.0, help="measured time of each throughput run")
    p.add_argument("--clients", type=int, default=4, help="concurrent streams of each throughput run")
    p.add_argument("--n-threads", type=int, default=1, help="llama.cpp threads of each worker")
    p.add_argument("--n-ctx", type=int, default=512)
    p.add_argument("--cache-dir", type=Path, default=default_cache_dir())
    p.add_argument("--ledger-calls", type=int, default=4000, help="calls of each ledger run")
    p.add_argument("--ledger-concurrency", type=int, default=64)
    p.add_argument("--sections", default=",".join(SECTIONS), help="which to run, comma-separated")
    args = p.parse_args()
    print(figures_line("scale_out", asyncio.run(run(args))), flush=True)


if __name__ == "__main__":
    main()
