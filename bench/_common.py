"""Helpers shared by the benchmarks: a gateway (``llmfn serve``) on a free
loopback port, an OpenAI streaming client that notes the time to first token,
percentiles, terminal bar charts, and the one-line figures each benchmark
prints last on stdout. Progress and charts go to stderr."""
from __future__ import annotations

import asyncio
import json
import math
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as ``python bench/NAME.py``: make ``tests.support`` importable
    sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402

from runtime.pool import ModelStore  # noqa: E402
from runtime.settings import Settings  # noqa: E402

EMBEDDED = "gemma3-270m"  # the name `llmfn serve --model embedded` gives the embedded model
PROMPT = "The three most useful things to know about the history of the printing press are"

# Different prompts per client, so concurrent streams don't share one KV prefix; each
# runs past 64 tokens at temperature 0 on the embedded model.
PROMPTS = [
    "Write a short note about the history of the printing press:",
    "List some practical tips for keeping a vegetable garden healthy:",
    "Explain in plain words how a refrigerator keeps food cold:",
    "Describe a quiet morning in a small harbour town:",
    "Give a brief overview of how bridges carry heavy loads:",
    "Summarise why people enjoy walking in the mountains:",
    "Explain what a compiler does to a program:",
    "Describe how bees find their way back to the hive:",
]


# ---- output ------------------------------------------------------------------

def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def figures_line(name: str, figures: dict[str, Any]) -> str:
    """``name key=value ...``: the one stdout line a benchmark ends with."""
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.3f}" if abs(v) < 10 else f"{v:.1f}"
        return str(v)
    return " ".join([name, *(f"{k}={fmt(v)}" for k, v in figures.items())])


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), interpolated between the closest ranks."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def ratio(a: float, b: float) -> float:
    return a / b if b else math.nan


# ---- charts ------------------------------------------------------------------

SHADES = "█▓▒░▚▞"


def stacked_bars(rows: Sequence[tuple[str, Sequence[tuple[str, float]]]], *,
                 width: int = 50, unit: str = "s") -> str:
    """One bar per row, one shade per phase, all on one scale, and a legend."""
    phases = list(dict.fromkeys(name for _, parts in rows for name, _ in parts))
    shade = {name: SHADES[i % len(SHADES)] for i, name in enumerate(phases)}
    longest = max((sum(max(v, 0) for _, v in parts) for _, parts in rows), default=0) or 1
    label_w = max(len(label) for label, _ in rows)
    lines = []
    for label, parts in rows:
        bar = "".join(shade[name] * round(max(v, 0) / longest * width) for name, v in parts)
        total = sum(max(v, 0) for _, v in parts)
        detail = ", ".join(f"{shade[name]} {v:.2f}" for name, v in parts) if len(parts) > 1 else ""
        lines.append(f"  {label:<{label_w}} {bar:<{width}} {total:7.2f} {unit}  {detail}".rstrip())
    lines.append("  " + "  ".join(f"{shade[n]} {n}" for n in phases))
    return "\n".join(lines)


def bars(rows: Sequence[tuple[str, float]], *, width: int = 50, unit: str = "") -> str:
    """A plain horizontal bar per row, scaled to the largest value."""
    top = max((v for _, v in rows), default=0) or 1
    label_w = max(len(label) for label, _ in rows)
    return "\n".join(f"  {label:<{label_w}} {SHADES[0] * round(v / top * width):<{width}} {v:8.1f} {unit}"
                     for label, v in rows)


# ---- the model and the gateway -------------------------------------------------

def default_cache_dir() -> Path:
    """The cache ``llmfn serve`` uses (``LLMFN_CACHE_DIR`` or ~/.cache/llmfn)."""
    return Settings().cache_dir


async def embedded_model(cache_dir: Path) -> Path:
    """The embedded GGUF in ``cache_dir``, assembled there on first use."""
    return (await ModelStore(cache_dir, show_progress=False).fetch(EMBEDDED, "embedded")).path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pool_flags(**pool: Any) -> list[str]:
    """PoolConfig fields as ``llmfn serve`` flags: n_ctx=512 -> --n-ctx 512."""
    return [arg for k, v in pool.items() if v is not None
            for arg in ("--" + k.replace("_", "-"), str(v))]


