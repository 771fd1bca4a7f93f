"""What ``llmfn start-api`` adds to a function invocation, warm and cold.

A handler that only returns ``{"statusCode": 200, "body": "ok"}``
(``bench/functions/noop``) is called through start-api over a keep-alive HTTP
connection and compared in the same run with two peers:

- **in-process**: the same handler imported and called directly, with an HTTP
  API v2 event built and its return mapped by the same ``apigw`` code;
- **plain HTTP**: an aiohttp server in its own process answering ``ok``, so
  that what HTTP on loopback costs by itself is not charged to start-api.

Then cold starts: the same function with ``idle_timeout: 1``, a request after
each pause long enough for its instance to stop, the ``Init Duration`` that
start-api logs in the REPORT line of each (process start to the handler
imported and polling for its event), and the client's latency. Twice: from
the spare interpreter, and fresh (``template-cold-fresh.yaml``, whose function
sets a start-up variable so no spare can stand in), as every cold start was
before the spare.

    .venv/bin/python bench/invoke_overhead.py [--requests 200] [--cold 5]
"""
from __future__ import annotations

import argparse
import asyncio
import importlib.util
import re
import signal
import sys
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
from _common import ROOT, bars, figures_line, keepalive_session, log, percentile, ratio

from runtime.triggers import apigw

FIXTURES = Path(__file__).resolve().parent / "functions"
WARM_TEMPLATE = FIXTURES / "template.yaml"
COLD_TEMPLATE = FIXTURES / "template-cold.yaml"  # the same function with idle_timeout: 1
FRESH_TEMPLATE = FIXTURES / "template-cold-fresh.yaml"  # ... that no spare can stand in for
PATH = "/noop"
READY = re.compile(r"llmfn start-api on (http://\S+)")


@dataclass
class Report:
    request_id: str
    duration_ms: float
    init_ms: float | None


def parse_report(line: str) -> Report:
    """``REPORT RequestId: ID\\tDuration: 1.23 ms\\t...\\tInit Duration: 512.34 ms\\t...``
    (Init Duration only on an instance's first invocation)."""
    fields = dict(part.split(": ", 1) for part in line.removeprefix("REPORT ").split("\t"))
    init = fields.get("Init Duration")
    return Report(fields["RequestId"], float(fields["Duration"].removesuffix(" ms")),
                  float(init.removesuffix(" ms")) if init else None)


# ---- llmfn start-api in its own process ----------------------------------------

class StartApi:
    """``llmfn start-api`` on a free port. A task reads its stderr line by line:
    the ready line gives the URL, REPORT lines go to ``reports``."""

    def __init__(self, template: Path):
        self.cmd = [sys.executable, "-m", "runtime.cli", "start-api", "--template", str(template),
                    "--host", "127.0.0.1", "--api-port", "0", "--gateway-port", "0"]
        self.url = ""
        self.reports: asyncio.Queue[Report] = asyncio.Queue()
        self.tail: deque[str] = deque(maxlen=30)  # shown when it fails

    async def __aenter__(self) -> StartApi:
        self.proc = await asyncio.create_subprocess_exec(
            *self.cmd, cwd=ROOT, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
        self._ready: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._reader = asyncio.create_task(self._read_stderr())
        try:
            self.url = await asyncio.wait_for(asyncio.shield(self._ready), 60)
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.stop()

    async def _read_stderr(self) -> None:
        async for raw in self.proc.stderr:
            line = raw.decode(errors="replace").rstrip("\n")
            self.tail.append(line)
            if (m := READY.search(line)) and not self._ready.done():
                self._ready.set_result(m.group(1))
            elif line.startswith("REPORT RequestId: "):
                self.reports.put_nowait(parse_report(line))
        if not self._ready.done():  # exited before it was ready
            self._ready.set_exception(RuntimeError(
                f"start-api exited ({await self.proc.wait()}):\n" + "\n".join(self.tail)))

    async def next_report(self, timeout: float = 10) -> Report:
        return await asyncio.wait_for(self.reports.get(), timeout)

    def drain_reports(self) -> list[Report]:
        out = []
        while not self.reports.empty():
            out.append(self.reports.get_nowait())
        return out

    async def stop(self, grace: float = 10) -> None:
        """SIGTERM: start-api stops its function instances on the way out. A
        clean stop takes well under a second; past ``grace`` it is killed, with a
        warning, so that a shutdown that hangs shows without stalling the run."""
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), grace)
            except TimeoutError:
                log(f"warning: start-api still running {grace:g} s after SIGTERM; killing it")
                self.proc.kill()
        try:  # stderr ends when start-api and every instance holding it are gone
            await asyncio.wait_for(asyncio.shield(self._reader), grace)
        except TimeoutError:
            log("warning: start-api's stderr still open; a function instance outlived it")
            self._reader.cancel()


