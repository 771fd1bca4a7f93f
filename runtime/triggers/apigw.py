"""API Gateway emulation as pure functions: route matching, the proxy events a
handler receives (HTTP API payload 2.0, REST API payload 1.0) and the mapping of
a handler's return value back to an HTTP response, following AWS's documented
rules and what ``sam local start-api`` does. No server and no I/O here: the
HTTP trigger fills an ``HttpRequestData`` and sends the ``HttpResponseData``.
"""
from __future__ import annotations

import base64
import binascii
import json
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote

from runtime.template.pseudo import LOCAL_ACCOUNT_ID

DEFAULT_ROUTE = "$default"

_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
# Request media types whose bodies API Gateway passes as text rather than base64.
_TEXT_MEDIA_TYPES = {
    "application/json", "application/xml", "application/javascript", "application/ecmascript",
    "application/x-www-form-urlencoded", "application/graphql", "application/yaml",
    "application/x-yaml", "application/x-ndjson",
}


@dataclass
class HttpRequestData:
    """An HTTP request as the trigger saw it. ``path`` is the raw (percent-encoded)
    path without the query; ``headers`` keep order, repeats and original case."""

    method: str
    path: str
    raw_query: str = ""
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    source_ip: str = "127.0.0.1"
    host: str = "127.0.0.1"
    port: int = 3000


@dataclass
class HttpResponseData:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        """Last value of a header, case-insensitive (None when absent)."""
        values = [v for k, v in self.headers if k.lower() == name.lower()]
        return values[-1] if values else None


class MalformedResponse(ValueError):
    """A handler's return value that API Gateway would refuse to turn into a response."""


# What a result that was never JSON round-tripped (odd keys, unserializable values) can raise.
_BAD_RESULT = (MalformedResponse, TypeError, ValueError, AttributeError)


# --- routes -----------------------------------------------------------------

def match_route(routes: Sequence[tuple[str, str]], method: str, path: str) -> tuple[int, dict[str, str]] | None:
    """Index and path parameters of the most specific route for ``method path``.

    Routes are ``(method_or_ANY, template)``; templates use API Gateway syntax
    (``/a/{id}``, greedy ``/a/{proxy+}``) or ``$default``. Per segment a static
    match beats a parameter, which beats a greedy parameter; then an exact method
    beats ``ANY``; ``$default`` only catches what nothing else matched; on a tie
    the route declared first wins.
    """
    segments = _split_path(path)
    best: tuple[tuple, int, dict[str, str]] | None = None
    for index, (route_method, template) in enumerate(routes):
        if DEFAULT_ROUTE in (template, route_method):
            rank, params = (1, (), True), {}
        elif route_method.upper() not in ("ANY", method.upper()):
            continue
        else:
            matched = _match_template(template, segments)
            if matched is None:
                continue
            kinds, params = matched
            rank = (0, kinds, route_method.upper() == "ANY")
        if best is None or rank < best[0]:
            best = (rank, index, params)
    return None if best is None else (best[1], best[2])


def _split_path(path: str) -> list[str]:
    # API Gateway ignores empty segments, so "/a/" and "/a" are the same resource.
    return [segment for segment in path.split("/") if segment]


def _match_template(template: str, segments: list[str]) -> tuple[tuple[int, ...], dict[str, str]] | None:
    """Per-segment kinds (0 static, 1 parameter, 2 greedy) and the parameters, or None."""
    parts = _split_path(template)
    kinds: list[int] = []
    params: dict[str, str] = {}
    for position, part in enumerate(parts):
        if part.startswith("{") and part.endswith("+}"):
            rest = segments[position:]
            if position != len(parts) - 1 or not rest:  # greedy is last and needs >= 1 segment
                return None
            params[part[1:-2]] = unquote("/".join(rest))
            return (*kinds, 2), params
        if position >= len(segments):
            return None
        if part.startswith("{") and part.endswith("}"):
            params[part[1:-1]] = unquote(segments[position])
            kinds.append(1)
        elif part == unquote(segments[position]):
            kinds.append(0)
        else:
            return None
    if len(parts) != len(segments):
        return None
    return tuple(kinds), params


# --- events -----------------------------------------------------------------

