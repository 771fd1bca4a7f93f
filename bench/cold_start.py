"""Cold starts: from the first request on a pool with no worker to its first
streamed token, split into the phases the pool reports in ``/admin/pools``
(``last_cold_start``: fetch, process start, model load, first token) plus what
the client saw around them. Three cases:

- ``embedded``:  the embedded model, already in the local cache;
- ``s3_empty``:  an ``s3://`` model on moto's S3 server with an empty cache
                 (a real download over loopback through s3fs);
- ``s3_cached``: the same model again after the pool scaled to zero (cache hit).

Each is compared with a warm request (a worker already up) in the same run.

    .venv/bin/python bench/cold_start.py [--idle-timeout 2]
"""
from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

from _common import (
    EMBEDDED,
    Gateway,
    completion_body,
    default_cache_dir,
    embedded_model,
    figures_line,
    keepalive_session,
    log,
    percentile,
    ratio,
    stacked_bars,
    stream_completion,
)

from tests.support.moto_server import AWS_ENV_TO_CLEAR, DUMMY_AWS_ENV, start_moto_server

S3_MODEL = "gemma3-270m-s3"
BUCKET, KEY = "llmfn-bench", "models/gemma3-270m.gguf"
CASES = ("embedded", "s3_empty", "s3_cached")


async def first_request(gw: Gateway, http, model: str, max_tokens: int) -> dict:
    """One streamed request on a cold pool: the client's TTFT and the pool's breakdown."""
    before = await gw.pool_status(http, model)
    assert before["state"] == "cold", f"pool {model} is {before['state']}, not cold"
    streamed = await stream_completion(http, gw.url, completion_body(model, max_tokens))
    cs = (await gw.pool_status(http, model))["last_cold_start"]
    return {"client_s": streamed.ttft_s, "fetch_s": cs["fetch_s"],
            "process_s": cs["process_start_s"], "load_s": cs["load_s"],
            "token_s": cs["first_token_s"] - cs["ready_s"],
            # Before the pool's clock started (request handling, the tokenizer's own
            # model fetch) and after the worker's first token (SSE to the client).
            "outside_s": streamed.ttft_s - cs["first_token_s"],
            "downloaded": cs["downloaded"]}


async def warm_ttft(gw: Gateway, http, model: str, max_tokens: int, n: int = 5) -> float:
    ttfts = [(await stream_completion(http, gw.url, completion_body(model, max_tokens))).ttft_s
             for _ in range(n)]
    return percentile(ttfts, 50)


async def embedded_case(args: argparse.Namespace, pool: dict) -> tuple[dict, float]:
    log("case embedded: warm cache, cold pool")
    async with Gateway([f"{EMBEDDED}=embedded"], args.cache_dir, pool=pool) as gw, \
            keepalive_session() as http:
        result = await first_request(gw, http, EMBEDDED, args.max_tokens)
        log("warm baseline: requests to the worker that just started")
        return result, await warm_ttft(gw, http, EMBEDDED, args.max_tokens)


def use_dummy_aws_credentials() -> None:
    """moto accepts any credentials; never let the caller's own AWS setup in."""
    for name in AWS_ENV_TO_CLEAR:
        os.environ.pop(name, None)
    os.environ.update(DUMMY_AWS_ENV)
    os.environ["AWS_CONFIG_FILE"] = os.environ["AWS_SHARED_CREDENTIALS_FILE"] = os.devnull


def upload_model(endpoint_url: str, path: Path) -> None:
    import boto3

    t0 = time.perf_counter()
    s3 = boto3.client("s3", endpoint_url=endpoint_url)
    s3.create_bucket(Bucket=BUCKET)
    s3.upload_file(str(path), BUCKET, KEY)
    log(f"uploaded {path.stat().st_size / 2**20:.0f} MiB to s3://{BUCKET}/{KEY} "
        f"in {time.perf_counter() - t0:.1f}s")


async def s3_cases(args: argparse.Namespace, pool: dict, model_path: Path) -> tuple[dict, dict]:
    use_dummy_aws_credentials()
    moto = start_moto_server()
    try:
        upload_model(moto.endpoint_url, model_path)
        with tempfile.TemporaryDirectory(prefix="llmfn-bench-cache-") as empty_cache:
            async with Gateway([f"{S3_MODEL}=s3://{BUCKET}/{KEY}"], Path(empty_cache), pool=pool,
                               s3_endpoint_url=moto.endpoint_url) as gw, keepalive_session() as http:
                log("case s3_empty: empty cache, cold pool (download from moto)")
                empty = await first_request(gw, http, S3_MODEL, args.max_tokens)
                log(f"waiting for scale to zero (idle_timeout {args.idle_timeout:g}s)")
                await gw.wait_pool(http, S3_MODEL, state="cold", timeout=args.idle_timeout + 60)
                log("case s3_cached: cache hit, cold pool")
                cached = await first_request(gw, http, S3_MODEL, args.max_tokens)
        return empty, cached
    finally:
        moto.stop()


PHASES = (("fetch", "fetch_s"), ("process start", "process_s"), ("model load", "load_s"),
          ("first token", "token_s"), ("outside pool", "outside_s"))


def chart(results: dict[str, dict], warm_s: float) -> str:
    rows = [(case, [(name, results[case][key]) for name, key in PHASES]) for case in CASES]
    rows.append(("warm", [("first token", warm_s)]))
    return stacked_bars(rows)


def figures(results: dict[str, dict], warm_s: float) -> dict:
    out: dict = {}
    for case in CASES:
        r = results[case]
        out.update({f"{case}_{k}": r[k] for k in ("client_s", "fetch_s", "process_s", "load_s", "token_s",
                                                  "outside_s")})
        out[f"{case}_downloaded"] = int(r["downloaded"])
    out["warm_ttft_s"] = warm_s
    for case in CASES:
        out[f"{case}_over_warm"] = ratio(results[case]["client_s"], warm_s)
    out["s3_empty_over_cached"] = ratio(results["s3_empty"]["client_s"], results["s3_cached"]["client_s"])
    return out


async def run(args: argparse.Namespace) -> dict:
    model_path = await embedded_model(args.cache_dir)
    pool = dict(min_workers=0, max_workers=1, slots=1, n_ctx=args.n_ctx, n_threads=args.n_threads,
                idle_timeout=args.idle_timeout)
    results: dict[str, dict] = {}
    results["embedded"], warm_s = await embedded_case(args, pool)
    results["s3_empty"], results["s3_cached"] = await s3_cases(args, pool, model_path)
    print(chart(results, warm_s), file=sys.stderr)
    return figures(results, warm_s)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--max-tokens", type=int, default=8)
    p.add_argument("--idle-timeout", type=float, default=2.0, help="seconds before scale to zero")
    p.add_argument("--n-ctx", type=int, default=512)
    p.add_argument("--n-threads", type=int, default=2)
    p.add_argument("--cache-dir", type=Path, default=default_cache_dir(),
                   help="warm cache for the embedded case (the s3 cases use an empty temporary one)")
    args = p.parse_args()
    print(figures_line("cold_start", asyncio.run(run(args))), flush=True)


if __name__ == "__main__":
    main()
