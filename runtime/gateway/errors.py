"""The one place where failures become HTTP: every error leaves the gateway in
the OpenAI shape ``{"error": {"message", "type", "param", "code"}}``."""
from __future__ import annotations

import json
import logging
import uuid
from typing import Awaitable, Callable, TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

from runtime.errors import InvalidRequest, LlmfnError, NotFound

log = logging.getLogger("llmfn.gateway")
M = TypeVar("M", bound=BaseModel)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
REQUEST_ID = web.RequestKey("request_id", str)
MODEL_HINT = web.RequestKey("model_hint", str)  # the model a body names, even when it is invalid


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
        err = InvalidRequest("Request body too large", code="request_too_large")
        err.status = 413
        return err
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
    """The request's JSON validated against ``model``; bad input is a 400 naming the field."""
    raw = await request.read()
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidRequest(f"We could not parse the JSON body of your request: {exc.msg if hasattr(exc, 'msg') else exc}",
                             code="invalid_json") from None
    if not isinstance(data, dict):
        raise InvalidRequest("The request body must be a JSON object", code="invalid_json")
    if isinstance(data.get("model"), str):
        request[MODEL_HINT] = data["model"]
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"] if not _is_union_tag(p))
        msg = err["msg"].removeprefix("Value error, ")
        raise InvalidRequest(f"Invalid value for '{loc or 'body'}': {msg}" if loc else msg,
                             param=loc or None, code="invalid_value") from None