# ---- the plain HTTP peer -------------------------------------------------------

def serve_plain() -> None:
    """``--serve-plain``: an aiohttp server on a free loopback port that answers
    ``ok``; prints its port on stdout and runs until its stdin closes."""
    from aiohttp import web

    async def ok(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def main() -> None:
        app = web.Application()
        app.router.add_get(PATH, ok)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        print(site._server.sockets[0].getsockname()[1], flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        await runner.cleanup()

    asyncio.run(main())


class PlainHttp:
    async def __aenter__(self) -> PlainHttp:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, __file__, "--serve-plain", stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE)
        port = int(await asyncio.wait_for(self.proc.stdout.readline(), 30))
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self.proc.stdin.close()
        await asyncio.wait_for(self.proc.wait(), 10)


# ---- measurements --------------------------------------------------------------

async def get_ok(http: aiohttp.ClientSession, url: str) -> float:
    """One GET, read to the end; the round trip in ms."""
    t0 = time.perf_counter()
    async with http.get(url + PATH) as resp:
        body = await resp.read()
    elapsed = (time.perf_counter() - t0) * 1000
    if resp.status != 200 or body != b"ok":
        raise RuntimeError(f"GET {url}{PATH}: HTTP {resp.status} {body[:200]!r}")
    return elapsed


async def alternating(n: int, first: Callable[[], Awaitable[float]],
                      second: Callable[[], Awaitable[float]]) -> tuple[list[float], list[float]]:
    """n rounds of one request each; which side goes first alternates, so drift hits both."""
    a, b = [], []
    for i in range(n):
        if i % 2 == 0:
            a.append(await first())
            b.append(await second())
        else:
            b.append(await second())
            a.append(await first())
    return a, b


def load_handler() -> Callable[[dict, Any], Any]:
    spec = importlib.util.spec_from_file_location("bench_noop_app", FIXTURES / "noop" / "app.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.handler


def in_process(n: int) -> list[float]:
    """The handler called directly: the v2 event built and the return mapped as
    start-api does it, without its processes and sockets. Each call in ms."""
    handler = load_handler()
    request = apigw.HttpRequestData("GET", PATH, headers=[("Host", "127.0.0.1"), ("Accept", "*/*")])
    context = SimpleNamespace(function_name="NoopFunction", aws_request_id="bench")
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        event = apigw.http_api_event(request, route_key=f"GET {PATH}", path_parameters=None)
        mapped = apigw.map_http_api_response(handler(event, context))
        times.append((time.perf_counter() - t0) * 1000)
        assert mapped.status == 200 and mapped.body == b"ok", mapped
    return times


async def warm(args: argparse.Namespace) -> dict[str, Any]:
    log("warm: start-api with bench/functions/template.yaml and a plain aiohttp server")
    async with StartApi(WARM_TEMPLATE) as api, PlainHttp() as plain, keepalive_session() as http:
        log(f"start-api on {api.url}; warming up ({args.warmup} requests each)")
        await alternating(args.warmup, lambda: get_ok(http, api.url), lambda: get_ok(http, plain.url))
        await asyncio.sleep(0.2)  # a REPORT line follows its response
        api.drain_reports()
        log(f"{args.requests} sequential GET {PATH} each, alternating")
        api_ms, http_ms = await alternating(args.requests, lambda: get_ok(http, api.url),
                                            lambda: get_ok(http, plain.url))
        await asyncio.sleep(0.2)
        reports = api.drain_reports()
    inproc_ms = in_process(args.requests)
    if any(r.init_ms is not None for r in reports):
        log("warning: a measured warm request was a cold start")
    duration = percentile([r.duration_ms for r in reports], 50)
    log(f"REPORT Duration p50 {duration:.2f} ms over {len(reports)} warm invocations "
        "(the dispatcher's own clock: instance handoff and the handler)")
    return {"api": api_ms, "http": http_ms, "inproc": inproc_ms, "report_duration_p50": duration}


async def cold(args: argparse.Namespace, template: Path = COLD_TEMPLATE) -> dict[str, list[float]]:
    """One request per pause; a REPORT without Init Duration means the instance
    was still warm, so the pause grows and the request is not counted."""
    log(f"cold: start-api with bench/functions/{template.name} (idle_timeout: 1), "
        f"{args.cold} cold starts, {args.pause:g} s apart")
    init_ms, client_ms = [], []
    pause, tries = args.pause, 0
    async with StartApi(template) as api, keepalive_session() as http:
        while len(init_ms) < args.cold:
            tries += 1
            if tries > args.cold * 3:
                raise RuntimeError(f"only {len(init_ms)} cold starts in {tries - 1} requests")
            await asyncio.sleep(pause)
            api.drain_reports()
            elapsed = await get_ok(http, api.url)
            report = await api.next_report()
            if report.init_ms is None:
                pause += 1
                log(f"  request {tries}: warm instance; pausing {pause:g} s from now on")
                continue
            init_ms.append(report.init_ms)
            client_ms.append(elapsed)
            log(f"  cold start {len(init_ms)}: Init Duration {report.init_ms:.1f} ms, "
                f"client {elapsed:.1f} ms")
    return {"init": init_ms, "client": client_ms}


async def run(args: argparse.Namespace) -> dict[str, Any]:
    w = await warm(args)
    c = await cold(args)
    fresh = await cold(args, FRESH_TEMPLATE)
    warm_p50, http_p50 = percentile(w["api"], 50), percentile(w["http"], 50)
    inproc_p50, cold_p50 = percentile(w["inproc"], 50), percentile(c["client"], 50)
    return {"warm_p50_ms": warm_p50, "warm_p95_ms": percentile(w["api"], 95),
            "inproc_p50_ms": inproc_p50, "http_p50_ms": http_p50,
            "warm_over_http": ratio(warm_p50, http_p50),
            "added_vs_inproc_p50_ms": warm_p50 - inproc_p50,
            "init_p50_ms": percentile(c["init"], 50), "cold_p50_ms": cold_p50,
            "cold_over_warm": ratio(cold_p50, warm_p50),
            "fresh_init_p50_ms": percentile(fresh["init"], 50), "fresh_cold_p50_ms": percentile(fresh["client"], 50),
            # stderr only, not on the figures line
            "_inproc_p95_ms": percentile(w["inproc"], 95), "_http_p95_ms": percentile(w["http"], 95),
            "_report_duration_p50_ms": w["report_duration_p50"]}


def table(f: dict[str, Any]) -> str:
    rows = [("in-process", f["inproc_p50_ms"], f["_inproc_p95_ms"]),
            ("plain HTTP", f["http_p50_ms"], f["_http_p95_ms"]),
            ("start-api warm", f["warm_p50_ms"], f["warm_p95_ms"])]
    return "\n".join(f"  {name:<15} p50 {p50:9.3f} ms   p95 {p95:9.3f} ms" for name, p50, p95 in rows)


def charts(f: dict[str, Any]) -> str:
    """Warm and cold on scales of their own: a cold start is ~50 warm requests."""
    warm = bars([("in-process", f["inproc_p50_ms"]), ("plain HTTP", f["http_p50_ms"]),
                 ("start-api warm", f["warm_p50_ms"]),
                 ("  REPORT Duration", f["_report_duration_p50_ms"])], unit="ms (p50)")
    cold = bars([("start-api warm", f["warm_p50_ms"]), ("start-api cold", f["cold_p50_ms"]),
                 ("  Init Duration", f["init_p50_ms"]), ("cold, no spare", f["fresh_cold_p50_ms"]),
                 ("  Init Duration", f["fresh_init_p50_ms"])], unit="ms (p50)")
    return f"{warm}\n\n{cold}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=200, help="warm requests per side")
    p.add_argument("--warmup", type=int, default=10, help="warm requests per side not counted")
    p.add_argument("--cold", type=int, default=5, help="cold starts to measure")
    p.add_argument("--pause", type=float, default=2.5,
                   help="seconds between cold requests (the function's idle_timeout is 1 s)")
    p.add_argument("--serve-plain", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.serve_plain:
        return serve_plain()
    figures = asyncio.run(run(args))
    print(table(figures), file=sys.stderr)
    print(charts(figures), file=sys.stderr)
    print(figures_line("invoke_overhead", {k: v for k, v in figures.items() if not k.startswith("_")}),
          flush=True)


if __name__ == "__main__":
    main()
