"""The dispatcher: picks a warm instance of a function or starts one (cold),
runs one invocation on it with its timeout, and reports it as Lambda does
(START / END / REPORT with duration, init duration and LLM calls and tokens).

Cold starts take the spare interpreter (``spare``) when there is one that can
stand in for a fresh process; the function being debugged starts fresh, under
debugpy, with no timeout while it waits for or runs under the debugger."""
from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from runtime.functions.instance import FunctionInstance, InstanceState, spare_environment
from runtime.functions.invocation import Invocation, Outcome, OutcomeKind
from runtime.functions.logs import FunctionLog, LogLine, stderr_log
from runtime.functions.spare import SpareInterpreters
from runtime.gateway.auth import InvocationTokens, UsageTally
from runtime.template.function_spec import FunctionSpec

log = logging.getLogger("llmfn.functions")


@dataclass
class Report:
    request_id: str
    duration_ms: float
    billed_ms: int
    memory_size: int
    max_memory_mb: int
    init_duration_ms: float | None
    llm: UsageTally = field(default_factory=UsageTally)

    def line(self) -> str:
        parts = [f"REPORT RequestId: {self.request_id}", f"Duration: {self.duration_ms:.2f} ms",
                 f"Billed Duration: {self.billed_ms} ms", f"Memory Size: {self.memory_size} MB",
                 f"Max Memory Used: {self.max_memory_mb} MB"]
        if self.init_duration_ms is not None:
            parts.append(f"Init Duration: {self.init_duration_ms:.2f} ms")
        parts += [f"LLM Calls: {self.llm.calls}",
                  f"LLM Tokens: {self.llm.prompt_tokens}/{self.llm.completion_tokens}"]
        return "\t".join(parts)

    def as_dict(self) -> dict[str, Any]:
        return {"requestId": self.request_id, "durationMs": round(self.duration_ms, 2),
                "billedDurationMs": self.billed_ms, "memorySizeMb": self.memory_size,
                "maxMemoryUsedMb": self.max_memory_mb, "initDurationMs": self.init_duration_ms,
                "llm": self.llm.as_dict()}


@dataclass
class Result:
    """An invocation's answer. ``outcome`` may still be streaming when returned."""
    invocation: Invocation
    outcome: Outcome
    report: asyncio.Future  # Report, once the invocation has finished

    @property
    def is_error(self) -> bool:
        return self.outcome.kind == OutcomeKind.ERROR


