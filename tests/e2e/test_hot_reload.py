"""Hot reload under ``llmfn start-api`` (and ``serve``): an edited handler is what the next
invocation runs, with no restart; an invocation in flight finishes on the old
code; a template that fails validation keeps the old version serving and the
log says why; ``--no-reload`` keeps the code a warm instance has loaded. The
project's function calls no model, but the gateway keeps a spare llama.cpp worker."""
from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from tests.support.cli import Server, serve_project, server_url, wait_until
from tests.support.gateway import call

pytestmark = pytest.mark.llama

TEMPLATE = """\
AWSTemplateFormatVersion: "2010-09-09"
Transform: AWS::Serverless-2016-10-31
Resources:
  AnswerFunction:
    Type: AWS::Serverless::Function
    Properties:
      CodeUri: {code}
      Handler: {handler}
      Runtime: python3.11
      Timeout: 30
      Events:
        Answer:
          Type: HttpApi
          Properties: {{Path: /answer, Method: GET}}
        Slow:
          Type: HttpApi
          Properties: {{Path: /slow, Method: GET}}
"""

HANDLER = """\
import time

ANSWER = "{answer}"


def handler(event, context):
    if event["rawPath"] == "/slow":
        time.sleep(3)
    return {{"statusCode": 200, "body": ANSWER}}
"""


@pytest.fixture
def project(tmp_path) -> Path:
    root = tmp_path / "project"
    (root / "src").mkdir(parents=True)
    (root / "template.yaml").write_text(TEMPLATE.format(code="src/", handler="app.handler"))
    _write_handler(root, "old")
    return root


def _write_handler(project: Path, answer: str) -> None:
    (project / "src" / "app.py").write_text(HANDLER.format(answer=answer))


def _start_api(project: Path, env: dict, *flags: str) -> Server:
    return Server("start-api", "--template", str(project / "template.yaml"), "--api-port", "0", "--gateway-port", "0",
                  *flags, ready="start-api", env=env)


def _answer(server: Server, path: str = "/answer", url: str | None = None) -> str:
    reply = call(f"{url or server.url}{path}", method="GET")
    assert reply.status == 200, reply.body
    return reply.body.decode()


@pytest.fixture
def running(project, env):
    server = _start_api(project, env)
    yield server
    assert server.stop() == 0


def test_an_edited_handler_runs_at_the_next_invocation_and_one_in_flight_finishes_on_the_old_code(
        project, running):
    assert _answer(running) == "old"
    slow: dict[str, str] = {}
    in_flight = threading.Thread(target=lambda: slow.update(answer=_answer(running, "/slow")))
    in_flight.start()
    wait_until(lambda: running.stderr.count("START RequestId") == 2, message="the slow invocation did not start")
    _write_handler(project, "new")
    running.wait_for(r"reload: function AnswerFunction: new invocations run the changed code")
    assert _answer(running) == "new"
    in_flight.join(60)
    assert slow == {"answer": "old"}


def test_a_template_that_fails_validation_keeps_the_old_version_serving_and_says_why(project, running):
    assert _answer(running) == "old"
    template = project / "template.yaml"
    template.write_text(TEMPLATE.format(code="src/", handler="not a handler!"))
    line = running.wait_for(r"reload: (\S+) is not valid, still serving the previous version: (.*)")
    assert Path(line.group(1)) == template.resolve() and "Handler" in line.group(2)
    assert _answer(running) == "old"
    _write_handler(project, "new")  # the watcher goes on, with the template it last read
    running.wait_for(r"reload: function AnswerFunction: new invocations run the changed code")
    assert _answer(running) == "new"


def test_a_live_template_change_applies_the_handler_and_names_what_needs_a_restart(project, running):
    assert _answer(running) == "old"
    (project / "src" / "other.py").write_text(HANDLER.format(answer="other"))
    events_added = TEMPLATE.format(code="src/", handler="other.handler") + (
        "        Extra:\n          Type: HttpApi\n          Properties: {Path: /extra, Method: GET}\n")
    (project / "template.yaml").write_text(events_added)
    running.wait_for(r"not applied until a restart: events of AnswerFunction")
    wait_until(lambda: _answer(running) == "other", timeout=30, step=0.5, message="the new handler is not served")
    assert call(f"{running.url}/extra", method="GET").status == 404  # a route needs a restart


def test_a_new_codeuri_is_served_and_watched(project, running):
    assert _answer(running) == "old"
    (project / "moved").mkdir()
    (project / "moved" / "app.py").write_text(HANDLER.format(answer="moved"))
    (project / "template.yaml").write_text(TEMPLATE.format(code="moved/", handler="app.handler"))
    wait_until(lambda: _answer(running) == "moved", timeout=30, step=0.5, message="the new CodeUri is not served")
    (project / "moved" / "app.py").write_text(HANDLER.format(answer="moved again"))
    wait_until(lambda: _answer(running) == "moved again", timeout=30, step=0.5,
               message="the new CodeUri is not watched")


def test_no_reload_keeps_the_code_a_warm_instance_loaded(project, env):
    server = _start_api(project, env, "--no-reload")
    try:
        assert _answer(server) == "old"
        _write_handler(project, "new")
        time.sleep(2)  # longer than a reload takes to notice and group changes
        assert _answer(server) == "old"
        assert "reload:" not in server.stderr
    finally:
        assert server.stop() == 0


def test_under_serve_an_edited_handler_replaces_the_template_version_with_no_restart(project, env):
    server = serve_project(project, env)
    try:
        api = server_url(server, "http api")
        assert _answer(server, url=api) == "old"
        _write_handler(project, "new")
        server.wait_for(r"reload: function AnswerFunction: new invocations run the changed code")
        assert _answer(server, url=api) == "new"
    finally:
        assert server.stop() == 0
