"""The HTTP trigger (``llmfn start-api``): every ``HttpApi`` / ``Api`` event of
the template becomes a route; a request becomes an API Gateway proxy event
(HTTP API payload 2.0 or REST payload 1.0), and the handler's return becomes
the HTTP response. A handler that yields streams its body (Lambda response
streaming, with the HTTP prelude when its first item has a ``statusCode``)."""
from __future__ import annotations

import json
from dataclasses import dataclass

from aiohttp import web
from multidict import CIMultiDict

from runtime.functions import FunctionHost
from runtime.functions.invocation import Outcome
from runtime.template import FunctionSpec, HttpEvent
from runtime.triggers import apigw

SERVICE = web.AppKey("functions", FunctionHost)
ROUTES = web.AppKey("routes", list)
PRELUDE_TYPE = "application/vnd.awslambda.http-integration-response"


@dataclass(frozen=True)
class HttpRoute:
    method: str
    path: str  # API Gateway path template, or $default
    function: str
    kind: str  # "HttpApi" | "Api"


def routes_of(functions: dict[str, FunctionSpec]) -> list[HttpRoute]:
    return [HttpRoute(ev.method, ev.path, spec.name, ev.type)
            for spec in functions.values() for ev in spec.events if isinstance(ev, HttpEvent)]


async def _request_data(request: web.Request) -> apigw.HttpRequestData:
    host, _, port = (request.host or "127.0.0.1").partition(":")
    if port and not port.isdigit():  # "Host: x:abc" is the client's error
        raise web.HTTPBadRequest(text='{"message":"Invalid Host header"}', content_type="application/json")
    peer = request.transport.get_extra_info("peername") if request.transport else None
    return apigw.HttpRequestData(
        method=request.method, path=request.raw_path.split("?", 1)[0], raw_query=request.query_string,
        headers=[(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.raw_headers],
        body=await request.read(), source_ip=peer[0] if peer else "127.0.0.1", host=host,
        port=int(port or 80))


def _to_response(data: apigw.HttpResponseData) -> web.Response:
    return web.Response(status=data.status, body=data.body, headers=CIMultiDict(data.headers))


async def handle(request: web.Request) -> web.StreamResponse:
    routes: list[HttpRoute] = request.app[ROUTES]
    data = await _request_data(request)
    match = apigw.match_route([(r.method, r.path) for r in routes], data.method, data.path)
    if match is None:
        return web.json_response({"message": "Not Found"}, status=404)
    index, params = match
    route = routes[index]
    if route.kind == "HttpApi":
        key = route.path if route.path == apigw.DEFAULT_ROUTE else f"{route.method} {route.path}"
        event = apigw.http_api_event(data, route_key=key, path_parameters=params)
    else:
        event = apigw.rest_api_event(data, resource=route.path, path_parameters=params)
    result = await request.app[SERVICE].invoke(route.function, event)
    if result.outcome.kind == "stream":
        return await _stream(request, result.outcome)
    if result.is_error:
        return _to_response(_failure(route))
    try:
        value = json.loads(result.outcome.body) if result.outcome.body else None
    except ValueError:
        return _to_response(_failure(route))
    mapped = (apigw.map_http_api_response(value) if route.kind == "HttpApi"
              else apigw.map_rest_api_response(value))
    return _to_response(mapped)


def _failure(route: HttpRoute) -> apigw.HttpResponseData:
    # What API Gateway answers when the integration (the function) fails.
    if route.kind == "HttpApi":
        return apigw.HttpResponseData(500, [("Content-Type", "application/json")],
                                      b'{"message":"Internal Server Error"}')
    return apigw.HttpResponseData(502, [("Content-Type", "application/json")],
                                  b'{"message":"Internal server error"}')


async def _stream(request: web.Request, outcome: Outcome) -> web.StreamResponse:
    chunks = outcome.stream()
    status, headers, pending = 200, CIMultiDict({"Content-Type": "text/plain; charset=utf-8"}), b""
    if outcome.content_type.startswith(PRELUDE_TYPE):
        buf = b""
        async for chunk in chunks:
            buf += chunk
            if b"\0" * 8 in buf:
                break
        prelude, _, pending = buf.partition(b"\0" * 8)
        meta = json.loads(prelude or b"{}")
        status = int(meta.get("statusCode", 200))
        headers = CIMultiDict({str(k): str(v) for k, v in (meta.get("headers") or {}).items()})
        for cookie in meta.get("cookies") or []:
            headers.add("Set-Cookie", cookie)
    resp = web.StreamResponse(status=status, headers=headers)
    await resp.prepare(request)
    if pending:
        await resp.write(pending)
    async for chunk in chunks:
        await resp.write(chunk)
    await resp.write_eof()
    return resp


def build_http_api(functions: dict[str, FunctionSpec], service: FunctionHost):
    app = web.Application(client_max_size=10 * 1024 * 1024)
    app[SERVICE] = service
    app[ROUTES] = routes_of(functions)
    app.router.add_route("*", "/{tail:.*}", handle)
    return app, [(r.method, r.path, r.function) for r in app[ROUTES]]
