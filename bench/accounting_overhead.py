"""What accounting and quotas add to a gateway call: two gateways of the same
model, each in its own process with its own warm one-slot worker, one with
accounting OFF (no ledger, no keys: anonymous callers, no limits, nothing
reserved or recorded) and one with it ON (a SQLite ledger and a key store; the
caller's key has limits far above what the run uses, so every call is
authenticated, reserved, settled and recorded but never refused).

Cheap requests keep llama.cpp's share small: ``/v1/embeddings`` of a short
input and ``/v1/completions`` with ``max_tokens: 1``, sent as ON/OFF pairs
(never at once; which side goes first alternates). Prints p50/p95 of each
side, the added latency (ON minus OFF, pair by pair) and the ON/OFF ratio of
the medians. A micro-benchmark that needs no model times the accounting hot
path alone: ``QuotaPolicy.reserve`` + ``settle`` on ``MemoryCounters``, and
``Ledger.admit`` + ``Ledger.complete`` of a call's rows.

    .venv/bin/python bench/accounting_overhead.py [--requests 150] [--micro 20000]
"""
from __future__ import annotations

import argparse
import asyncio
import os
import sqlite3
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import aiohttp
from _common import (
    EMBEDDED,
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
)

from runtime.accounting.keys import KeyStore
from runtime.accounting.ledger import Ledger, LedgerRow
from runtime.accounting.quotas import Limits, MemoryCounters, QuotaPolicy
from runtime.gateway.auth import Principal
from runtime.gateway.calls import CallRecord

# Far above anything the run reaches: the limits are checked on every call, never hit.
BENCH_LIMITS = Limits(rpm=1_000_000, tpm=1_000_000_000, daily_tokens=10**12)
EMBED_INPUT = "The printing press"


# ---- the two gateways ------------------------------------------------------------

def serve(args: argparse.Namespace) -> None:
    """The runner: one gateway built with ``build_app``, accounting ON or OFF,
    served until SIGTERM (``web.run_app`` then stops the pool's worker)."""
    from aiohttp import web

    from runtime.gateway import GatewayConfig, build_app
    from runtime.pool import ModelStore
    from runtime.template.model_spec import ModelConfig, PoolConfig

    pool = PoolConfig(min_workers=1, max_workers=1, slots=1, n_ctx=args.n_ctx,
                      n_threads=args.n_threads, idle_timeout=3600)
    on = args.serve == "on"
    config = GatewayConfig(
        models=[ModelConfig(name=EMBEDDED, source="embedded", pool=pool)],
        store=ModelStore(args.cache_dir, show_progress=False),
        ledger_at=args.data_dir / "ledger.sqlite3" if on else None,
        keys_at=args.data_dir / "keys.sqlite3" if on else None,
        admin_key=os.environ.get("LLMFN_ADMIN_KEY"))  # the harness reads /admin/pools with it
    web.run_app(build_app(config), host="127.0.0.1", port=args.port, access_log=None, print=None)


@dataclass
class AccountingGateway(Gateway):
    """This script's own runner (``--serve on|off``) in its own process, so
    neither gateway shares an event loop with the client or with the other."""
    mode: str = "off"
    data_dir: Path | None = None
    n_ctx: int = 512
    n_threads: int = 1

    def command(self) -> list[str]:
        return [sys.executable, str(Path(__file__).resolve()), "--serve", self.mode,
                "--port", str(self.port), "--cache-dir", str(self.cache_dir),
                "--data-dir", str(self.data_dir), "--n-ctx", str(self.n_ctx),
                "--n-threads", str(self.n_threads)]


# ---- the requests ----------------------------------------------------------------

