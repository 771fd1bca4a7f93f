"""The dispatcher without a process: a warm instance is reused, at most
``max_instances`` run and further invocations wait for one, an invocation
over its timeout fails as Lambda's does, and an instance that dies fails its
invocation and is replaced. Instances are fakes that take invocations the way
the Runtime API hands them out and answer with a test's handler."""
from __future__ import annotations

import asyncio
import itertools
import json
import signal
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from runtime.functions.dispatcher import Dispatcher
from runtime.functions.invocation import Outcome
from runtime.gateway.auth import InvocationTokens
from runtime.template.function_spec import FunctionLlm, FunctionSpec
from tests.support.cli import wait_until_async

PIDS = itertools.count(70_000)
Handler = Callable[[dict], Awaitable[Any]]


class Exit(Exception):
    """Raised by a handler: the fake instance's process exits with ``code``."""

    def __init__(self, code: int):
        self.code = code


class FakeInstance:
    """Stands in for a function instance's process: polls for the next invocation
    as the bootstrap does, runs ``handler`` on its event, answers."""

    def __init__(self, spec: FunctionSpec, *, handler: Handler, version: int = 1, **_):
        self.spec, self.handler, self.version = spec, handler, version
        self.id, self.pid = uuid.uuid4().hex, next(PIDS)
        self.state = "starting"
        self.pending: asyncio.Queue = asyncio.Queue()
        self.current = None
        self.ready = asyncio.get_running_loop().create_future()
        self.init_error: dict | None = None
        self.init_duration_ms: float | None = None
        self.last_used = 0.0
        self.invocations = 0
        self.prewarmed = False
        self.stop_signal: int | None = None
        self.debug_port: int | None = None
        self._exit = asyncio.get_running_loop().create_future()
        self._loop: asyncio.Task | None = None

    async def start(self, spares=None, debug_port: int | None = None) -> None:
        self._loop = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            self.polled()
            inv = await self.pending.get()
            self.current = inv
            inv.begin()
            try:
                body = await self.handler(json.loads(inv.event))
            except Exit as exc:
                self._exited(exc.code)
                return
            inv.answer(Outcome("response", json.dumps(body).encode()))
            inv.finish()

    def polled(self) -> None:
        if self.init_duration_ms is None:
            self.init_duration_ms = 1.0
            self.ready.set_result(None)

    def _exited(self, code: int) -> None:
        if not self._exit.done():
            self._exit.set_result(code)

    async def wait_exit(self) -> int:
        return await self._exit

    async def stop(self, kill: bool = False) -> None:
        self.state = "stopped"
        if not self._exit.done():
            self.stop_signal = signal.SIGKILL if kill else signal.SIGTERM
            self._loop.cancel()
            self._exited(-self.stop_signal)

    def max_memory_mb(self) -> int:
        return 0


class FakeInstances:
    """The ``new_instance`` a dispatcher is given: every fake it started, in order."""

    def __init__(self, handler: Handler):
        self.handler = handler
        self.started: list[FakeInstance] = []

    def __call__(self, spec: FunctionSpec, **kw) -> FakeInstance:
        inst = FakeInstance(spec, handler=self.handler, **kw)
        self.started.append(inst)
        return inst


async def echo(event: dict) -> dict:
    return {"echo": event}


@pytest.fixture
async def dispatch():
    """Make a dispatcher of one function ``Fn`` on fake instances; closed at the end."""
    made: list[Dispatcher] = []

    def make(handler: Handler = echo, *, timeout: float = 3.0, **llm) -> tuple[Dispatcher, FakeInstances]:
        spec = FunctionSpec(name="Fn", code_uri=Path("."), handler="app.handler", timeout=timeout,
                            llm=FunctionLlm(**llm))
        instances = FakeInstances(handler)
        d = Dispatcher({"Fn": spec}, instances={}, runtime_api_addr="127.0.0.1:0",
                       gateway_url="http://127.0.0.1:0", tokens=InvocationTokens(),
                       log=lambda line: None, new_instance=instances)
        made.append(d)
        return d, instances

    yield make
    for d in made:
        await d.close()


async def test_a_warm_instance_is_reused_and_only_the_cold_start_reports_init(dispatch):
    d, instances = dispatch()
    first = await d.invoke("Fn", {"n": 1})
    first_report = await first.report
    second = await d.invoke("Fn", {"n": 2})
    second_report = await second.report
    assert json.loads(second.outcome.body) == {"echo": {"n": 2}}
    assert len(instances.started) == 1 and instances.started[0].invocations == 2
    assert first_report.init_duration_ms is not None and second_report.init_duration_ms is None
    assert "Init Duration" in first_report.line() and "Init Duration" not in second_report.line()


