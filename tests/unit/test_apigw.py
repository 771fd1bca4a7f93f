"""API Gateway emulation: proxy events (HTTP API 2.0, REST 1.0), response mapping, route matching."""
from __future__ import annotations

import base64
import json
import re
import time
import uuid

import pytest

from runtime.triggers.apigw import (
    HttpRequestData,
    http_api_event,
    map_http_api_response,
    map_rest_api_response,
    match_route,
    rest_api_event,
)

PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe"


def request(**overrides) -> HttpRequestData:
    fields = dict(
        method="GET", path="/hello/world", raw_query="a=1&a=2&b=x%20y&empty=",
        headers=[("Host", "localhost:3000"), ("User-Agent", "curl/8"), ("Accept", "text/html"),
                 ("Accept", "application/json"), ("Cookie", "c1=v1; c2=v2"), ("Cookie", "c3=v3")],
        body=b"", source_ip="10.0.0.7", host="localhost", port=3000,
    )
    fields.update(overrides)
    return HttpRequestData(**fields)


# --- HTTP API payload 2.0 events --------------------------------------------

def test_http_api_event_shape():
    before = int(time.time() * 1000)
    event = http_api_event(request(), route_key="GET /hello/{name}", path_parameters={"name": "world"})
    assert event["version"] == "2.0"
    assert event["routeKey"] == "GET /hello/{name}"
    assert event["rawPath"] == "/hello/world"
    assert event["rawQueryString"] == "a=1&a=2&b=x%20y&empty="
    assert event["pathParameters"] == {"name": "world"}
    assert event["isBase64Encoded"] is False
    assert "body" not in event  # AWS leaves out an absent body
    ctx = event["requestContext"]
    assert ctx["accountId"] == "123456789012"
    assert ctx["apiId"] == "local"
    assert ctx["domainName"] == "localhost" and ctx["domainPrefix"] == "localhost"
    assert ctx["http"] == {"method": "GET", "path": "/hello/world", "protocol": "HTTP/1.1",
                           "sourceIp": "10.0.0.7", "userAgent": "curl/8"}
    assert ctx["routeKey"] == "GET /hello/{name}"
    assert ctx["stage"] == "$default"
    uuid.UUID(ctx["requestId"])
    assert re.fullmatch(r"\d\d/[A-Z][a-z]{2}/\d{4}:\d\d:\d\d:\d\d \+0000", ctx["time"])
    assert before <= ctx["timeEpoch"] <= int(time.time() * 1000)
    json.dumps(event)  # what the instance receives is JSON


def test_http_api_headers_lowercased_and_joined_cookies_split_out():
    event = http_api_event(request(), route_key="$default", path_parameters=None)
    headers = event["headers"]
    assert headers["accept"] == "text/html,application/json"
    assert headers["user-agent"] == "curl/8"
    assert all(name == name.lower() for name in headers)
    assert "cookie" not in headers
    assert event["cookies"] == ["c1=v1", "c2=v2", "c3=v3"]
    assert headers["x-forwarded-for"] == "10.0.0.7"
    assert headers["x-forwarded-port"] == "3000"
    assert headers["x-forwarded-proto"] == "http"


def test_http_api_query_multi_values_joined_and_decoded():
    event = http_api_event(request(), route_key="$default", path_parameters=None)
    assert event["queryStringParameters"] == {"a": "1,2", "b": "x y", "empty": ""}


def test_http_api_optional_fields_left_out_when_empty():
    event = http_api_event(request(raw_query="", headers=[]), route_key="$default", path_parameters=None)
    for absent in ("queryStringParameters", "cookies", "pathParameters", "body", "stageVariables"):
        assert absent not in event
    assert event["requestContext"]["http"]["userAgent"] == ""


def test_http_api_text_body_passes_as_text():
    body = json.dumps({"q": "héllo"}).encode()
    req = request(method="POST", body=body, headers=[("Content-Type", "application/json; charset=utf-8")])
    event = http_api_event(req, route_key="$default", path_parameters=None)
    assert event["body"] == body.decode()
    assert event["isBase64Encoded"] is False


@pytest.mark.parametrize("content_type", ["image/png", "application/octet-stream", "text/plain"])
def test_http_api_binary_body_is_base64(content_type):
    req = request(method="POST", body=PNG, headers=[("Content-Type", content_type)])
    event = http_api_event(req, route_key="$default", path_parameters=None)
    assert event["isBase64Encoded"] is True  # binary type, or text type but not UTF-8
    assert base64.b64decode(event["body"]) == PNG


def test_http_api_utf8_body_with_binary_content_type_is_base64():
    req = request(method="POST", body=b"plain", headers=[("Content-Type", "application/zip")])
    event = http_api_event(req, route_key="$default", path_parameters=None)
    assert event["isBase64Encoded"] is True
    assert base64.b64decode(event["body"]) == b"plain"


