"""One reload without a watcher or a process: what a template change swaps in,
what it leaves for a restart, a template that fails validation, and a function
on a deployed version, which local changes leave alone."""
from __future__ import annotations

import logging
from pathlib import Path

import pytest

from runtime.functions import Deployments, Dispatcher, FunctionHost
from runtime.functions.deployments import Registration
from runtime.functions.reload import Reloader
from runtime.gateway.auth import InvocationTokens
from runtime.template import HttpEvent, Template, TemplateError
from runtime.template.function_spec import FunctionLlm, FunctionSpec


def _spec(code: Path, **kw) -> FunctionSpec:
    return FunctionSpec(**{"name": "Fn", "code_uri": code, "handler": "app.handler", **kw})


def _host(spec: FunctionSpec, deployments: Deployments | None = None) -> FunctionHost:
    host = FunctionHost({"Fn": spec}, gateway_url="http://127.0.0.1:0", tokens=InvocationTokens(),
                        deployments=deployments)
    # no instance starts: a reload only swaps what the next invocation starts
    host.dispatcher = Dispatcher(host.functions, instances={}, runtime_api_addr="127.0.0.1:0",
                                 gateway_url=host.gateway_url, tokens=host.tokens, new_instance=None)
    return host


@pytest.fixture
def code(tmp_path) -> Path:
    (tmp_path / "src").mkdir()
    return tmp_path / "src"


def _reloader(host: FunctionHost, tmp_path: Path, read) -> Reloader:
    return Reloader(host, Template(functions=dict(host.functions)), tmp_path / "template.yaml", read)


async def test_a_changed_handler_is_swapped_in_and_a_new_route_is_left_for_a_restart(tmp_path, code, caplog):
    running = _spec(code, timeout=3)
    host = _host(running)
    route = HttpEvent(name="Extra", type="HttpApi", path="/extra", method="GET")
    changed = _spec(code, handler="other.handler", timeout=9, events=[route], llm=FunctionLlm(max_instances=2))
    reloader = _reloader(host, tmp_path, lambda: Template(functions={"Fn": changed}))
    with caplog.at_level(logging.INFO, "llmfn.reload"):
        await reloader.apply({(tmp_path / "template.yaml").resolve()})
    pool = host.dispatcher.pool("Fn")
    assert pool.generation == 1 and pool.spec.handler == "other.handler" and pool.spec.timeout == 9
    assert pool.spec.events == [] and pool.spec.llm.max_instances == 10  # as the running parts were wired
    assert "not applied until a restart: events of Fn, Metadata.llmfn of Fn" in caplog.text
    caplog.clear()
    reloader.read = lambda: Template(functions={"Fn": _spec(code, handler="third.handler")})  # route taken out
    await reloader.apply({(tmp_path / "template.yaml").resolve()})
    assert pool.spec.handler == "third.handler" and "restart" not in caplog.text  # as it runs again


async def test_a_template_that_fails_validation_changes_nothing_and_says_why_with_its_path(tmp_path, code, caplog):
    host = _host(_spec(code))

    def broken() -> Template:
        raise TemplateError("Resources.Fn.Properties.Handler: must look like module.function")

    reloader = _reloader(host, tmp_path, broken)
    await reloader.apply({(tmp_path / "template.yaml").resolve(), (code / "app.py").resolve()})
    assert host.dispatcher.pool("Fn").generation == 0 and host.functions["Fn"].handler == "app.handler"
    assert f"reload: {(tmp_path / 'template.yaml').resolve()} is not valid, still serving the previous " \
           "version: Resources.Fn.Properties.Handler" in caplog.text


async def test_an_edited_file_under_codeuri_or_a_layer_swaps_and_one_elsewhere_does_not(tmp_path, code):
    layer = tmp_path / "layer"
    host = _host(_spec(code, layers=[layer]))
    reloader = _reloader(host, tmp_path, lambda: pytest.fail("the template did not change"))
    await reloader.apply({(tmp_path / "notes.txt").resolve()})
    assert host.dispatcher.pool("Fn").generation == 0
    await reloader.apply({(code / "app.py").resolve()})
    assert host.dispatcher.pool("Fn").generation == 1
    await reloader.apply({(layer / "python" / "shared.py").resolve()})
    assert host.dispatcher.pool("Fn").generation == 2


async def test_a_function_on_a_deployed_version_is_not_replaced_by_local_changes(tmp_path, code, caplog,
                                                                                  db_target):
    deployments = Deployments(tmp_path / "deployments", db_target("deployments.sqlite3"))
    deployments.register({"Fn": Registration("a" * 64)})
    deployments.register({"Fn": Registration("b" * 64)})  # version 2, from llmfn deploy
    host = _host(_spec(code), deployments)
    with caplog.at_level(logging.INFO, "llmfn.reload"):
        await _reloader(host, tmp_path, Template).apply({(code / "app.py").resolve()})
    assert host.dispatcher.pool("Fn").generation == 0
    assert "function Fn runs a deployed version; local changes are not applied" in caplog.text
    deployments.set_current("Fn", 1)  # rolled back to the template's version: local changes apply again
    await _reloader(host, tmp_path, Template).apply({(code / "app.py").resolve()})
    assert host.dispatcher.pool("Fn").generation == 1
