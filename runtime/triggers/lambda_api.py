"""The Lambda Invoke API (``POST /2015-03-31/functions/{name}/invocations``), so
``boto3.client("lambda", endpoint_url=...).invoke(...)`` works against the
emulator, with ``FunctionError`` on handler errors and ``LogType: Tail``.

Callers authenticate like the gateway's (its ``Authenticator``): with keys
required an invoke needs a key, as ``Authorization: Bearer KEY`` or as the
access key id of a SigV4-signed request (boto3, the AWS CLI); deploy and
rollback always need the admin key."""
from __future__ import annotations

import asyncio
import base64
import json
import re
from typing import Awaitable, Callable

from aiohttp import web

from runtime.errors import AuthenticationFailed, LlmfnError
from runtime.functions import DeployError, FunctionService, StagedBundle
from runtime.gateway.auth import Authenticator, bearer_token

SERVICE = web.AppKey("functions", FunctionService)
_BACKGROUND = web.AppKey("background", set)


def _aws_error(status: int, error_type: str, message: str) -> web.Response:
    return web.json_response({"Type": "User", "Message": message, "__type": error_type}, status=status,
                             headers={"x-amzn-ErrorType": error_type})


def _function_name(raw: str) -> str:
    # Accepts a name, a partial ARN or a full ARN, like the real API.
    return raw.split(":function:")[-1].split(":")[0]


async def invoke(request: web.Request) -> web.StreamResponse:
    service = request.app[SERVICE]
    name = _function_name(request.match_info["name"])
    if name not in service.functions:
        return _aws_error(404, "ResourceNotFoundException",
                          f"Function not found: arn:aws:lambda:us-east-1:123456789012:function:{name}")
    kind = request.headers.get("X-Amz-Invocation-Type", "RequestResponse")
    payload = await request.read() or b"{}"
    try:
        json.loads(payload)
    except ValueError:
        return _aws_error(400, "InvalidRequestContentException", "Could not parse request body into json")
    context = request.headers.get("X-Amz-Client-Context")
    client_context = base64.b64decode(context).decode() if context else None
    if kind == "DryRun":
        return web.Response(status=204)
    if kind == "Event":
        task = asyncio.create_task(_run_async(service, name, payload, client_context))
        request.app[_BACKGROUND].add(task)
        task.add_done_callback(request.app[_BACKGROUND].discard)
        return web.Response(status=202)
    result = await service.invoke(name, payload, client_context=client_context)
    body = b"".join([chunk async for chunk in result.outcome.stream()])
    report = await result.report
    headers = {"X-Amz-Executed-Version": str(result.invocation.version), "Content-Type": "application/json"}
    if result.invocation.failure is not None or result.is_error:
        headers["X-Amz-Function-Error"] = "Unhandled"
        if result.invocation.failure is not None:
            body = json.dumps(result.invocation.failure).encode()
    if request.headers.get("X-Amz-Log-Type") == "Tail":
        tail = "\n".join(result.invocation.logs).encode()[-4096:]
        headers["X-Amz-Log-Result"] = base64.b64encode(tail).decode()
    headers["X-Llmfn-Report"] = json.dumps(report.as_dict())
    return web.Response(body=body, headers=headers)


async def _run_async(service: FunctionService, name: str, payload: bytes, client_context) -> None:
    result = await service.invoke(name, payload, client_context=client_context)
    async for _ in result.outcome.stream():
        pass
    await result.report


# ---- deployments (llmfn deploy / rollback) -------------------------------------

_SIGV4_ACCESS_KEY = re.compile(r"Credential=([^/,\s]+)/")
_CONTROL_ROUTES = frozenset({"deploy", "rollback"})  # the admin key's alone


def _caller_token(request: web.Request) -> str:
    """The caller's key: a bearer token, or the access key id of a SigV4 signature."""
    header = request.headers.get("Authorization", "")
    if header.startswith("AWS4-HMAC-SHA256 "):
        m = _SIGV4_ACCESS_KEY.search(header)
        return m.group(1) if m else ""
    return bearer_token(header)


@web.middleware
async def _auth_middleware(request: web.Request, handler):
    auth, token = request.app[_AUTH], _caller_token(request)
    try:
        if request.match_info.route.name in _CONTROL_ROUTES:
            auth.authenticate_admin(token)
        else:
            auth.authenticate_token(token)
    except AuthenticationFailed as err:
        return _aws_error(err.status, "UnrecognizedClientException",
                          f"{err.message} (a signed request carries it as its access key id)")
    except LlmfnError as err:
        return _aws_error(err.status, "AccessDeniedException", err.message)
    return await handler(request)


async def deploy(request: web.Request) -> web.Response:
    """Fetch every function's bundle from S3, check them all, then switch them all."""
    body = await request.json()
    fetch = request.app[_FETCH]
    bucket = body["bucket"]
    try:
        bundles = {}
        for name, fn in body["functions"].items():
            layers = [(await fetch(bucket, layer["key"]), layer["sha256"]) for layer in fn.get("layers", [])]
            bundles[name] = StagedBundle(await fetch(bucket, fn["key"]), fn["sha256"], layers, fn.get("config", {}))
        result = await request.app[SERVICE].deploy(bundles)
    except (DeployError, KeyError, FileNotFoundError) as exc:
        return _aws_error(400, "InvalidParameterValueException", f"deploy refused, nothing changed: {exc}")
    return web.json_response({"functions": result})


async def rollback(request: web.Request) -> web.Response:
    body = await request.json() if request.can_read_body else {}
    to = body.get("FunctionVersion")
    try:
        out = request.app[SERVICE].rollback(request.match_info["name"], int(to) if to else None)
    except DeployError as exc:
        return _aws_error(400, "InvalidParameterValueException", str(exc))
    return web.json_response({"Name": "live", "FunctionVersion": str(out["version"])})


async def versions(request: web.Request) -> web.Response:
    name = _function_name(request.match_info["name"])
    if name not in request.app[SERVICE].functions:
        return _aws_error(404, "ResourceNotFoundException", f"Function not found: {name}")
    return web.json_response(request.app[SERVICE].versions(name))


Fetch = Callable[[str, str], Awaitable[bytes]]
_FETCH = web.AppKey("fetch", object)
_AUTH = web.AppKey("auth", Authenticator)


def build_lambda_api(service: FunctionService, auth: Authenticator, *,
                     fetch: Fetch | None = None) -> web.Application:
    app = web.Application(middlewares=[_auth_middleware], client_max_size=6 * 1024 * 1024)
    app[SERVICE] = service
    app[_AUTH] = auth
    app[_BACKGROUND] = set()
    app[_FETCH] = fetch
    app.router.add_post("/2015-03-31/functions/{name}/invocations", invoke)
    app.router.add_get("/2015-03-31/functions/{name}/versions", versions)
    # UpdateAlias on the alias llmfn serves ("live") is how a rollback is said.
    app.router.add_put("/2015-03-31/functions/{name}/aliases/live", rollback, name="rollback")
    if fetch is not None:
        app.router.add_post("/llmfn/deployments", deploy, name="deploy")
    return app