class FunctionPool:
    """The instances of one function: warm ones are reused, more start up to
    ``max_instances``; each runs one invocation at a time."""

    def __init__(self, spec: FunctionSpec, dispatcher: Dispatcher, version: int = 1):
        self.spec = spec
        self.version = version
        self.generation = 0  # one more at each swap (a deploy, a rollback or a reload): what instances run
        self.d = dispatcher
        self.instances: list[FunctionInstance] = []
        self._idle: asyncio.Queue[FunctionInstance] = asyncio.Queue()
        self._slots = asyncio.Semaphore(spec.llm.max_instances)

    async def acquire(self) -> FunctionInstance:
        await self._slots.acquire()
        while not self._idle.empty():
            inst = self._idle.get_nowait()
            if inst.state == InstanceState.IDLE and inst.generation == self.generation:
                inst.state = InstanceState.BUSY
                return inst
        return await self._start()

    async def prewarm(self) -> None:
        """Start one instance and let it initialize, so that the first invocation finds
        it warm (``--warm-containers EAGER``)."""
        await self._slots.acquire()
        inst = await self._start()
        await asyncio.wait([inst.ready], timeout=self.spec.timeout)
        inst.prewarmed = True
        self.release(inst, healthy=inst.ready.done() and inst.init_error is None)

    def deploy(self, spec: FunctionSpec, version: int) -> None:
        """New invocations run ``version``; those in flight finish on theirs, and
        instances of earlier swaps stop as soon as they are idle. A reload of local
        files swaps code under the same ``version``."""
        self.spec, self.version, self.generation = spec, version, self.generation + 1
        for inst in list(self.instances):
            if inst.state == InstanceState.IDLE and inst.generation != self.generation:
                asyncio.create_task(self.retire(inst))

    def release(self, inst: FunctionInstance, healthy: bool) -> None:
        self._slots.release()
        if healthy and inst.state == InstanceState.BUSY and inst.generation == self.generation:
            inst.state, inst.last_used = InstanceState.IDLE, time.monotonic()
            self._idle.put_nowait(inst)
        else:
            asyncio.create_task(self.retire(inst, kill=True))

    async def _start(self) -> FunctionInstance:
        inst = self.d.new_instance(self.spec, runtime_api=self.d.runtime_api_addr,
                                   gateway_url=self.d.gateway_url, log=self.d.log,
                                   env_overrides=self.d.env_overrides.get(self.spec.name), version=self.version)
        inst.generation = self.generation
        self.d.instances[inst.id] = inst
        self.instances.append(inst)
        try:
            await inst.start(self.d.spares, debug_port=self.d.debug_port_for(self.spec.name))
        except Exception:
            self._slots.release()
            await self.retire(inst)
            raise
        inst.state = InstanceState.BUSY
        asyncio.create_task(self._watch(inst))
        return inst

    async def _watch(self, inst: FunctionInstance) -> None:
        code = await inst.wait_exit()
        if inst.state != InstanceState.STOPPED:
            log.info("function %s: instance %s exited (code %s)", self.spec.name, inst.pid, code)
        inv = inst.current
        if inv is None and not inst.pending.empty():
            inv = inst.pending.get_nowait()  # died before it picked up its invocation
        if inv is not None and not inv.finished.done():
            if inst.init_error is not None:
                inv.fail(inst.init_error.get("errorType", "Runtime.Unknown"),
                         inst.init_error.get("errorMessage", "init failed"))
            else:
                inv.fail("Runtime.ExitError", f"RequestId: {inv.request_id} Error: Runtime exited "
                                              f"with error: exit status {code}")
        if not inst.ready.done():
            inst.ready.set_result(None)
        inst.state = InstanceState.STOPPED
        self._forget(inst)

    async def retire(self, inst: FunctionInstance, kill: bool = False) -> None:
        await inst.stop(kill=kill)
        self._forget(inst)

    def _forget(self, inst: FunctionInstance) -> None:
        self.d.instances.pop(inst.id, None)
        if inst in self.instances:
            self.instances.remove(inst)

    async def reap_idle(self) -> None:
        now = time.monotonic()
        for inst in list(self.instances):
            if inst.state == InstanceState.IDLE and now - inst.last_used >= self.spec.llm.idle_timeout:
                log.info("function %s: instance %s idle, stopping", self.spec.name, inst.pid)
                await self.retire(inst)

    async def close(self) -> None:
        await asyncio.gather(*(self.retire(i) for i in list(self.instances)), return_exceptions=True)