def http_api_event(req: HttpRequestData, *, route_key: str, path_parameters: dict[str, str] | None,
                   stage: str = "$default", api_id: str = "local") -> dict[str, Any]:
    """The HTTP API (payload format 2.0) event for ``req``.

    Like AWS, optional fields (cookies, queryStringParameters, pathParameters,
    body, stageVariables) are left out when empty rather than set to null, so
    handler code such as ``event.get("queryStringParameters", {})`` behaves the same.
    """
    now = time.time()
    headers = _v2_headers(req)
    body, is_base64 = _event_body(req.body, _last_header(req, "content-type"))
    event: dict[str, Any] = {
        "version": "2.0",
        "routeKey": route_key,
        "rawPath": req.path,
        "rawQueryString": req.raw_query,
    }
    cookies = _cookies(req)
    if cookies:
        event["cookies"] = cookies
    event["headers"] = headers
    query = _query_multi(req.raw_query)
    if query:
        event["queryStringParameters"] = {name: ",".join(values) for name, values in query.items()}
    event["requestContext"] = {
        "accountId": LOCAL_ACCOUNT_ID,
        "apiId": api_id,
        "domainName": req.host,
        "domainPrefix": _domain_prefix(req.host),
        "http": {
            "method": req.method.upper(),
            "path": req.path,
            "protocol": "HTTP/1.1",
            "sourceIp": req.source_ip,
            "userAgent": headers.get("user-agent", ""),
        },
        "requestId": str(uuid.uuid4()),
        "routeKey": route_key,
        "stage": stage,
        "time": _clf_time(now),
        "timeEpoch": int(now * 1000),
    }
    if path_parameters:
        event["pathParameters"] = dict(path_parameters)
    if body is not None:
        event["body"] = body
    event["isBase64Encoded"] = is_base64
    return event


def rest_api_event(req: HttpRequestData, *, resource: str, path_parameters: dict[str, str] | None,
                   stage: str = "Prod", api_id: str = "local") -> dict[str, Any]:
    """The REST API proxy (payload format 1.0) event for ``req``; empty fields are null, as on AWS."""
    now = time.time()
    headers, multi_headers = _v1_headers(req)
    query = _query_multi(req.raw_query)
    body, is_base64 = _event_body(req.body, _last_header(req, "content-type"))
    method = req.method.upper()
    return {
        "resource": resource,
        "path": req.path,
        "httpMethod": method,
        "headers": headers,
        "multiValueHeaders": multi_headers,
        "queryStringParameters": {name: values[-1] for name, values in query.items()} or None,
        "multiValueQueryStringParameters": query or None,
        "pathParameters": dict(path_parameters) if path_parameters else None,
        "stageVariables": None,
        "requestContext": {
            "resourceId": uuid.uuid4().hex[:6],
            "resourcePath": resource,
            "httpMethod": method,
            "extendedRequestId": base64.b64encode(uuid.uuid4().bytes[:10]).decode(),
            "requestTime": _clf_time(now),
            "path": f"/{stage}{req.path}",
            "accountId": LOCAL_ACCOUNT_ID,
            "protocol": "HTTP/1.1",
            "stage": stage,
            "domainPrefix": _domain_prefix(req.host),
            "requestTimeEpoch": int(now * 1000),
            "requestId": str(uuid.uuid4()),
            "identity": _v1_identity(req),
            "domainName": req.host,
            "apiId": api_id,
        },
        "body": body,
        "isBase64Encoded": is_base64,
    }


def _v1_identity(req: HttpRequestData) -> dict[str, Any]:
    nulls = ("cognitoIdentityPoolId", "accountId", "cognitoIdentityId", "caller", "accessKey",
             "cognitoAuthenticationType", "cognitoAuthenticationProvider", "userArn", "user")
    return {**dict.fromkeys(nulls), "sourceIp": req.source_ip, "userAgent": _last_header(req, "user-agent") or ""}


def _forwarded(req: HttpRequestData) -> list[tuple[str, str]]:
    """The X-Forwarded-* headers API Gateway adds, unless the client sent them."""
    sent = {name.lower() for name, _ in req.headers}
    added = [("X-Forwarded-For", req.source_ip), ("X-Forwarded-Port", str(req.port)),
             ("X-Forwarded-Proto", "http")]
    return [(name, value) for name, value in added if name.lower() not in sent]


def _v2_headers(req: HttpRequestData) -> dict[str, str]:
    # 2.0: names lower-cased, repeats joined with commas; cookies move to "cookies".
    headers: dict[str, str] = {}
    for name, value in [*req.headers, *_forwarded(req)]:
        name = name.lower()
        if name != "cookie":
            headers[name] = f"{headers[name]},{value}" if name in headers else value
    return headers


def _v1_headers(req: HttpRequestData) -> tuple[dict[str, str], dict[str, list[str]]]:
    # 1.0: original case (the first spelling seen names the header), last value wins in "headers".
    spelling: dict[str, str] = {}
    multi: dict[str, list[str]] = {}
    for name, value in [*req.headers, *_forwarded(req)]:
        key = spelling.setdefault(name.lower(), name)
        multi.setdefault(key, []).append(value)
    return {name: values[-1] for name, values in multi.items()}, multi


def _cookies(req: HttpRequestData) -> list[str]:
    values = [value for name, value in req.headers if name.lower() == "cookie"]
    return [part.strip() for value in values for part in value.split(";") if part.strip()]


def _query_multi(raw_query: str) -> dict[str, list[str]]:
    query: dict[str, list[str]] = {}
    for name, value in parse_qsl(raw_query, keep_blank_values=True):
        query.setdefault(name, []).append(value)
    return query


def _last_header(req: HttpRequestData, name: str) -> str | None:
    values = [value for key, value in req.headers if key.lower() == name]
    return values[-1] if values else None


