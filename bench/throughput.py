"""Aggregate generation throughput through the gateway: completion tokens per
second (``usage.completion_tokens`` of streamed ``/v1/completions``) with 1, 4
and 8 clients streaming back to back for a fixed time, on a pool kept warm at
its full size. Each level is compared with one client in the same run.

    .venv/bin/python bench/throughput.py [--concurrency 1,4,8] [--max-workers 2] [--slots 2]
"""
from __future__ import annotations

import argparse
import asyncio
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from _common import (
    EMBEDDED,
    PROMPTS,
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
)


@dataclass
class Level:
    concurrency: int
    seconds: float = 0.0
    tokens: int = 0
    ttfts: list[float] = field(default_factory=list)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0


async def client(http, url: str, index: int, max_tokens: int, deadline: float, level: Level) -> None:
    """One client: streamed requests back to back until the deadline."""
    n = index
    while time.perf_counter() < deadline:
        body = completion_body(EMBEDDED, max_tokens, PROMPTS[n % len(PROMPTS)])
        streamed = await stream_completion(http, url, body)
        if not streamed.usage:
            raise RuntimeError("stream ended without a usage chunk")
        level.tokens += streamed.usage["completion_tokens"]
        level.ttfts.append(streamed.ttft_s)
        n += 1


async def measure(http, url: str, concurrency: int, args: argparse.Namespace) -> Level:
    level = Level(concurrency)
    t0 = time.perf_counter()
    await asyncio.gather(*(client(http, url, i, args.max_tokens, t0 + args.seconds, level)
                           for i in range(concurrency)))
    level.seconds = time.perf_counter() - t0  # to the end of the last request, which is counted
    return level


async def run(args: argparse.Namespace) -> list[Level]:
    await embedded_model(args.cache_dir)
    pool = dict(min_workers=args.max_workers, max_workers=args.max_workers, slots=args.slots,
                n_ctx=args.n_ctx, n_threads=args.n_threads, idle_timeout=3600)
    log(f"starting a gateway: {args.max_workers} workers x {args.slots} slots, "
        f"{args.n_threads} thread(s) each")
    async with Gateway([f"{EMBEDDED}=embedded"], args.cache_dir, pool=pool) as gw, \
            keepalive_session() as http:
        await gw.wait_pool(http, EMBEDDED, state="warm", warm=args.max_workers)
        levels = []
        for c in args.concurrency:
            log(f"concurrency {c}: warm-up, then {args.seconds:g}s of streams")
            await asyncio.gather(*(stream_completion(http, gw.url, completion_body(EMBEDDED, 4, PROMPTS[i % 8]))
                                   for i in range(c)))
            level = await measure(http, gw.url, c, args)
            log(f"concurrency {c}: {level.tokens} tokens in {level.seconds:.1f}s "
                f"= {level.tokens_per_s:.1f} tokens/s")
            levels.append(level)
    return levels


def figures(levels: list[Level], args: argparse.Namespace) -> dict:
    base = levels[0].tokens_per_s
    out: dict = {"workers": args.max_workers, "slots": args.slots, "n_threads": args.n_threads,
                 "max_tokens": args.max_tokens}
    for lv in levels:
        out[f"c{lv.concurrency}_tok_s"] = lv.tokens_per_s
    for lv in levels:
        out[f"c{lv.concurrency}_ttft_p50_s"] = percentile(lv.ttfts, 50)
    for lv in levels[1:]:
        out[f"c{lv.concurrency}_over_c{levels[0].concurrency}"] = ratio(lv.tokens_per_s, base)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--concurrency", type=lambda s: [int(x) for x in s.split(",")], default=[1, 4, 8],
                   help="comma-separated client counts; the first is the baseline")
    p.add_argument("--seconds", type=float, default=15.0, help="measured time per level")
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--max-workers", type=int, default=2)
    p.add_argument("--slots", type=int, default=2)
    p.add_argument("--n-threads", type=int, default=1, help="llama.cpp threads of each worker")
    p.add_argument("--n-ctx", type=int, default=512)
    p.add_argument("--cache-dir", type=Path, default=default_cache_dir())
    args = p.parse_args()
    levels = asyncio.run(run(args))
    print(bars([(f"{lv.concurrency} concurrent", lv.tokens_per_s) for lv in levels], unit="tokens/s"),
          file=sys.stderr)
    print(figures_line("throughput", figures(levels, args)), flush=True)


if __name__ == "__main__":
    main()
