"""Reading a request body within the gateway's input limits, and the OpenAPI
document read from the route table."""
from __future__ import annotations

import json

import pytest
from aiohttp import web
from pydantic import BaseModel

from runtime.gateway import GatewayConfig, build_app
from runtime.gateway.http_errors import LIMITS, InputLimits, errors_middleware, parse_body
from runtime.gateway.openapi import openapi_document
from runtime.gateway.routes import OPERATIONS
from runtime.pool import ModelStore
from tests.support.gateway import model


class Body(BaseModel):
    model: str
    seed: int | None = None
    messages: list = []
    tools: list = []


async def _echo(request: web.Request) -> web.Response:
    return web.json_response((await parse_body(request, Body)).model_dump())


@pytest.fixture
async def client(aiohttp_client):
    limits = InputLimits(max_body_bytes=512 * 1024, max_messages=3, max_json_depth=8)
    app = web.Application(middlewares=[errors_middleware], client_max_size=limits.max_body_bytes)
    app[LIMITS] = limits
    app.router.add_post("/", _echo)
    return await aiohttp_client(app)


async def _error(reply, status: int) -> dict:
    assert reply.status == status
    error = (await reply.json())["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


async def test_a_body_within_the_limits_is_parsed(client):
    reply = await client.post("/", data=json.dumps({"model": "m", "messages": [1, 2, 3], "x": [[[[1]]]]}))
    assert reply.status == 200 and (await reply.json())["messages"] == [1, 2, 3]


async def test_large_bodies_are_parsed_too(client):
    # Over the inline size: parsed on the tokenizer thread, the same result.
    reply = await client.post("/", data=json.dumps({"model": "m", "pad": "x" * 40_000}))
    assert reply.status == 200 and (await reply.json())["model"] == "m"


async def test_a_body_over_the_size_limit_is_a_413(client):
    error = await _error(await client.post("/", data=json.dumps({"model": "m", "pad": "x" * 600_000})), 413)
    assert error["code"] == "request_too_large" and "524288" in error["message"]


async def test_more_messages_than_allowed_is_a_400_naming_the_limit(client):
    error = await _error(await client.post("/", data=json.dumps({"model": "m", "messages": [{}] * 4})), 400)
    assert error["param"] == "messages" and "at most 3 messages" in error["message"]


@pytest.mark.parametrize("raw", [
    b'{"model": "m", "x": ' + b"[" * 9 + b"]" * 9 + b"}",  # past the limit of 8
    b'{"model": "m", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",  # past Python's recursion limit
])
async def test_json_nested_too_deeply_is_a_400(client, raw):
    error = await _error(await client.post("/", data=raw), 400)
    assert error["code"] == "invalid_json" and "nested" in error["message"]


async def test_a_number_of_5000_digits_is_a_400(client):
    error = await _error(await client.post("/", data=b'{"model": "m", "seed": ' + b"7" * 5000 + b"}"), 400)
    assert error["code"] == "invalid_json" and "digits" in error["message"]


def _served(app) -> set[tuple[str, str]]:
    """(method, OpenAPI path) of every route the app answers (HEAD and OPTIONS aside)."""
    out = set()
    for r in app.router.routes():
        if r.method in ("HEAD", "OPTIONS"):
            continue
        path = r.resource.canonical
        if isinstance(r.resource, web.StaticResource):
            path += "/{filename}"
        out.add((r.method.lower(), path))
    return out


async def test_the_openapi_document_lists_exactly_the_routes_the_gateway_serves(tmp_path, aiohttp_client):
    client = await aiohttp_client(build_app(GatewayConfig(models=[model()], store=ModelStore(tmp_path))))
    doc = await (await client.get("/openapi.json")).json()
    listed = {(m, p) for p, ops in doc["paths"].items() for m in ops}
    assert listed == _served(client.app)
    for route in ("/v1/models/{model}", "/v1/usage", "/admin/pools", "/admin/keys", "/admin/keys/{name}",
                  "/score", "/v2/rerank", "/health", "/metrics", "/openapi.json", "/usage",
                  "/usage/static/{filename}", "/v1/invocation/usage", "/v1/invocation/quota"):
        assert route in doc["paths"], route
    assert doc["paths"]["/v1/models/{model}"]["get"]["summary"] == "One model with its pool state"


def test_a_route_added_beside_the_table_is_still_documented(tmp_path):
    app = build_app(GatewayConfig(models=[model()], store=ModelStore(tmp_path)))

    async def extra(request):
        """A route added later."""
    app.router.add_delete("/admin/extra/{thing}", extra)
    doc = openapi_document(app.router, OPERATIONS)
    assert {(m, p) for p, ops in doc["paths"].items() for m in ops} == _served(app)
    extra_op = doc["paths"]["/admin/extra/{thing}"]["delete"]
    assert extra_op["summary"] == "A route added later."
    assert extra_op["parameters"][0]["name"] == "thing"


@pytest.mark.parametrize("schema, body", [
    ("CompletionRequest", {"prompt": [[1]] * 2049}),
    ("EmbeddingRequest", {"input": ["a"] * 2049}),
    ("ScoreRequest", {"text_1": "a", "text_2": ["b"] * 2049}),
])
def test_more_than_2048_inputs_in_one_request_are_refused(schema, body):
    from pydantic import ValidationError

    from runtime.gateway import schemas

    with pytest.raises(ValidationError, match="at most 2048"):
        getattr(schemas, schema).model_validate({"model": "m", **body})


def test_metrics_label_only_served_models_whatever_name_a_call_carries(tmp_path):
    from prometheus_client import generate_latest

    from runtime.accounting.status import CallStatus
    from runtime.gateway.auth import ANONYMOUS
    from runtime.gateway.calls import CallRecord
    from runtime.gateway.metrics import Metrics
    from runtime.pool import Pools

    metrics = Metrics()
    metrics.watch_pools(Pools([model("served")], ModelStore(tmp_path)))
    for i in range(50):
        name = "served" if i == 0 else f"{i}" + "z" * 10_000
        metrics.observe_call(CallRecord(0.0, ANONYMOUS, name, "chat", CallStatus.ERROR, 3, 1, 0, 0.1, 0.05,
                                        error="model_not_found"))
        metrics.observe_ttft(name, 0.05)
    text = generate_latest(metrics.registry).decode()
    assert "zzzz" not in text and len(text) < 50_000
    assert 'model="served"' in text and 'model="unknown"' in text


async def test_lone_utf16_surrogates_become_replacement_characters(client):
    raw = b'{"model": "m\\ud800", "messages": ["\\uD83D\\uDE00", "x\\udfffy"]}'
    body = await (await client.post("/", data=raw)).json()
    assert body["model"] == "m\ufffd" and body["messages"] == ["\U0001F600", "x\ufffdy"]


def test_metrics_label_a_call_by_its_outcome_as_before(tmp_path):
    from prometheus_client import generate_latest

    from runtime.accounting.status import CallStatus
    from runtime.gateway.auth import ANONYMOUS
    from runtime.gateway.calls import CallRecord
    from runtime.gateway.metrics import Metrics

    metrics = Metrics()
    for status, error in ((CallStatus.SUCCESS, None), (CallStatus.ERROR, "context_length_exceeded"),
                          (CallStatus.CANCELLED, None)):
        metrics.observe_call(CallRecord(0.0, ANONYMOUS, "m", "chat", status, 3, 1, 0, 0.1, None, error=error))
    text = generate_latest(metrics.registry).decode()
    for label in ("success", "error:context_length_exceeded", "cancelled"):
        assert f'status="{label}"' in text, label
