"""The OpenAI API over real llama.cpp, through the official openai SDK."""
from __future__ import annotations

import base64
import math
import struct

import openai
import pytest

from tests.support.gateway import MODEL, call

PROMPT = "The capital of France is Paris. The capital of Germany is"


def test_models_list_shows_pool_state(client):
    models = client.models.list()
    ids = [m.id for m in models.data]
    assert ids == [MODEL]
    card = models.data[0].model_dump()
    assert card["pool"]["state"] in {"cold", "starting", "warm", "draining"}
    assert set(card["pool"]["workers"]) == {"starting", "warm", "draining"}
    assert card["context_length"] == 1024


def test_chat_completion(client, tokenizer):
    messages = [{"role": "system", "content": "You answer briefly."},
                {"role": "user", "content": "Name a color."}]
    reply = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=12, seed=7)
    choice = reply.choices[0]
    assert choice.message.role == "assistant"
    assert isinstance(choice.message.content, str)
    assert choice.finish_reason in {"stop", "length"}
    assert reply.usage.prompt_tokens == len(tokenizer.render_chat(messages))
    assert 1 <= reply.usage.completion_tokens <= 12
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
    if choice.finish_reason == "length":
        assert reply.usage.completion_tokens == 12


def test_chat_accepts_echoed_assistant_fields(client):
    messages = [{"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello", "refusal": None, "annotations": [],
                 "reasoning_content": "greeting", "tool_calls": None},
                {"role": "user", "content": [{"type": "text", "text": "Say it again"}]}]
    reply = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=4)
    assert reply.usage.completion_tokens >= 1


def test_completion_counts_with_the_model_tokenizer(client, tokenizer):
    reply = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=10, temperature=0)
    assert reply.usage.prompt_tokens == len(tokenizer.encode(PROMPT))
    assert reply.choices[0].text
    assert reply.usage.completion_tokens == 10 or reply.choices[0].finish_reason == "stop"


def test_stream_text_equals_whole_text_and_usage_is_exact(client):
    args = dict(model=MODEL, prompt=PROMPT, max_tokens=16, temperature=0)
    whole = client.completions.create(**args)
    chunks = list(client.completions.create(**args, stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == whole.choices[0].text
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert chunks[-1].usage.prompt_tokens == whole.usage.prompt_tokens
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[0].finish_reason


def test_chat_stream_without_usage(client):
    stream = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Count to five."}], max_tokens=8, stream=True)
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.usage is None for c in chunks)
    assert chunks[-1].choices[0].finish_reason in {"stop", "length"}


def test_continuous_usage_stats_grow_per_chunk(gateway):
    reply = call(f"{gateway.url}/v1/chat/completions", {
        "model": MODEL, "messages": [{"role": "user", "content": "Tell me a story."}],
        "max_tokens": 10, "stream": True,
        "stream_options": {"include_usage": True, "continuous_usage_stats": True}})
    assert reply.status == 200
    assert reply.headers["Content-Type"].startswith("text/event-stream")
    events = reply.events()
    assert events[-1] == "[DONE]"
    usages = [e["usage"] for e in events[:-1]]
    completions = [u["completion_tokens"] for u in usages]
    assert completions == sorted(completions)
    assert usages[-1]["completion_tokens"] == usages[-2]["completion_tokens"]
    assert events[-2]["choices"] == []
    assert all(u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"] for u in usages)


def test_cached_prefix_is_reported(client):
    prompt = "Once upon a time there was a small village by the sea, and in it lived"
    client.completions.create(model=MODEL, prompt=prompt, max_tokens=2, temperature=0)
    again = client.completions.create(model=MODEL, prompt=prompt + " a fisherman", max_tokens=2,
                                      temperature=0)
    details = again.usage.prompt_tokens_details
    assert details is not None and details.cached_tokens >= 10


def test_completion_echo_and_n(client):
    reply = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=3, echo=True, n=2)
    assert len(reply.choices) == 2
    assert all(c.text.startswith(PROMPT) for c in reply.choices)
    assert [c.index for c in reply.choices] == [0, 1]


def test_embeddings(client, tokenizer):
    texts = ["A cat sits on the mat.", "Stock markets fell today."]
    reply = client.embeddings.create(model=MODEL, input=texts)
    vectors = [d.embedding for d in reply.data]
    assert len(vectors) == 2 and len(vectors[0]) == len(vectors[1]) > 100
    for v in vectors:
        assert math.isclose(math.sqrt(sum(x * x for x in v)), 1.0, rel_tol=1e-3)
    assert reply.usage.prompt_tokens == sum(len(tokenizer.encode(t)) for t in texts)
    b64 = client.embeddings.create(model=MODEL, input=texts[0], encoding_format="base64")
    raw = base64.b64decode(b64.data[0].embedding)
    assert list(struct.unpack(f"<{len(raw) // 4}f", raw)) == pytest.approx(vectors[0], abs=1e-5)


def test_embeddings_base64_wire_format(gateway):
    reply = call(f"{gateway.url}/v1/embeddings",
                 {"model": MODEL, "input": "hello", "encoding_format": "base64", "dimensions": 64})
    raw = base64.b64decode(reply.json()["data"][0]["embedding"])
    floats = struct.unpack(f"<{len(raw) // 4}f", raw)
    assert len(floats) == 64
    assert math.isclose(math.sqrt(sum(x * x for x in floats)), 1.0, rel_tol=1e-3)


@pytest.mark.parametrize("path", ["/rerank", "/v1/rerank", "/v2/rerank"])
def test_rerank_puts_the_matching_document_first(gateway, path):
    docs = ["Bananas are rich in potassium.", "The cat sat on the mat.", "Taxes are due in April."]
    reply = call(f"{gateway.url}{path}", {"model": MODEL, "query": "The cat sat on the mat.",
                                          "documents": docs, "top_n": 2})
    assert reply.status == 200, reply.body
    body = reply.json()
    results = body["results"]
    assert len(results) == 2
    assert results[0]["index"] == 1 and results[0]["relevance_score"] > 0.99
    assert results[0]["document"]["text"] == docs[1]
    assert results[0]["relevance_score"] >= results[1]["relevance_score"]
    assert body["usage"]["total_tokens"] > 0


@pytest.mark.parametrize("path", ["/score", "/v1/score"])
def test_score_pairs(gateway, path):
    reply = call(f"{gateway.url}{path}", {"model": MODEL, "text_1": "The cat sat on the mat.",
                                          "text_2": ["The cat sat on the mat.", "Quarterly revenue grew."]})
    assert reply.status == 200, reply.body
    scores = [d["score"] for d in reply.json()["data"]]
    assert scores[0] > 0.99 and scores[0] > scores[1]


def test_context_overflow_names_both_numbers(client, gateway):
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}],
                                       max_tokens=5000)
    err = exc.value.body
    assert exc.value.status_code == 400
    assert err["code"] == "context_length_exceeded" and err["type"] == "invalid_request_error"
    assert "1024" in err["message"] and "5000" in err["message"]
    long_prompt = "word " * 1500
    reply = call(f"{gateway.url}/v1/completions", {"model": MODEL, "prompt": long_prompt})
    assert reply.status == 400 and reply.json()["error"]["code"] == "context_length_exceeded"
    reply = call(f"{gateway.url}/v1/embeddings", {"model": MODEL, "input": long_prompt})
    assert reply.status == 400 and reply.json()["error"]["code"] == "context_length_exceeded"


