"""Cold starts from a spare interpreter: the function sees exactly what a fresh
process would (environment, working directory, sys.path, its own modules),
the spare is refilled, init errors and Init Duration are reported as before."""
from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

import pytest

from runtime.functions import FunctionHost
from runtime.functions.instance import FunctionInstance
from runtime.functions.spare import Spare
from runtime.gateway.auth import InvocationTokens
from runtime.template.function_spec import FunctionSpec
from tests.support.cli import wait_until_async

HANDLER = """
import os, sys
import helper

def handler(event, context):
    return {"env": dict(os.environ), "cwd": os.getcwd(), "path": sys.path, "helper": helper.__file__,
            "stdin": os.readlink("/proc/self/fd/0"), "llm": type(context.llm).__name__}
"""
# Differ between any two instances, or any two invocations, by design.
PER_INSTANCE = ("AWS_LAMBDA_RUNTIME_API", "AWS_LAMBDA_LOG_STREAM_NAME", "OPENAI_API_KEY")


@pytest.fixture
def function(tmp_path) -> FunctionSpec:
    code = tmp_path / "fn"
    code.mkdir()
    (code / "app.py").write_text(textwrap.dedent(HANDLER))
    (code / "helper.py").write_text("")
    layer = tmp_path / "layer" / "python"
    layer.mkdir(parents=True)
    return FunctionSpec(name="Fn", code_uri=code, handler="app.handler", timeout=30,
                        environment={"GREETING": "hi"}, layers=[layer.parent])


async def _host(functions: dict[str, FunctionSpec], *, spare: bool) -> FunctionHost:
    host = FunctionHost(functions, gateway_url="http://127.0.0.1:9", tokens=InvocationTokens(),
                        log=lambda *_: None, spare=spare)
    await host.start()
    if spare:
        await wait_until_async(host.dispatcher.spares.ready, message="no spare interpreter")
    return host


async def _run(host: FunctionHost, name: str = "Fn") -> tuple[dict, object]:
    result = await host.dispatcher.invoke(name, {})
    report = await result.report
    return json.loads(result.outcome.body), report


def _comparable(seen: dict) -> dict:
    return {**seen, "env": {k: v for k, v in seen["env"].items() if k not in PER_INSTANCE}}


async def test_an_instance_from_a_spare_sees_what_a_fresh_process_sees(function, monkeypatch):
    monkeypatch.setenv("LLMFN_ADMIN_KEY", "admin-secret")  # the service's: in neither
    spared, fresh = await _host({"Fn": function}, spare=True), await _host({"Fn": function}, spare=False)
    try:
        from_spare, report = await _run(spared)
        [inst] = spared.dispatcher.pool("Fn").instances
        assert inst.from_spare
        from_fresh, _ = await _run(fresh)
        assert not fresh.dispatcher.pool("Fn").instances[0].from_spare
    finally:
        await spared.close()
        await fresh.close()
    assert _comparable(from_spare) == _comparable(from_fresh)
    assert set(from_spare["env"]) == set(from_fresh["env"])
    assert "LLMFN_ADMIN_KEY" not in from_spare["env"] and from_spare["env"]["GREETING"] == "hi"
    assert from_spare["cwd"] == str(function.code_uri)
    assert from_spare["helper"] == str(function.code_uri / "helper.py")
    assert from_spare["stdin"] == os.devnull
    assert report.init_duration_ms is not None and "Init Duration" in report.line()


async def test_a_spare_holds_no_secret_and_no_function_until_taken(function, monkeypatch):
    monkeypatch.setenv("LLMFN_ADMIN_KEY", "admin-secret")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "service-secret")
    host = await _host({"Fn": function}, spare=True)
    try:
        spare = host.dispatcher.spares.current().proc
        environ = Path(f"/proc/{spare.pid}/environ").read_bytes().decode()
        assert "secret" not in environ and "AWS_LAMBDA" not in environ and "GREETING" not in environ
        assert os.readlink(f"/proc/{spare.pid}/cwd") == "/"
    finally:
        await host.close()


async def test_the_spare_is_refilled_after_a_cold_start_takes_it(function):
    host = await _host({"Fn": function}, spare=True)
    try:
        first = host.dispatcher.spares.current().proc.pid
        await _run(host)
        assert host.dispatcher.pool("Fn").instances[0].pid == first
        await wait_until_async(host.dispatcher.spares.ready, message="the spare was not refilled")
        assert host.dispatcher.spares.current().proc.pid != first
    finally:
        await host.close()


async def test_a_cold_start_takes_a_spare_that_is_still_starting(function):
    host = FunctionHost({"Fn": function}, gateway_url="http://127.0.0.1:9", tokens=InvocationTokens(),
                        log=lambda *_: None)
    await host.start()
    try:
        assert not host.dispatcher.spares.ready()  # it started with the host: not ready yet
        await _run(host)
        assert host.dispatcher.pool("Fn").instances[0].from_spare
    finally:
        await host.close()


async def test_a_handler_import_error_from_a_spare_is_an_import_module_error(function):
    broken = function.model_copy(update={"handler": "missing.handler"})
    host = await _host({"Fn": broken}, spare=True)
    started: list[FunctionInstance] = []

    def new_instance(*args, **kw) -> FunctionInstance:
        started.append(FunctionInstance(*args, **kw))
        return started[-1]
    host.dispatcher.new_instance = new_instance
    try:
        result = await host.dispatcher.invoke("Fn", {})
        await result.report
    finally:
        await host.close()
    assert [i.from_spare for i in started] == [True]
    assert result.is_error
    assert result.outcome.error()["errorType"] == "Runtime.ImportModuleError"
    assert "Unable to import module 'missing'" in result.outcome.error()["errorMessage"]


async def test_a_function_whose_code_shadows_a_preloaded_module_starts_fresh(function):
    (function.code_uri / "openai").mkdir()
    spare = Spare(proc=None, preloaded=frozenset({"openai", "httpx"}))
    inst = FunctionInstance(function, runtime_api="127.0.0.1:1", gateway_url="http://127.0.0.1:2",
                            log=lambda *_: None)
    assert not inst.can_start_from(spare, inst.environment())
    (function.code_uri / "openai").rmdir()
    assert inst.can_start_from(spare, inst.environment())
    # a variable Python reads only when it starts: the spare started without it
    assert not inst.can_start_from(spare, {**inst.environment(), "PYTHONHASHSEED": "1"})


def test_no_spare_without_functions():
    from runtime.functions.dispatcher import Dispatcher

    d = Dispatcher({}, instances={}, runtime_api_addr="127.0.0.1:0", gateway_url="http://127.0.0.1:0",
                   tokens=InvocationTokens(), spare=True)
    assert d.spares is None

