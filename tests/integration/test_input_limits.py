"""No input crashes or stalls ``llmfn serve``: token ids out of the vocabulary,
bodies over the limits, bodies large enough to take a while, unknown model
names by the hundred and malformed numbers, headers and nesting each get a 4xx
in the OpenAI shape, and the service (its one process and its worker) lives on
and keeps answering ``/health``."""
from __future__ import annotations

import json
import socket
import sqlite3
import threading
import time

import pytest

from tests.support.cli import Server
from tests.support.gateway import call

pytestmark = [pytest.mark.llama, pytest.mark.timeout(600)]

MODEL = "gemma3-270m"
N_VOCAB = 262144  # Gemma 3's vocabulary
MAX_MESSAGES = 500
MAX_TOOLS = 8


@pytest.fixture(scope="module")
def serve(model_cache, tmp_path_factory):
    data = tmp_path_factory.mktemp("limits")
    env = {"LLMFN_CACHE_DIR": str(model_cache), "LLMFN_DATA_DIR": str(data), "LLMFN_MAX_TOOLS": str(MAX_TOOLS)}
    server = Server("serve", "--gateway-port", "0", "--api-port", "0", "--lambda-port", "0", "--model", "embedded",
                    "--n-ctx", "512", "--max-messages", str(MAX_MESSAGES), ready="gateway", env=env)
    server.data_dir = data
    try:
        yield server
    finally:
        server.stop()


def _alive(serve) -> None:
    assert serve.proc.poll() is None, serve.stderr[-3000:]
    assert call(f"{serve.url}/health", method="GET", timeout=10).status == 200


def _error(reply, status: int, param: str | None = None) -> dict:
    assert reply.status == status, reply.body[:500]
    error = reply.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    if param is not None:
        assert error["param"] == param, error
    return error


@pytest.mark.parametrize("path, body, param, bad", [
    ("/v1/embeddings", {"input": [99999999]}, "input", 99999999),
    ("/v1/embeddings", {"input": [[1, 2], [N_VOCAB]]}, "input", N_VOCAB),
    ("/v1/embeddings", {"input": [-1]}, "input", -1),
    ("/v1/completions", {"prompt": [N_VOCAB], "echo": True, "max_tokens": 1}, "prompt", N_VOCAB),
    ("/v1/completions", {"prompt": [[5, 6], [99999999]], "max_tokens": 1}, "prompt", 99999999),
    ("/v1/completions", {"prompt": "Hi", "logit_bias": {str(N_VOCAB): 1}, "max_tokens": 1}, "logit_bias", N_VOCAB),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi"}], "logit_bias": {"-3": 5},
                              "max_tokens": 1}, "logit_bias", -3),
])
def test_a_token_id_out_of_the_vocabulary_is_a_400_naming_it(serve, path, body, param, bad):
    error = _error(call(f"{serve.url}{path}", {"model": MODEL, **body}), 400, param)
    assert str(bad) in error["message"] and error["code"] == "invalid_token_id"
    _alive(serve)


def test_rerank_and_score_take_no_token_ids(serve):
    for path, body in (("/v1/rerank", {"query": "q", "documents": [[99999999]]}),
                       ("/v1/score", {"text_1": [99999999], "text_2": "b"})):
        _error(call(f"{serve.url}{path}", {"model": MODEL, **body}), 400)
    _alive(serve)


def test_a_body_over_the_size_limit_is_a_413_naming_the_limit(serve):
    limit = 4 * 1024 * 1024  # the default
    body = json.dumps({"model": MODEL, "input": "x" * limit}).encode()
    error = _error(call(f"{serve.url}/v1/embeddings", raw=body), 413)
    assert error["code"] == "request_too_large" and str(limit) in error["message"]
    _alive(serve)


def test_too_many_messages_or_tools_is_a_400_at_once(serve):
    started = time.monotonic()
    reply = call(f"{serve.url}/v1/chat/completions",
                 {"model": MODEL, "messages": [{"role": "user", "content": ""}] * 100_000})
    assert str(MAX_MESSAGES) in _error(reply, 400, "messages")["message"]
    assert time.monotonic() - started < 10
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    reply = call(f"{serve.url}/v1/chat/completions",
                 {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "tools": [tool] * (MAX_TOOLS + 1)})
    assert str(MAX_TOOLS) in _error(reply, 400, "tools")["message"]
    _alive(serve)


def _health_while(url: str, body: dict):
    """(reply to ``body``, seconds it took, each /health wait while it ran)."""
    waits: list[float] = []
    done = threading.Event()

    def poll():
        while not done.is_set():
            started = time.monotonic()
            assert call(f"{url}/health", method="GET", timeout=30).status == 200
            waits.append(time.monotonic() - started)
            time.sleep(0.05)

    poller = threading.Thread(target=poll)
    poller.start()
    started = time.monotonic()
    try:
        reply = call(f"{url}/v1/chat/completions", body)
    finally:
        took = time.monotonic() - started
        done.set()
        poller.join()
    return reply, took, waits


def _answered_promptly(took: float, waits: list[float]) -> None:
    assert len(waits) >= 3, (took, waits)  # /health answered again and again meanwhile
    assert max(waits) < max(0.5, took / 3), (took, waits)


@pytest.fixture(scope="module")
def long_context(model_cache):
    """A gateway whose context is long enough that megabytes of prompt must be tokenized
    to be counted (nothing is generated: every prompt here is over it)."""
    from runtime.gateway.http_errors import InputLimits
    from runtime.pool import ModelStore
    from tests.support.gateway import GatewayThread, model

    with GatewayThread([model(n_ctx=32768, max_workers=1)], ModelStore(model_cache, show_progress=False),
                       limits=InputLimits(max_messages=50_000)) as gw:
        yield gw


