"""The AWS Lambda Runtime API, served to function instances.

Each instance reaches it at ``AWS_LAMBDA_RUNTIME_API=127.0.0.1:PORT/i/<id>``, the
id 128 random bits that only the instance's environment holds (a path for any other
id is a 404, so another local process cannot take an instance's invocations), and
speaks the real protocol (``/2018-06-01/runtime/invocation/next``, ``.../response``,
``.../error``, ``/init/error``), so any Lambda runtime client works. Responses
may stream (``Lambda-Runtime-Function-Response-Mode: streaming``). Two extra
headers on ``next`` carry llmfn's gateway URL and the invocation token."""
from __future__ import annotations

import asyncio
import json
from typing import Protocol

from aiohttp import web

from runtime.functions.invocation import Invocation, Outcome, OutcomeKind
from runtime.template.pseudo import function_arn

PREFIX = "/i/{iid}/2018-06-01/runtime"


class Instance(Protocol):
    """What the Runtime API needs of an instance (see ``runtime.functions.instance``)."""
    id: str
    pending: asyncio.Queue
    current: Invocation | None
    gateway_url: str

    def polled(self) -> None: ...
    def init_failed(self, error: dict) -> None: ...


INSTANCES = web.AppKey("instances", dict)


def _instance(request: web.Request) -> Instance:
    inst = request.app[INSTANCES].get(request.match_info["iid"])
    if inst is None:
        raise web.HTTPNotFound(text=json.dumps({"errorMessage": "unknown instance"}))
    return inst


def _invocation(request: web.Request) -> tuple[Instance, Invocation]:
    inst = _instance(request)
    inv = inst.current
    if inv is None or inv.request_id != request.match_info["rid"]:
        raise web.HTTPBadRequest(text=json.dumps({"errorMessage": "InvalidRequestID",
                                                  "errorType": "InvalidRequestID"}))
    return inst, inv


async def next_invocation(request: web.Request) -> web.Response:
    inst = _instance(request)
    inst.polled()
    inv: Invocation = await inst.pending.get()
    inst.current = inv
    inv.begin()
    headers = {
        "Lambda-Runtime-Aws-Request-Id": inv.request_id,
        "Lambda-Runtime-Deadline-Ms": str(inv.deadline_ms),
        "Lambda-Runtime-Invoked-Function-Arn": function_arn(inv.function),
        "Lambda-Runtime-Trace-Id": f"Root=1-{inv.request_id[:8]}-{inv.request_id.replace('-', '')[:24]};Sampled=0",
        "Lambda-Runtime-Llmfn-Gateway": inst.gateway_url,
        "Lambda-Runtime-Llmfn-Token": inv.token,
        "Content-Type": "application/json",
    }
    if inv.client_context:
        headers["Lambda-Runtime-Client-Context"] = inv.client_context
    return web.Response(body=inv.event, headers=headers)


async def post_response(request: web.Request) -> web.Response:
    _, inv = _invocation(request)
    content_type = request.headers.get("Content-Type", "application/json")
    if request.headers.get("Lambda-Runtime-Function-Response-Mode", "").lower() == "streaming":
        chunks: asyncio.Queue = asyncio.Queue()
        inv.answer(Outcome(OutcomeKind.STREAM, content_type=content_type, chunks=chunks))
        try:
            async for chunk in request.content.iter_any():
                chunks.put_nowait(chunk)
        finally:
            chunks.put_nowait(None)
    else:
        inv.answer(Outcome(OutcomeKind.RESPONSE, await request.read(), content_type))
    inv.finish()
    return web.json_response({"status": "OK"}, status=202)


async def post_error(request: web.Request) -> web.Response:
    _, inv = _invocation(request)
    inv.answer(Outcome(OutcomeKind.ERROR, await request.read()))
    inv.finish()
    return web.json_response({"status": "OK"}, status=202)


async def post_init_error(request: web.Request) -> web.Response:
    inst = _instance(request)
    try:
        error = json.loads(await request.read())
    except ValueError:
        error = {"errorMessage": "init failed", "errorType": "Runtime.Unknown"}
    inst.init_failed(error)
    return web.json_response({"status": "OK"}, status=202)


def build_runtime_api(instances: dict[str, Instance]) -> web.Application:
    """The Runtime API over ``instances`` (id -> instance), which the dispatcher keeps."""
    app = web.Application(client_max_size=6 * 1024 * 1024)  # Lambda's 6 MB payload limit
    app[INSTANCES] = instances
    app.router.add_get(PREFIX + "/invocation/next", next_invocation)
    app.router.add_post(PREFIX + "/invocation/{rid}/response", post_response)
    app.router.add_post(PREFIX + "/invocation/{rid}/error", post_error)
    app.router.add_post(PREFIX + "/init/error", post_init_error)
    return app