async def post(http: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> float:
    """Seconds from sending ``body`` to having read the whole reply."""
    t0 = time.perf_counter()
    async with http.post(url, json=body) as resp:
        await resp.read()
        if resp.status != 200:
            raise RuntimeError(f"HTTP {resp.status} from {url}: {await resp.text()}")
    return time.perf_counter() - t0


Call = Callable[[], Awaitable[float]]


async def pair(i: int, off: Call, on: Call) -> tuple[float, float]:
    """One (OFF, ON) pair; odd pairs send ON first, so drift hits both sides."""
    if i % 2 == 0:
        t_off = await off()
        t_on = await on()
    else:
        t_on = await on()
        t_off = await off()
    return t_off, t_on


def summary(prefix: str, pairs: list[tuple[float, float]]) -> dict[str, float]:
    off = [a * 1000 for a, _ in pairs]
    on = [b * 1000 for _, b in pairs]
    added = [b - a for a, b in zip(off, on)]
    off50, on50 = percentile(off, 50), percentile(on, 50)
    return {f"{prefix}_off_p50_ms": off50, f"{prefix}_off_p95_ms": percentile(off, 95),
            f"{prefix}_on_p50_ms": on50, f"{prefix}_on_p95_ms": percentile(on, 95),
            f"{prefix}_added_p50_ms": percentile(added, 50),
            f"{prefix}_added_p95_ms": percentile(added, 95),
            f"{prefix}_ratio": ratio(on50, off50)}


async def check_accounting(http: aiohttp.ClientSession, url: str) -> None:
    """The ON side must really be metering: a call without the key is refused
    and one with it (``http`` sends it) carries its reservation's rate-limit headers."""
    body = {"model": EMBEDDED, "input": EMBED_INPUT}
    async with aiohttp.ClientSession() as keyless, keyless.post(f"{url}/v1/embeddings", json=body) as resp:
        if resp.status != 401:
            raise RuntimeError(f"ON gateway accepted a call without a key (HTTP {resp.status})")
    async with http.post(f"{url}/v1/embeddings", json=body) as resp:
        await resp.read()
        if "x-ratelimit-remaining-tokens" not in resp.headers:
            raise RuntimeError("ON gateway sent no rate-limit headers: no quota was reserved")


def ledger_rows(path: Path) -> int:
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        return db.execute("SELECT COUNT(*) FROM calls").fetchone()[0]


async def gateways(args: argparse.Namespace) -> dict[str, Any]:
    await embedded_model(args.cache_dir)  # assembled once, before either gateway needs it
    with tempfile.TemporaryDirectory(prefix="llmfn-bench-acct-") as tmp:
        data = Path(tmp)
        secret = KeyStore(data / "keys.sqlite3").create("bench", limits=BENCH_LIMITS)
        auth = {"Authorization": f"Bearer {secret}"}  # the OFF gateway, with no keys, ignores it
        common = dict(models=[EMBEDDED], cache_dir=args.cache_dir, data_dir=data,
                      n_ctx=args.n_ctx, n_threads=args.n_threads)
        log(f"starting two gateways (accounting OFF and ON), one warm worker each, n_ctx={args.n_ctx}")
        async with AccountingGateway(mode="off", **common) as gw_off, \
                AccountingGateway(mode="on", **common) as gw_on, \
                keepalive_session() as http_off, keepalive_session() as http_on:
            http_off.headers.update(auth)
            http_on.headers.update(auth)
            await gw_off.wait_pool(http_off, EMBEDDED, state="warm", warm=1)
            await gw_on.wait_pool(http_on, EMBEDDED, state="warm", warm=1)
            await check_accounting(http_on, gw_on.url)
            emb = {"model": EMBEDDED, "input": EMBED_INPUT}
            cmpl = completion_body(EMBEDDED, 1)
            kinds = {
                "emb": (lambda: post(http_off, f"{gw_off.url}/v1/embeddings", emb),
                        lambda: post(http_on, f"{gw_on.url}/v1/embeddings", emb)),
                "cmpl": (lambda: post(http_off, f"{gw_off.url}/v1/completions", cmpl),
                         lambda: post(http_on, f"{gw_on.url}/v1/completions", cmpl)),
            }
            log(f"warming up ({args.warmup} pairs of each kind)")
            for i in range(args.warmup):
                for off, on in kinds.values():
                    await pair(i, off, on)
            log(f"measuring {args.requests} pairs of each kind (embeddings of {EMBED_INPUT!r}, "
                "completions with max_tokens=1), kinds interleaved")
            measured: dict[str, list[tuple[float, float]]] = {k: [] for k in kinds}
            for i in range(args.requests):
                for kind, (off, on) in kinds.items():
                    measured[kind].append(await pair(i, off, on))
                if (i + 1) % 50 == 0:
                    log(f"  {i + 1}/{args.requests}")
        # the keyed probe and every measured call; the keyless probe is refused before it is metered
        calls = 1 + 2 * (args.warmup + args.requests)
        rows = ledger_rows(data / "ledger.sqlite3")
        log(f"ON ledger holds {rows} rows for {calls} metered calls")
        if rows != calls:
            log(f"warning: expected {calls} ledger rows, found {rows}")
    return {k: v for kind, ps in measured.items() for k, v in summary(kind, ps).items()}


# ---- the accounting hot path without a gateway ----------------------------------

async def reserve_settle(n: int, limits: Limits) -> list[float]:
    """Seconds per ``reserve`` + ``settle`` of one key on one model, call by call,
    all inside one minute's window as a busy key's calls would be."""
    async def nothing_spent(kind: str, resource: str, model: str, since: float) -> int:
        return 0

    policy = QuotaPolicy(MemoryCounters(), spent_since=nothing_spent)
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        grant = await policy.reserve("key", "bench", EMBEDDED, limits, 24)
        await policy.settle(grant, 17)
        times.append(time.perf_counter() - t0)
    return times


def ledger_record(n: int) -> tuple[float, float]:
    """Mean seconds a call spends handing its life to the ledger (``Ledger.admit``
    of its running row and ``Ledger.complete`` of its end, queued for the writer
    thread, as the gateway does for every call), and how long the final flush took.
    The writes go in batches below the admission backlog's bound."""
    call = CallRecord(at=time.time(), principal=Principal("key", "bench"), model=EMBEDDED,
                      endpoint="completions", status="success", prompt_tokens=16,
                      completion_tokens=1, cached_tokens=0, latency_s=0.02, ttft_s=0.02,
                      request_id="req-bench")
    batch, queued_s, flush_s = 2000, 0.0, 0.0
    with tempfile.TemporaryDirectory(prefix="llmfn-bench-ledger-") as tmp:
        ledger = Ledger(Path(tmp) / "ledger.sqlite3")
        for start in range(0, n, batch):
            t0 = time.perf_counter()
            for i in range(start, min(n, start + batch)):
                row = LedgerRow.from_call(replace(call, call_id=f"c{i}", reserved=17))
                ledger.admit(replace(row, status="running"))
                ledger.complete(row)
            queued_s += time.perf_counter() - t0
            t1 = time.perf_counter()
            ledger.flush()  # the writer catches up before the next batch
            flush_s = time.perf_counter() - t1
        ledger.close()
        with sqlite3.connect(Path(tmp) / "ledger.sqlite3") as db:
            if db.execute("SELECT COUNT(*) FROM calls WHERE status = 'success'").fetchone()[0] != n:
                log("warning: the ledger did not write every call")
    return queued_s / n, flush_s


def edge_calls(n: int) -> int:
    """How many calls the first and last figures average: 1000, or a tenth of a short run."""
    return max(1, min(1000, n // 10))


async def micro(n: int) -> dict[str, float]:
    log(f"reserve + settle on MemoryCounters, {n} calls (rpm, tpm and a daily budget)")
    times = await reserve_settle(n, BENCH_LIMITS)
    edge = edge_calls(n)
    no_tpm = await reserve_settle(n, Limits(rpm=BENCH_LIMITS.rpm, daily_tokens=BENCH_LIMITS.daily_tokens))
    log(f"Ledger.admit + complete, {n} calls")
    record_s, flush_s = ledger_record(n)
    log(f"  the writer had {flush_s * 1000:.1f} ms of rows left to write after the last batch")
    us = lambda xs: sum(xs) / len(xs) * 1e6  # noqa: E731
    return {"reserve_settle_us": us(times), "reserve_settle_first_us": us(times[:edge]),
            "reserve_settle_last_us": us(times[-edge:]), "reserve_settle_no_tpm_us": us(no_tpm),
            "ledger_record_us": record_s * 1e6}


# ---- main ------------------------------------------------------------------------

def chart(f: dict[str, Any]) -> str:
    n = f["n_micro"]
    edge = edge_calls(n)
    return "\n".join([
        bars([("embeddings  OFF", f["emb_off_p50_ms"]), ("embeddings  ON", f["emb_on_p50_ms"]),
              ("completions OFF", f["cmpl_off_p50_ms"]), ("completions ON", f["cmpl_on_p50_ms"])],
             unit="ms (p50)"),
        "",
        bars([(f"reserve+settle, first {edge}", f["reserve_settle_first_us"]),
              (f"reserve+settle, all {n}", f["reserve_settle_us"]),
              (f"reserve+settle, last {edge}", f["reserve_settle_last_us"]),
              (f"reserve+settle, all {n}, no tpm", f["reserve_settle_no_tpm_us"]),
              ("Ledger admit + complete", f["ledger_record_us"])], unit="µs"),
    ])


async def run(args: argparse.Namespace) -> dict[str, Any]:
    micro_figures = await micro(args.micro)  # before the gateways: nothing else on the cores
    http_figures = await gateways(args)
    order = ["emb_off_p50_ms", "emb_off_p95_ms", "emb_on_p50_ms", "emb_on_p95_ms", "emb_added_p50_ms",
             "emb_added_p95_ms", "emb_ratio", "cmpl_off_p50_ms", "cmpl_off_p95_ms", "cmpl_on_p50_ms",
             "cmpl_on_p95_ms", "cmpl_added_p50_ms", "cmpl_added_p95_ms", "cmpl_ratio"]
    return {"n": args.requests, **{k: http_figures[k] for k in order},
            **micro_figures, "n_micro": args.micro}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=150, help="ON/OFF pairs per request kind")
    p.add_argument("--warmup", type=int, default=20, help="pairs per kind not counted")
    p.add_argument("--micro", type=int, default=20000, help="calls in each micro-benchmark")
    p.add_argument("--n-ctx", type=int, default=512)
    p.add_argument("--n-threads", type=int, default=1, help="llama.cpp threads of each worker")
    p.add_argument("--cache-dir", type=Path, default=default_cache_dir())
    # the runner, started by this script itself
    p.add_argument("--serve", choices=["on", "off"], help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--data-dir", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.serve:
        return serve(args)
    figures = asyncio.run(run(args))
    print(chart(figures), file=sys.stderr)
    print(figures_line("accounting_overhead", figures), flush=True)


if __name__ == "__main__":
    main()