# --- REST API payload 1.0 events --------------------------------------------

def test_rest_api_event_shape():
    req = request(method="post", body=b'{"a": 1}', headers=[*request().headers, ("Content-Type", "application/json")])
    event = rest_api_event(req, resource="/hello/{name}", path_parameters={"name": "world"})
    assert event["resource"] == "/hello/{name}"
    assert event["path"] == "/hello/world"
    assert event["httpMethod"] == "POST"
    assert event["pathParameters"] == {"name": "world"}
    assert event["stageVariables"] is None
    assert event["body"] == '{"a": 1}' and event["isBase64Encoded"] is False
    ctx = event["requestContext"]
    assert ctx["resourcePath"] == "/hello/{name}"
    assert ctx["httpMethod"] == "POST"
    assert ctx["path"] == "/Prod/hello/world"
    assert ctx["stage"] == "Prod"
    assert ctx["accountId"] == "123456789012" and ctx["apiId"] == "local"
    assert ctx["identity"]["sourceIp"] == "10.0.0.7"
    assert ctx["identity"]["userAgent"] == "curl/8"
    assert ctx["protocol"] == "HTTP/1.1"
    assert ctx["domainName"] == "localhost"
    assert isinstance(ctx["requestTimeEpoch"], int) and ctx["extendedRequestId"]
    uuid.UUID(ctx["requestId"])
    json.dumps(event)


def test_rest_api_multi_value_headers_and_query():
    event = rest_api_event(request(), resource="/hello/{name}", path_parameters={"name": "world"})
    assert event["headers"]["Accept"] == "application/json"  # last value
    assert event["multiValueHeaders"]["Accept"] == ["text/html", "application/json"]
    assert event["headers"]["Cookie"] == "c3=v3"  # REST keeps cookies as headers
    assert event["multiValueHeaders"]["Cookie"] == ["c1=v1; c2=v2", "c3=v3"]
    assert event["queryStringParameters"] == {"a": "2", "b": "x y", "empty": ""}
    assert event["multiValueQueryStringParameters"] == {"a": ["1", "2"], "b": ["x y"], "empty": [""]}


def test_rest_api_empty_fields_are_null():
    event = rest_api_event(request(raw_query=""), resource="/", path_parameters=None)
    assert event["queryStringParameters"] is None
    assert event["multiValueQueryStringParameters"] is None
    assert event["pathParameters"] is None
    assert event["body"] is None and event["isBase64Encoded"] is False


def test_rest_api_binary_body_is_base64():
    req = request(method="PUT", body=PNG, headers=[("Content-Type", "image/png")])
    event = rest_api_event(req, resource="/img", path_parameters=None, stage="dev")
    assert event["isBase64Encoded"] is True
    assert base64.b64decode(event["body"]) == PNG
    assert event["requestContext"]["path"] == "/dev/hello/world"


# --- HTTP API payload 2.0 responses -----------------------------------------

def test_http_api_proxy_response_with_cookies_and_headers():
    resp = map_http_api_response({
        "statusCode": 201,
        "headers": {"Content-Type": "text/plain", "X-Count": 3},
        "cookies": ["a=1; Path=/", "b=2; HttpOnly"],
        "body": "created",
    })
    assert resp.status == 201
    assert resp.body == b"created"
    assert resp.header("content-type") == "text/plain"
    assert resp.header("x-count") == "3"
    assert [v for k, v in resp.headers if k.lower() == "set-cookie"] == ["a=1; Path=/", "b=2; HttpOnly"]


def test_http_api_proxy_response_base64_body_is_decoded():
    resp = map_http_api_response({"statusCode": 200, "isBase64Encoded": True,
                                  "headers": {"content-type": "image/png"},
                                  "body": base64.b64encode(PNG).decode()})
    assert resp.body == PNG
    assert resp.header("Content-Type") == "image/png"


def test_http_api_proxy_response_defaults_content_type_and_empty_body():
    resp = map_http_api_response({"statusCode": 204})
    assert resp.status == 204 and resp.body == b""
    assert resp.header("content-type") == "application/json"


def test_http_api_proxy_response_multi_value_headers_merge_without_duplicates():
    resp = map_http_api_response({"statusCode": 200, "body": "",
                                  "headers": {"X-A": "1", "X-B": "b"},
                                  "multiValueHeaders": {"X-A": ["1", "2"]}})
    assert [v for k, v in resp.headers if k == "X-A"] == ["1", "2"]
    assert resp.header("X-B") == "b"


