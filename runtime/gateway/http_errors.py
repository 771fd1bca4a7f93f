"""The one place where failures become HTTP: every error leaves the gateway in
the OpenAI shape ``{"error": {"message", "type", "param", "code"}}``. It also
owns reading a request body within the gateway's ``InputLimits``."""
from __future__ import annotations

import functools
import json
import logging
import re
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

from runtime.errors import InvalidRequest, LlmfnError, NotFound
from runtime.pool.tokenizer import offload

log = logging.getLogger("llmfn.gateway")
M = TypeVar("M", bound=BaseModel)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
REQUEST_ID = web.RequestKey("request_id", str)
MODEL_HINT = web.RequestKey("model_hint", str)  # the model a body names, even when it is invalid
BODY_BYTES = web.RequestKey("body_bytes", int)  # the size of the body parse_body read


@dataclass(frozen=True)
class InputLimits:
    """What one request may carry. They keep any single request from holding the
    event loop or the memory for long; ``runtime.settings.Settings`` sets them."""
    max_body_bytes: int = 4 * 1024 * 1024
    max_messages: int = 2048
    max_tools: int = 128
    max_tools_bytes: int = 256 * 1024  # all tool definitions together, as JSON
    max_json_depth: int = 100  # room for response_format schemas as deep as the grammar takes


LIMITS = web.AppKey("input_limits", InputLimits)


class RequestTooLarge(InvalidRequest):
    status = 413
    code = "request_too_large"


def error_response(err: LlmfnError, request_id: str | None = None) -> web.Response:
    headers = dict(err.headers)
    if request_id:
        headers["x-request-id"] = request_id
    return web.json_response(err.body(), status=err.status, headers=headers)


def _from_http(exc: web.HTTPException) -> LlmfnError:
    if exc.status == 404:
        return NotFound(f"Unknown route: {exc.reason}")
    if exc.status == 405:
        err = InvalidRequest("Method not allowed", code="method_not_allowed")
        err.status = 405
        return err
    if exc.status == 413:
        return RequestTooLarge(f"Request body too large: {exc.text}")
    err = InvalidRequest(exc.reason or "Bad request")
    err.status = exc.status
    return err


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    request_id = request.headers.get("x-request-id") or uuid.uuid4().hex
    request[REQUEST_ID] = request_id
    try:
        resp = await handler(request)
    except LlmfnError as err:
        return error_response(err, request_id)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return error_response(_from_http(exc), request_id)
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(LlmfnError("The server had an error while processing the request"),
                              request_id)
    if not resp.prepared:
        resp.headers.setdefault("x-request-id", request_id)
    return resp


_TYPE_TAGS = frozenset({"str", "int", "float", "bool", "list", "dict", "none"})


def _is_union_tag(part: object) -> bool:
    """pydantic names union branches in error locations (``str``, ``list[int]``); they are no field."""
    return isinstance(part, str) and (part in _TYPE_TAGS or "[" in part)


async def parse_body(request: web.Request, model: type[M]) -> M:
    """The request's JSON validated against ``model``; bad input is a 400 naming
    the field. Large bodies are parsed off the event loop (by their size in bytes)."""
    limits = request.app.get(LIMITS) or InputLimits()
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise RequestTooLarge(f"Request body too large: the limit is {limits.max_body_bytes} bytes",
                              param="body") from None
    request[BODY_BYTES] = len(raw)
    data = await offload(functools.partial(_decode, raw, limits), len(raw))
    if isinstance(data.get("model"), str):
        request[MODEL_HINT] = data["model"]
    return await offload(functools.partial(_validate, model, data), len(raw))


def _decode(raw: bytes, limits: InputLimits) -> dict[str, Any]:
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        reason = exc.msg if isinstance(exc, json.JSONDecodeError) else exc
        raise InvalidRequest(f"We could not parse the JSON body of your request: {reason}",
                             code="invalid_json") from None
    except RecursionError:
        raise InvalidRequest(f"The JSON body is nested too deeply (at most {limits.max_json_depth} levels)",
                             code="invalid_json") from None
    except ValueError:  # an integer of more digits than Python converts (4300)
        raise InvalidRequest("We could not parse the JSON body of your request: a number in it has "
                             "too many digits", code="invalid_json") from None
    if not isinstance(data, dict):
        raise InvalidRequest("The request body must be a JSON object", code="invalid_json")
    if _depth(data, limits.max_json_depth) > limits.max_json_depth:
        raise InvalidRequest(f"The JSON body is nested too deeply (at most {limits.max_json_depth} levels)",
                             code="invalid_json")
    _check_counts(data, limits)
    if _SURROGATE_ESCAPE.search(raw):
        data = _without_lone_surrogates(data)
    return data


# JSON may escape half a UTF-16 pair ("\ud800"); such a string cannot be encoded as
# UTF-8 for the tokenizer or a worker. Each lone half becomes U+FFFD, as in any decoder.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89abcdefABCDEF]")
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def _without_lone_surrogates(value: Any) -> Any:
    if isinstance(value, str):
        return _LONE_SURROGATE.sub("\ufffd", value)
    if isinstance(value, list):
        return [_without_lone_surrogates(v) for v in value]
    if isinstance(value, dict):
        return {_without_lone_surrogates(k): _without_lone_surrogates(v) for k, v in value.items()}
    return value


def _depth(value: Any, limit: int) -> int:
    """How deep ``value`` nests, counted without recursion (stops past ``limit``)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, depth)
            if depth > limit:
                return depth
            stack.extend((v, depth + 1) for v in (item.values() if isinstance(item, dict) else item))
    return deepest


def _check_counts(data: dict[str, Any], limits: InputLimits) -> None:
    # Before validation, which would otherwise check each of 100,000 messages first.
    messages = data.get("messages")
    if isinstance(messages, list) and len(messages) > limits.max_messages:
        raise InvalidRequest(f"Invalid value for 'messages': at most {limits.max_messages} messages per "
                             f"request (got {len(messages)})", param="messages", code="invalid_value")


def _validate(model: type[M], data: dict[str, Any]) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"] if not _is_union_tag(p))
        msg = err["msg"].removeprefix("Value error, ")
        raise InvalidRequest(f"Invalid value for '{loc or 'body'}': {msg}" if loc else msg,
                             param=loc or None, code="invalid_value") from None