def test_unknown_model_is_404(client):
    with pytest.raises(openai.NotFoundError) as exc:
        client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])
    assert exc.value.body["code"] == "model_not_found"
    assert "no-such-model" in exc.value.body["message"]


def test_bad_json_is_400_in_openai_shape(gateway):
    reply = call(f"{gateway.url}/v1/chat/completions", raw=b'{"model": "x", "messages": [')
    assert reply.status == 400
    err = reply.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["type"] == "invalid_request_error" and err["code"] == "invalid_json"
    reply = call(f"{gateway.url}/v1/chat/completions", raw=b"[1, 2]")
    assert reply.status == 400


@pytest.mark.parametrize("field,value", [
    ("temperature", 5), ("temperature", "hot"), ("max_tokens", 0), ("n", 0), ("top_p", 0),
    ("messages", []), ("messages", [{"role": "wizard", "content": "x"}]), ("stop", ["a"] * 5),
    ("presence_penalty", 3), ("stream_options", "yes"),
])
def test_bad_parameters_are_400_naming_the_field(gateway, field, value):
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], field: value}
    reply = call(f"{gateway.url}/v1/chat/completions", body)
    assert reply.status == 400, reply.body
    err = reply.json()["error"]
    assert err["type"] == "invalid_request_error"
    assert err["param"] and err["param"].split(".")[0] == field
    assert "Traceback" not in err["message"]


def test_unknown_route_and_method_use_error_shape(gateway):
    reply = call(f"{gateway.url}/v1/nothing-here", {"a": 1})
    assert reply.status == 404 and reply.json()["error"]["type"] == "invalid_request_error"
    reply = call(f"{gateway.url}/v1/chat/completions", method="GET")
    assert reply.status == 405 and "error" in reply.json()


def test_server_keeps_serving_after_bad_input(client, gateway):
    for raw in (b"\xff\xfe", b"{", b'{"model": 1}', b'{"model": "gemma3-270m", "prompt": [[]]}'):
        assert call(f"{gateway.url}/v1/completions", raw=raw).status == 400
    assert call(f"{gateway.url}/health", method="GET").json()["status"] == "ok"
    assert client.completions.create(model=MODEL, prompt="Hello", max_tokens=2).choices


def test_base_url_is_a_bare_origin(gateway):
    from urllib.parse import urljoin
    for url in (urljoin(gateway.url, "v1/models"), urljoin(gateway.url + "/", "/v1/models"),
                gateway.url + "/v1/models"):
        assert call(url, method="GET").status == 200


def test_openapi_document_is_generated_from_the_schemas(gateway):
    doc = call(f"{gateway.url}/openapi.json", method="GET").json()
    assert doc["openapi"].startswith("3.")
    chat = doc["paths"]["/v1/chat/completions"]["post"]
    ref = chat["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    schema = doc["components"]["schemas"][ref.rsplit("/", 1)[1]]
    assert schema["properties"]["temperature"]["maximum"] == 2.0
    assert {"/v1/embeddings", "/v2/rerank", "/score", "/v1/models"} <= set(doc["paths"])


def test_metrics_expose_requests_tokens_and_pools(client, gateway):
    client.completions.create(model=MODEL, prompt="Hi", max_tokens=2)
    text = call(f"{gateway.url}/metrics", method="GET").body.decode()
    for name in ("llmfn_requests_total", "llmfn_prompt_tokens_total", "llmfn_completion_tokens_total",
                 "llmfn_time_to_first_token_seconds_bucket", "llmfn_queue_length",
                 'llmfn_workers{model="gemma3-270m",state="warm"} 1.0',
                 "llmfn_cold_starts_total", "llmfn_cold_start_seconds_count"):
        assert name in text, name