@pytest.mark.parametrize("result, body", [
    ({"message": "hi"}, {"message": "hi"}),
    ([1, "two", None], [1, "two", None]),
    (42, 42),
    (True, True),
    (None, None),
])
def test_http_api_default_mapping_is_200_json(result, body):
    resp = map_http_api_response(result)
    assert resp.status == 200
    assert resp.header("content-type") == "application/json"
    assert json.loads(resp.body) == body


def test_http_api_default_mapping_of_a_string_is_its_text():
    # AWS: Lambda output "Hello from Lambda!" -> body "Hello from Lambda!" (sam local agrees).
    resp = map_http_api_response("Hello from Lambda!")
    assert resp.status == 200
    assert resp.body == b"Hello from Lambda!"
    assert resp.header("content-type") == "application/json"


@pytest.mark.parametrize("result", [
    {"statusCode": "abc"},
    {"statusCode": 200, "body": {"not": "a string"}},
    {"statusCode": 200, "headers": ["x"]},
    {"statusCode": 200, "isBase64Encoded": True, "body": "***not base64***"},
    {"statusCode": 99},
])
def test_http_api_malformed_proxy_response_is_500(result):
    resp = map_http_api_response(result)
    assert resp.status == 500
    assert json.loads(resp.body) == {"message": "Internal Server Error"}


# --- REST API responses -----------------------------------------------------

def test_rest_api_response_headers_multi_values_and_base64():
    resp = map_rest_api_response({
        "statusCode": "200",
        "headers": {"Content-Type": "application/octet-stream"},
        "multiValueHeaders": {"Set-Cookie": ["a=1", "b=2"]},
        "body": base64.b64encode(PNG).decode(),
        "isBase64Encoded": True,
    })
    assert resp.status == 200
    assert resp.body == PNG
    assert [v for k, v in resp.headers if k == "Set-Cookie"] == ["a=1", "b=2"]
    assert resp.header("content-type") == "application/octet-stream"


def test_rest_api_response_plain_text():
    resp = map_rest_api_response({"statusCode": 404, "body": "nope"})
    assert (resp.status, resp.body) == (404, b"nope")
    assert resp.header("content-type") == "application/json"


@pytest.mark.parametrize("result", [
    {"message": "no statusCode"},
    "a string",
    ["a", "list"],
    None,
    {"statusCode": 200, "body": {"not": "a string"}},
    {"statusCode": 200, "multiValueHeaders": {"X": "not-a-list"}},
])
def test_rest_api_malformed_response_is_502(result):
    resp = map_rest_api_response(result)
    assert resp.status == 502
    assert json.loads(resp.body) == {"message": "Internal server error"}
    assert resp.header("content-type") == "application/json"


# --- route matching ---------------------------------------------------------

ROUTES = [
    ("ANY", "$default"),
    ("ANY", "/{proxy+}"),
    ("GET", "/hello/{name}"),
    ("GET", "/hello/world"),
    ("ANY", "/hello/{name}"),
    ("POST", "/files/{proxy+}"),
    ("get", "/"),
]


@pytest.mark.parametrize("method, path, expected", [
    ("GET", "/hello/world", (3, {})),                               # static beats parameter
    ("GET", "/hello/alice", (2, {"name": "alice"})),                # exact method beats ANY
    ("DELETE", "/hello/alice", (4, {"name": "alice"})),             # ANY takes other methods
    ("post", "/files/a/b%20c.txt", (5, {"proxy": "a/b c.txt"})),  # greedy, method case-insensitive
    ("GET", "/files/a/b", (1, {"proxy": "files/a/b"})),             # POST-only route skipped
    ("GET", "/hello/world/", (3, {})),                              # trailing slash ignored
    ("GET", "/", (6, {})),
    ("PUT", "/", (0, {})),                                          # greedy needs a segment -> $default
    ("GET", "/hello/a%2Fb", (2, {"name": "a/b"})),                  # encoded slash stays in one segment
])
def test_match_route_precedence(method, path, expected):
    assert match_route(ROUTES, method, path) == expected


def test_match_route_param_beats_greedy_and_none_without_default():
    routes = [("ANY", "/{proxy+}"), ("GET", "/items/{id}"), ("GET", "/items/{id}/tags")]
    assert match_route(routes, "GET", "/items/7") == (1, {"id": "7"})
    assert match_route(routes, "GET", "/items/7/tags") == (2, {"id": "7"})
    assert match_route(routes, "GET", "/items/7/other") == (0, {"proxy": "items/7/other"})
    assert match_route([("GET", "/a"), ("POST", "/b")], "GET", "/b") is None
    assert match_route([("GET", "/a/{x}")], "GET", "/a") is None


def test_match_route_default_route_key_alone():
    assert match_route([("$default", "$default")], "PATCH", "/anything/at/all") == (0, {})