@dataclass
class Gateway:
    """``llmfn serve`` in its own process, as it runs in production; its log
    goes to a file that is shown when it fails to start."""
    models: list[str]
    cache_dir: Path
    pool: dict[str, Any] = field(default_factory=dict)
    s3_endpoint_url: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    port: int = 0
    proc: subprocess.Popen | None = None
    admin_key: str = field(default_factory=lambda: "sk-bench-admin-" + secrets.token_hex(16))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "runtime.cli", "serve", "--host", "127.0.0.1",
               "--gateway-port", str(self.port), "--cache-dir", str(self.cache_dir)]
        for m in self.models:
            cmd += ["--model", m]
        if self.s3_endpoint_url:
            cmd += ["--s3-endpoint-url", self.s3_endpoint_url]
        return cmd + pool_flags(**self.pool)

    async def __aenter__(self) -> Gateway:
        self.port = free_port()
        self._log = tempfile.NamedTemporaryFile("w+", prefix="llmfn-bench-gateway-", suffix=".log")
        self.proc = subprocess.Popen(self.command(), cwd=ROOT, stdin=subprocess.DEVNULL,
                                     stdout=self._log, stderr=subprocess.STDOUT,
                                     env={**os.environ, "LLMFN_ADMIN_KEY": self.admin_key, **self.env})
        try:
            await self._wait_healthy()
        except BaseException:
            self.stop()
            raise
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self.stop()

    async def _wait_healthy(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as http:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"gateway exited ({self.proc.returncode}):\n{self.log_tail()}")
                try:
                    async with http.get(f"{self.url}/health") as resp:
                        if resp.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)
        raise RuntimeError(f"gateway not healthy within {timeout:g}s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 20) -> str:
        self._log.flush()
        return "".join(Path(self._log.name).read_text().splitlines(True)[-lines:])

    def stop(self) -> None:
        """SIGTERM: the gateway stops its workers on the way out."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()

    async def pool_status(self, http: aiohttp.ClientSession, model: str) -> dict[str, Any]:
        async with http.get(f"{self.url}/admin/pools",
                            headers={"Authorization": f"Bearer {self.admin_key}"}) as resp:
            resp.raise_for_status()
            return (await resp.json())[model]

    async def wait_pool(self, http: aiohttp.ClientSession, model: str, *, state: str,
                        warm: int | None = None, timeout: float = 120) -> dict[str, Any]:
        """Poll ``/admin/pools`` until the model's pool is in ``state`` (with ``warm`` workers)."""
        deadline = time.monotonic() + timeout
        while True:
            st = await self.pool_status(http, model)
            if st["state"] == state and (warm is None or st["workers"]["warm"] == warm):
                return st
            if time.monotonic() > deadline:
                raise TimeoutError(f"pool {model} still {st['state']} after {timeout:g}s")
            await asyncio.sleep(0.2)


# ---- the client ----------------------------------------------------------------

@dataclass
class Streamed:
    """One streamed completion as the client saw it."""
    ttft_s: float          # request sent -> first non-empty text
    total_s: float         # request sent -> [DONE]
    text: str
    usage: dict[str, Any] | None
    chunks: int = 0        # SSE chunks that carried text: the token count where no usage comes back


class HTTPStatusError(RuntimeError):
    """A non-200 answer to a request; ``status`` tells which (503: still loading)."""

    def __init__(self, status: int, body: str):
        super().__init__(f"HTTP {status}: {body}")
        self.status = status


async def stream_completion(http: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> Streamed:
    """POST a ``stream: true`` completions request and read its SSE to ``[DONE]``."""
    body = {**body, "stream": True, "stream_options": {"include_usage": True}}
    t0 = time.perf_counter()
    ttft, parts, usage = math.nan, [], None
    async with http.post(f"{url}/v1/completions", json=body) as resp:
        if resp.status != 200:
            raise HTTPStatusError(resp.status, await resp.text())
        async for raw in resp.content:
            line = raw.strip()
            if not line.startswith(b"data: ") or line == b"data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if "error" in chunk:
                raise RuntimeError(f"stream failed: {chunk['error']}")
            text = chunk["choices"][0]["text"] if chunk["choices"] else ""
            if text and not parts:
                ttft = time.perf_counter() - t0
            if text:
                parts.append(text)
            usage = chunk.get("usage") or usage
    return Streamed(ttft, time.perf_counter() - t0, "".join(parts), usage, len(parts))


def worker_payload(tokens: list[int], max_tokens: int) -> dict:
    """What the gateway sends its worker for ``temperature: 0`` and default sampling."""
    return {"prompt_tokens": tokens, "max_tokens": max_tokens, "stop": [], "n": 1, "logprobs": None,
            "sampling": {"temperature": 0, "top_p": 1, "top_k": 40, "min_p": 0.05, "repeat_penalty": 1,
                         "presence_penalty": 0, "frequency_penalty": 0, "seed": None}}


def completion_body(model: str, max_tokens: int, prompt: str = PROMPT) -> dict[str, Any]:
    return {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0}


def keepalive_session() -> aiohttp.ClientSession:
    """A client session that reuses its connections, as an SDK client does."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, force_close=False),
                                 timeout=aiohttp.ClientTimeout(total=300))