class Dispatcher:
    def __init__(self, functions: dict[str, FunctionSpec], *, instances: dict, runtime_api_addr: str,
                 gateway_url: str, tokens: InvocationTokens,
                 log: FunctionLog = stderr_log,
                 env_overrides: dict[str, dict[str, str]] | None = None,
                 new_instance: Callable[..., FunctionInstance] = FunctionInstance,
                 spare: bool = False, debug: tuple[int, str] | None = None):
        self.functions = functions
        self.instances = instances  # the Runtime API's registry: id -> live instance
        self.new_instance = new_instance  # starts one instance's process; FunctionInstance's arguments
        self.runtime_api_addr = runtime_api_addr
        self.gateway_url = gateway_url
        self.tokens = tokens
        self.log = log
        self.env_overrides = env_overrides or {}
        self.pools = {name: FunctionPool(spec, self) for name, spec in functions.items()}
        self._reaper: asyncio.Task | None = None
        # None with no function: a spare only while functions are served
        self.spares = SpareInterpreters(spare_environment()) if spare and functions else None
        self.debug = debug  # (port, function): that function's next instance waits for a debugger

    def start(self) -> None:
        self._reaper = asyncio.create_task(self._reap())
        if self.spares is not None:
            self.spares.start()

    def debug_port_for(self, name: str) -> int | None:
        """The debug port for a new instance of ``name``: only while no other
        instance holds it, so a second concurrent instance starts normally."""
        if self.debug is None or self.debug[1] != name:
            return None
        port = self.debug[0]
        busy = any(i.debug_port == port and i.state != InstanceState.STOPPED for i in self.instances.values())
        return None if busy else port

    async def _reap(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            for pool in self.pools.values():
                await pool.reap_idle()

    async def close(self) -> None:
        if self._reaper:
            self._reaper.cancel()
        if self.spares is not None:
            await self.spares.close()
        await asyncio.gather(*(p.close() for p in self.pools.values()), return_exceptions=True)

    async def prewarm(self) -> None:
        """One initialized instance of every function."""
        await asyncio.gather(*(p.prewarm() for p in self.pools.values()))

    def pool(self, name: str) -> FunctionPool:
        try:
            return self.pools[name]
        except KeyError:
            raise KeyError(f"Function not found: {name}") from None

    async def invoke(self, name: str, event: Any, *, client_context: str | None = None) -> Result:
        """Run one invocation. Returns when the instance has answered (a stream may
        still be flowing); ``Result.report`` resolves when it has finished."""
        pool = self.pool(name)
        body = event if isinstance(event, bytes) else json.dumps(event).encode()
        inst = await pool.acquire()
        spec = inst.spec  # the code and configuration this instance was started with
        cold = inst.invocations == 0 and not inst.prewarmed
        inv = Invocation(function=name, event=body, timeout=spec.timeout, client_context=client_context)
        inv.token = self.tokens.issue(name, inv.request_id, spec.llm.models,
                                      reads_all_usage=spec.llm.usage_access == "all")
        inv.version = inst.version
        self._emit(inv, f"START RequestId: {inv.request_id} Version: {inst.version}")
        inst.invocations += 1
        inst.pending.put_nowait(inv)
        report: asyncio.Future = asyncio.get_running_loop().create_future()
        if cold:  # the init phase; a debugged instance waits for its debugger with no timeout
            await asyncio.wait([inst.ready], timeout=None if inst.debug_port is not None else spec.timeout)
        if inst.init_error is not None:
            inv.fail(inst.init_error.get("errorType", "Runtime.Unknown"),
                     inst.init_error.get("errorMessage", "init failed"))
        timer = asyncio.create_task(self._finish(pool, inst, inv, cold, report))
        timer.add_done_callback(lambda t: t.exception() if not t.cancelled() else None)
        outcome = await inv.outcome
        return Result(inv, outcome, report)

    def _emit(self, inv: Invocation, line: str) -> None:
        inv.logs.append(line)
        self.log(LogLine(inv.function, line, inv.request_id, inv.version))

    async def _finish(self, pool: FunctionPool, inst: FunctionInstance, inv: Invocation,
                      cold: bool, report: asyncio.Future) -> None:
        spec = inst.spec  # the instance's own: a swap while it runs does not change its limits
        # Under a debugger the function's timeout is suspended: a paused handler is not a hung one.
        remaining = (None if inst.debug_port is not None
                     else max(0.0, inv.started + spec.timeout - time.monotonic()))
        try:
            await asyncio.wait_for(asyncio.shield(inv.finished), remaining)
        except TimeoutError:
            inv.fail("Sandbox.Timedout", f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {inv.request_id} "
                                         f"Task timed out after {spec.timeout:.2f} seconds")
        duration = (time.monotonic() - inv.started) * 1000
        healthy = inv.failure is None and inst.init_error is None and inst.state == InstanceState.BUSY
        if inst.current is None and not inst.pending.empty():
            inst.pending.get_nowait()  # never picked up (init failed or timed out)
        inst.current = None
        usage = self.tokens.revoke(inv.token)
        rep = Report(inv.request_id, duration, max(1, math.ceil(duration)), spec.memory_size,
                     inst.max_memory_mb(), inst.init_duration_ms if cold else None, usage)
        self._emit(inv, f"END RequestId: {inv.request_id}")
        self._emit(inv, rep.line())
        pool.release(inst, healthy)
        report.set_result(rep)
