"""The Lambda Invoke API (``POST /2015-03-31/functions/{name}/invocations``), so
``boto3.client("lambda", endpoint_url=...).invoke(...)`` works against the
emulator, with ``FunctionError`` on handler errors and ``LogType: Tail``.
``Event`` invocations are handed to the asynchronous invoker (durable, bounded);
a client context is checked here, before it can reach an instance.

Callers authenticate like the gateway's (its ``Authenticator``): with keys
required an invoke needs a key, as ``Authorization: Bearer KEY`` or as the
access key id of a SigV4-signed request (boto3, the AWS CLI); deploy and
rollback always need the admin key."""
from __future__ import annotations

import asyncio
import base64
import binascii
import json
import re
import uuid
from collections.abc import Awaitable, Callable

from aiohttp import web
from pydantic import BaseModel, Field, ValidationError

from runtime.errors import AuthenticationFailed, LlmfnError
from runtime.functions import DeployError, FunctionHost, StagedBundle
from runtime.gateway.auth import Authenticator, bearer_token
from runtime.template.pseudo import function_arn
from runtime.triggers.asyncinvoke import AsyncInvoker, QueueFull

SERVICE = web.AppKey("functions", FunctionHost)
_BACKGROUND = web.AppKey("background", set)
_EVENTS = web.AppKey("events", object)  # the AsyncInvoker, or None in the emulator
CLIENT_CONTEXT_MAX = 3583  # Lambda's limit on the base64 text
EVENT_PAYLOAD_MAX = 256 * 1024  # Lambda's limit for asynchronous invocations
IN_MEMORY_EVENT_LIMIT = 100


def _aws_error(status: int, error_type: str, message: str, headers: dict | None = None) -> web.Response:
    return web.json_response({"Type": "User", "Message": message, "__type": error_type}, status=status,
                             headers={"x-amzn-ErrorType": error_type, **(headers or {})})


def _function_name(raw: str) -> str:
    # Accepts a name, a partial ARN or a full ARN, like the real API.
    return raw.split(":function:")[-1].split(":")[0]


async def invoke(request: web.Request) -> web.StreamResponse:
    service = request.app[SERVICE]
    name = _function_name(request.match_info["name"])
    if name not in service.functions:
        return _aws_error(404, "ResourceNotFoundException",
                          f"Function not found: {function_arn(name)}")
    kind = request.headers.get("X-Amz-Invocation-Type", "RequestResponse")
    if kind not in ("RequestResponse", "Event", "DryRun"):
        return _aws_error(400, "InvalidParameterValueException",
                          "InvocationType must be one of RequestResponse, Event, DryRun")
    payload = await request.read() or b"{}"
    try:
        json.loads(payload)
    except ValueError:
        return _aws_error(400, "InvalidRequestContentException", "Could not parse request body into json")
    try:
        client_context = _client_context(request.headers.get("X-Amz-Client-Context"))
    except ValueError as exc:
        return _aws_error(400, "InvalidRequestContentException", str(exc))
    if kind == "DryRun":
        return web.Response(status=204)
    if kind == "Event":
        return await _accept_event(request, name, payload)
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


def _client_context(header: str | None) -> str | None:
    """``X-Amz-Client-Context``: base64 of a JSON object, passed on re-encoded as
    compact ASCII JSON, so nothing in it can break the Runtime API's headers."""
    if not header:
        return None
    if len(header) > CLIENT_CONTEXT_MAX:
        raise ValueError(f"Client context must be at most {CLIENT_CONTEXT_MAX} bytes")
    try:
        value = json.loads(base64.b64decode(header, validate=True).decode())
    except (ValueError, UnicodeDecodeError, binascii.Error):
        value = None
    if not isinstance(value, dict):
        raise ValueError("Client context must be a valid Base64-encoded JSON object")
    return json.dumps(value, separators=(",", ":"))


async def _accept_event(request: web.Request, name: str, payload: bytes) -> web.Response:
    """``InvocationType: Event``: 202 once the event is recorded, 429 when the queue is full.
    Lambda does not pass a client context to asynchronous invocations, nor does this."""
    if len(payload) > EVENT_PAYLOAD_MAX:
        return _aws_error(413, "RequestEntityTooLargeException",
                          f"Request must be smaller than {EVENT_PAYLOAD_MAX} bytes for the InvokeAsync operation")
    request_id = str(uuid.uuid4())
    events = request.app[_EVENTS]
    try:
        if events is not None:
            await events.submit(name, json.loads(payload), event_id=f"invoke/{request_id}", bounded=True)
        else:
            _run_in_memory(request.app, request.app[SERVICE], name, payload)
    except QueueFull as exc:
        return _aws_error(429, "TooManyRequestsException", f"Rate Exceeded. {exc}", {"Retry-After": "1"})
    return web.Response(status=202, headers={"x-amzn-RequestId": request_id})