def test_health_answers_while_a_large_allowed_body_is_parsed_rendered_and_tokenized(long_context):
    # No content at all, yet a large body (and a prompt llama.cpp is slow to tokenize):
    # where it is handled goes by its size in bytes, and that is off the event loop.
    gw = long_context
    body = {"model": MODEL, "messages": [{"role": "user", "content": ""}] * 30_000, "max_tokens": 1}
    reply, took, waits = _health_while(gw.url, body)
    assert reply.status == 400, reply.body[:300]  # the rendered prompt is over the context
    _answered_promptly(took, waits)


def test_unknown_model_names_are_recorded_as_unknown_and_metrics_stay_small(serve):
    before = len(call(f"{serve.url}/metrics", method="GET").body)
    for i in range(200):
        name = f"{i:03d}" + "m" * 100_000
        reply = call(f"{serve.url}/v1/chat/completions",
                     {"model": name, "messages": [{"role": "user", "content": "Hi"}]})
        _error(reply, 404, "model")
    metrics = call(f"{serve.url}/metrics", method="GET").body.decode()
    assert len(metrics) < before + 20_000, len(metrics)
    assert 'model="unknown"' in metrics and "mmmmmmmm" not in metrics
    time.sleep(1.0)  # the ledger writer's batch interval
    with sqlite3.connect(serve.data_dir / "ledger.sqlite3") as db:
        models = [m for (m,) in db.execute("SELECT model FROM calls")]
    assert models.count("unknown") >= 200 and max(map(len, models)) < 100, models[:3]
    _alive(serve)


def _raw(url: str, request: bytes) -> bytes:
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(request)
        out = b""
        while chunk := sock.recv(65536):
            out += chunk
    return out


@pytest.mark.parametrize("raw, what", [
    (b'{"model": "gemma3-270m", "messages": [{"role": "user", "content": "Hi"}], "seed": ' + b"9" * 5000 + b"}",
     "a 5000-digit seed"),
    (b'{"model": "gemma3-270m", "seed": 1208925819614629174706176, "messages": [{"role": "user", "content": "Hi"}]}',
     "a seed past 64 bits"),
    (b'{"model": "gemma3-270m", "messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "100k-deep JSON"),
    (b'{"model": "gemma3-270m", "messages": [{"role": "user", "content": "Hi"}], "x": '
     + b'{"a": ' * 100 + b"1" + b"}" * 100 + b"}", "100-deep JSON"),
])
def test_malformed_numbers_and_nesting_are_a_400(serve, raw, what):
    reply = call(f"{serve.url}/v1/chat/completions", raw=raw)
    _error(reply, 400)
    _alive(serve)


def test_a_non_ascii_bearer_token_is_no_server_error(serve):
    # No key matches it; with no keys configured it is served as anonymous.
    reply = _raw(serve.url, b"GET /v1/models HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer \xe9\xff\r\n"
                            b"Connection: close\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 200"), reply[:200]
    _alive(serve)


def test_a_non_ascii_bearer_token_is_a_401_when_keys_are_required(make_gateway):
    gw = make_gateway(api_keys=["sk-right"])
    reply = _raw(gw.url, b"GET /v1/models HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer \xe9\xff\r\n"
                         b"Connection: close\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 401"), reply[:200]
    assert json.loads(reply.split(b"\r\n\r\n", 1)[1])["error"]["code"] == "invalid_api_key"


def test_messages_a_chat_template_cannot_render_are_a_value_error_not_a_crash(model_cache):
    # The gateway turns the ValueError into a 400 naming 'messages'.
    import asyncio

    from runtime.pool import ModelStore
    from runtime.pool.tokenizer import ModelTokenizer

    path = asyncio.run(ModelStore(model_cache, show_progress=False).fetch(MODEL, "embedded")).path
    tokenizer = ModelTokenizer(str(path), chat_template="{{ messages[0].content + 1 }}{{ messages[9].x.y }}")
    with pytest.raises(ValueError, match="cannot render"):
        tokenizer.render_chat([{"role": "user", "content": "Hi"}])


@pytest.mark.parametrize("path, body", [
    ("/v1/completions", {"prompt": "user: \n" * 500_000, "max_tokens": 1}),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "user: \n" * 500_000}], "max_tokens": 1}),
    ("/v1/embeddings", {"input": ["user: \n" * 500_000]}),
    ("/v1/rerank", {"query": "q", "documents": ["user: \n" * 500_000]}),
])
def test_a_text_far_over_the_context_is_refused_before_it_is_tokenized(serve, path, body):
    # llama.cpp takes minutes to tokenize such a text (quadratic); no token is that long.
    started = time.monotonic()
    error = _error(call(f"{serve.url}{path}", {"model": MODEL, **body}), 400)
    assert error["code"] == "context_length_exceeded" and "512" in error["message"]
    assert time.monotonic() - started < 5
    _alive(serve)


@pytest.mark.parametrize("path, raw", [
    ("/v1/completions", b'{"model": "gemma3-270m", "prompt": "a\\ud800b", "max_tokens": 1}'),
    ("/v1/embeddings", b'{"model": "gemma3-270m", "input": ["\\udfff"]}'),
    ("/v1/rerank", b'{"model": "gemma3-270m", "query": "\\ud83d", "documents": ["x"]}'),
    ("/v1/chat/completions", b'{"model": "gemma3-270m", "max_tokens": 1, "messages": [{"role": "user", "content": "\\udc00"}]}'),
])
def test_half_a_utf16_pair_in_a_json_string_is_read_as_a_replacement_character(serve, path, raw):
    reply = call(f"{serve.url}{path}", raw=raw)
    assert reply.status == 200, reply.body[:300]
    _alive(serve)