async def test_prewarming_starts_an_instance_that_the_first_invocation_finds_warm(dispatch):
    d, instances = dispatch()
    await d.prewarm()
    [inst] = instances.started
    assert inst.ready.done() and inst.invocations == 0  # initialized before anything asked for it
    result = await d.invoke("Fn", {"n": 1})
    report = await result.report
    assert json.loads(result.outcome.body) == {"echo": {"n": 1}}
    assert len(instances.started) == 1 and report.init_duration_ms is None
    assert "Init Duration" not in report.line()


async def test_no_more_than_max_instances_run_and_further_invocations_wait_for_one(dispatch):
    release = asyncio.Event()

    async def slow(event):
        await release.wait()
        return event

    d, instances = dispatch(slow, max_instances=2)
    calls = [asyncio.create_task(d.invoke("Fn", {"n": n})) for n in range(3)]
    await wait_until_async(lambda: sum(i.current is not None for i in instances.started) == 2)
    await asyncio.sleep(0.1)  # the third has had every chance to start an instance of its own
    assert len(instances.started) == 2 and not any(c.done() for c in calls)
    release.set()
    results = await asyncio.gather(*calls)
    assert sorted(json.loads(r.outcome.body)["n"] for r in results) == [0, 1, 2]
    assert len(instances.started) == 2  # the third ran on a warm one


async def test_an_invocation_over_its_timeout_fails_as_timed_out_and_its_instance_is_killed(dispatch):
    async def hangs(event):
        await asyncio.Event().wait()

    d, instances = dispatch(hangs, timeout=0.2)
    result = await d.invoke("Fn", {})
    assert result.is_error
    assert result.outcome.error()["errorType"] == "Sandbox.Timedout"
    assert "Task timed out after 0.20 seconds" in result.outcome.error()["errorMessage"]
    await result.report
    [inst] = instances.started
    await wait_until_async(lambda: inst.stop_signal == signal.SIGKILL)
    assert d.pool("Fn").instances == []


async def test_an_instance_that_dies_fails_its_invocation_and_the_next_starts_a_new_one(dispatch):
    async def dies_once(event):
        if event.get("die"):
            raise Exit(3)
        return event

    d, instances = dispatch(dies_once)
    result = await d.invoke("Fn", {"die": True})
    assert result.is_error
    error = result.outcome.error()
    assert error["errorType"] == "Runtime.ExitError" and "exit status 3" in error["errorMessage"]
    await result.report
    after = await d.invoke("Fn", {"n": 1})
    assert json.loads(after.outcome.body) == {"n": 1}
    assert len(instances.started) == 2


async def test_idle_instances_stop_after_the_idle_timeout(dispatch):
    d, instances = dispatch(idle_timeout=0.1)
    await (await d.invoke("Fn", {})).report
    await asyncio.sleep(0.2)
    await d.pool("Fn").reap_idle()
    [inst] = instances.started
    assert inst.stop_signal == signal.SIGTERM and d.pool("Fn").instances == []


async def test_an_unknown_function_is_refused_by_name(dispatch):
    d, _ = dispatch()
    with pytest.raises(KeyError, match="Function not found: Nope"):
        await d.invoke("Nope", {})


async def test_a_swap_under_the_same_version_starts_new_instances_and_one_in_flight_finishes_on_its_own(dispatch):
    release = asyncio.Event()

    async def slow_when_asked(event):
        if event.get("slow"):
            await release.wait()
        return event

    d, instances = dispatch(slow_when_asked)
    await (await d.invoke("Fn", {})).report
    in_flight = asyncio.create_task(d.invoke("Fn", {"slow": True}))
    await wait_until_async(lambda: instances.started[0].current is not None and not release.is_set())
    pool = d.pool("Fn")
    pool.deploy(pool.spec.model_copy(update={"timeout": 9.0}), pool.version)  # a reload: same version
    after = await d.invoke("Fn", {"n": 1})
    assert json.loads(after.outcome.body) == {"n": 1}
    assert len(instances.started) == 2 and instances.started[1].spec.timeout == 9.0
    release.set()
    old = await in_flight
    assert json.loads(old.outcome.body) == {"slow": True} and (await old.report).memory_size == 128
    await wait_until_async(lambda: instances.started[0].stop_signal is not None)  # retired once done
    assert pool.instances == [instances.started[1]]