def _run_in_memory(app: web.Application, service: FunctionHost, name: str, payload: bytes) -> None:
    """The emulator (no data dir, no delivery store): a bounded set of background runs."""
    background = app[_BACKGROUND]
    if len(background) >= IN_MEMORY_EVENT_LIMIT:
        raise QueueFull(f"{IN_MEMORY_EVENT_LIMIT} asynchronous invocations are already waiting")

    async def run() -> None:
        result = await service.invoke(name, payload)
        async for _ in result.outcome.stream():
            pass
        await result.report
    task = asyncio.create_task(run())
    background.add(task)
    task.add_done_callback(background.discard)


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
            await auth.authenticate_fresh(token)  # a key made through another replica works at once
    except AuthenticationFailed as err:
        return _aws_error(err.status, "UnrecognizedClientException",
                          f"{err.message} (a signed request carries it as its access key id)")
    except LlmfnError as err:
        return _aws_error(err.status, "AccessDeniedException", err.message)
    return await handler(request)


async def deploy(request: web.Request) -> web.Response:
    """Fetch every function's bundle from S3, check them all, then switch them all."""
    try:
        body = DeployRequest.model_validate_json(await request.read())
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(part) for part in err["loc"]) or "body"
        return _aws_error(400, "InvalidParameterValueException",
                          f"deploy refused, nothing changed: {where}: {err['msg']}")
    unknown = [name for name in body.functions if name not in request.app[SERVICE].functions]
    if unknown:  # before anything is downloaded
        return _aws_error(400, "InvalidParameterValueException",
                          f"deploy refused, nothing changed: not in the template: {', '.join(unknown[:10])}")
    fetch = request.app[_FETCH]
    try:
        bundles = {}
        for name, fn in body.functions.items():
            layers = [(await fetch(body.bucket, layer.key), layer.sha256) for layer in fn.layers]
            sources = {ref.sha256: f"s3://{body.bucket}/{ref.key}" for ref in (fn, *fn.layers)}
            bundles[name] = StagedBundle(await fetch(body.bucket, fn.key), fn.sha256, layers, fn.config, sources)
        result = await request.app[SERVICE].deploy(bundles)
    except (DeployError, FileNotFoundError) as exc:
        return _aws_error(400, "InvalidParameterValueException", f"deploy refused, nothing changed: {exc}")
    return web.json_response({"functions": result})


class BundleRef(BaseModel):
    key: str = Field(min_length=1)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class DeployedFunction(BundleRef):
    config: dict = Field(default_factory=dict)  # checked against the template's model by the service
    layers: list[BundleRef] = Field(default_factory=list, max_length=5)  # Lambda's limit


class DeployRequest(BaseModel):
    """What ``llmfn deploy`` registers: where the bundles are and each function's configuration."""
    bucket: str = Field(min_length=1)
    functions: dict[str, DeployedFunction]


async def rollback(request: web.Request) -> web.Response:
    try:
        body = await request.json() if request.can_read_body else {}
        to = body.get("FunctionVersion")
        out = await request.app[SERVICE].rollback(request.match_info["name"], int(to) if to else None)
    except (DeployError, ValueError, TypeError, AttributeError) as exc:
        # a bad body (not JSON, not an object, a version that is not a number) is a 400 too
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


def build_lambda_api(service: FunctionHost, auth: Authenticator, *, fetch: Fetch | None = None,
                     events: AsyncInvoker | None = None) -> web.Application:
    app = web.Application(middlewares=[_auth_middleware], client_max_size=6 * 1024 * 1024)
    app[SERVICE] = service
    app[_AUTH] = auth
    app[_BACKGROUND] = set()
    app[_EVENTS] = events
    app[_FETCH] = fetch
    app.router.add_post("/2015-03-31/functions/{name}/invocations", invoke)
    app.router.add_get("/2015-03-31/functions/{name}/versions", versions)
    # UpdateAlias on the alias llmfn serves ("live") is how a rollback is said.
    app.router.add_put("/2015-03-31/functions/{name}/aliases/live", rollback, name="rollback")
    if fetch is not None:
        app.router.add_post("/llmfn/deployments", deploy, name="deploy")
    return app