def _is_text_media(content_type: str | None) -> bool:
    media = (content_type or "").split(";")[0].strip().lower()
    return (not media or media.startswith("text/") or media in _TEXT_MEDIA_TYPES
            or media.endswith("+json") or media.endswith("+xml"))


def _event_body(body: bytes, content_type: str | None) -> tuple[str | None, bool]:
    """(body, isBase64Encoded): text bodies pass as str; binary or non-UTF-8 ones as base64."""
    if not body:
        return None, False
    if _is_text_media(content_type):
        try:
            return body.decode("utf-8"), False
        except UnicodeDecodeError:
            pass
    return base64.b64encode(body).decode("ascii"), True


def _domain_prefix(host: str) -> str:
    # "abc.execute-api..." -> "abc"; an IP address has no prefix label, so keep it whole.
    return host if host.replace(".", "").isdigit() else host.split(".")[0]


def _clf_time(epoch: float) -> str:
    # Month names spelled out here: strftime("%b") follows the process locale.
    t = time.gmtime(epoch)
    return (f"{t.tm_mday:02d}/{_MONTHS[t.tm_mon - 1]}/{t.tm_year}:"
            f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} +0000")


# --- responses --------------------------------------------------------------

def map_http_api_response(result: Any) -> HttpResponseData:
    """HTTP response for a handler's return value under payload format 2.0.

    A dict with ``statusCode`` is a proxy response. Anything else is mapped the
    way AWS documents: 200, ``content-type: application/json``, and the body is
    the function's response (a returned string is sent as its text, any other
    value as its JSON). A malformed proxy response is API Gateway's 500.
    """
    try:
        if isinstance(result, dict) and "statusCode" in result:
            return _proxy_response(result, allow_cookies=True)
        body = result if isinstance(result, str) else json.dumps(result)
        return HttpResponseData(200, [("content-type", "application/json")], body.encode("utf-8"))
    except _BAD_RESULT:
        return _gateway_error(500, "Internal Server Error")


def map_rest_api_response(result: Any) -> HttpResponseData:
    """HTTP response for a handler's return value under a REST API proxy integration.

    REST APIs infer nothing: anything but a well-formed ``{"statusCode", ...}``
    dict is API Gateway's "Malformed Lambda proxy response", a 502.
    """
    if not (isinstance(result, dict) and "statusCode" in result):
        return _gateway_error(502, "Internal server error")
    try:
        return _proxy_response(result, allow_cookies=False)
    except _BAD_RESULT:
        return _gateway_error(502, "Internal server error")


def _proxy_response(result: dict[str, Any], *, allow_cookies: bool) -> HttpResponseData:
    headers = _response_headers(result.get("headers"), result.get("multiValueHeaders"))
    if allow_cookies:
        headers += [("Set-Cookie", _text(cookie)) for cookie in _typed(result.get("cookies"), list, [])]
    if not any(name.lower() == "content-type" for name, _ in headers):
        headers.append(("Content-Type", "application/json"))  # what SAM and API Gateway default to
    return HttpResponseData(_status(result["statusCode"]), headers, _response_body(result))


def _status(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise MalformedResponse(f"statusCode must be an integer, got {value!r}")
    try:
        status = int(value)
    except ValueError as exc:
        raise MalformedResponse(f"statusCode must be an integer, got {value!r}") from exc
    if not 100 <= status <= 599:
        raise MalformedResponse(f"statusCode out of range: {status}")
    return status


def _response_headers(single: Any, multi: Any) -> list[tuple[str, str]]:
    """Merge ``multiValueHeaders`` and ``headers``; a pair present in both appears once (AWS rule)."""
    merged = [(name, _text(value)) for name, values in _typed(multi, dict, {}).items()
              for value in _typed(values, list, [])]
    seen = {(name.lower(), value) for name, value in merged}
    for name, value in _typed(single, dict, {}).items():
        if (name.lower(), _text(value)) not in seen:
            merged.append((name, _text(value)))
    return merged


def _response_body(result: dict[str, Any]) -> bytes:
    body = _typed(result.get("body"), str, "")
    if not _flag(result.get("isBase64Encoded")):
        return body.encode("utf-8")
    try:
        return base64.b64decode(body, validate=True)
    except binascii.Error as exc:
        raise MalformedResponse("isBase64Encoded is true but body is not base64") from exc


def _typed(value: Any, kind: type, default: Any) -> Any:
    """``value`` if it has the type API Gateway expects, ``default`` if absent; else malformed."""
    if value is None:
        return default
    if not isinstance(value, kind):
        raise MalformedResponse(f"expected {kind.__name__}, got {type(value).__name__}")
    return value


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (str, int, float)):
        return str(value)
    raise MalformedResponse(f"header values must be strings, got {type(value).__name__}")


def _flag(value: Any) -> bool:
    # SAM also accepts the strings "true"/"false", which some handlers send.
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    return bool(_typed(value, bool, False))


def _gateway_error(status: int, message: str) -> HttpResponseData:
    body = json.dumps({"message": message}).encode()
    headers = [("Content-Type", "application/json"), ("x-amzn-ErrorType", "InternalServerErrorException")]
    return HttpResponseData(status, headers, body)
