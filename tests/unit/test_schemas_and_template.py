"""Fast unit tests: request schemas, stop-string handling, template parsing, errors."""
from __future__ import annotations

import pytest
from pydantic import ValidationError

from runtime.errors import ContextLengthExceeded, Overloaded, QuotaExhausted, RateLimited
from runtime.gateway import schemas as s
from runtime.pool.engine import _find_stop, _partial_stop_len
from runtime.template import parse_model_flag
from runtime.template.reader import TemplateError, load_template, parse_template


def test_completion_prompt_forms():
    mk = lambda p: s.CompletionRequest(model="m", prompt=p).prompts()  # noqa: E731
    assert mk("hi") == ["hi"]
    assert mk(["a", "b"]) == ["a", "b"]
    assert mk([1, 2, 3]) == [[1, 2, 3]]
    assert mk([[1, 2], [3]]) == [[1, 2], [3]]
    with pytest.raises(ValidationError):
        mk([])


def test_chat_request_normalizes_stop_and_max_completion_tokens():
    req = s.ChatCompletionRequest(model="m", messages=[{"role": "user", "content": "x"}],
                                  stop="END", max_completion_tokens=7)
    assert req.stop_list() == ["END"] and req.max_tokens == 7
    with pytest.raises(ValidationError, match="top_logprobs requires logprobs"):
        s.ChatCompletionRequest(model="m", messages=[{"role": "user", "content": "x"}], top_logprobs=2)


def test_message_text_parts():
    msg = s.ChatMessage(role="user", content=[{"type": "text", "text": "a"}, {"type": "text", "text": "b"}])
    assert msg.text() == "ab"
    with pytest.raises(ValueError, match="image_url"):
        s.ChatMessage(role="user", content=[{"type": "image_url", "image_url": {"url": "x"}}]).text()


def test_stop_strings_are_found_and_held_back():
    assert _find_stop("hello world", ["wor"], 0) == 6
    assert _find_stop("hello", ["x"], 0) is None
    # "wo" could begin "world": hold it back until the next token decides
    assert _partial_stop_len("hello wo", ["world"]) == 2
    assert _partial_stop_len("hello", ["world"]) == 0
    assert _partial_stop_len("ab", ["b", "abc"]) == 2


def test_usage_shape():
    u = s.Usage.of(10, 5, cached=4)
    assert u.total_tokens == 15 and u.prompt_tokens_details.cached_tokens == 4
    assert s.Usage.of(3).model_dump(exclude_none=True) == {
        "prompt_tokens": 3, "completion_tokens": 0, "total_tokens": 3}


def test_errors_have_the_openai_shape_and_statuses():
    body = ContextLengthExceeded("too long", param="messages").body()
    assert body == {"error": {"message": "too long", "type": "invalid_request_error",
                              "param": "messages", "code": "context_length_exceeded"}}
    assert Overloaded("busy", retry_after=3).headers == {"Retry-After": "3"}
    # a quota 429 and a capacity 503 are never confused
    assert RateLimited("x").status == QuotaExhausted("x").status == 429
    assert QuotaExhausted("x").type == "insufficient_quota" and "Retry-After" not in QuotaExhausted("x").headers
    assert Overloaded("x").status == 503


def test_template_resolves_cloudformation_tags(tmp_path):
    path = tmp_path / "template.yaml"
    path.write_text("""
Transform: AWS::Serverless-2016-10-31
Metadata:
  llmfn:
    models:
      chat: {source: "s3://b/k.gguf", pool: {max_workers: 3, n_gpu_layers: -1}}
Resources:
  Fn:
    Type: AWS::Serverless::Function
    Properties:
      CodeUri: src/
      Handler: app.handler
      Environment: {Variables: {TABLE: !Ref Table, ARN: !GetAtt Table.Arn}}
  Table:
    Type: AWS::S3::Bucket
""")
    t = load_template(path)
    assert [m.name for m in t.models] == ["chat"]
    assert t.models[0].pool.max_workers == 3 and t.models[0].pool.n_gpu_layers == -1
    assert t.function("Fn").environment == {"TABLE": "table", "ARN": "arn:aws:s3:::table"}


def test_template_errors_name_the_place(tmp_path):
    with pytest.raises(TemplateError, match=r"models\.m: min_workers must not exceed"):
        parse_template({"Metadata": {"llmfn": {"models": {"m": {"pool": {"min_workers": 2,
                                                                          "max_workers": 1}}}}}})
    with pytest.raises(TemplateError, match="no such template"):
        load_template(tmp_path / "missing.yaml")


def test_model_flag():
    m = parse_model_flag("s3://bucket/path/qwen-0.5b.gguf")
    assert m.name == "qwen-0.5b" and m.source == "s3://bucket/path/qwen-0.5b.gguf"
    assert parse_model_flag("chat=./m.gguf").name == "chat"
    assert parse_model_flag("embedded").name == "gemma3-270m"


def test_a_request_without_sampling_fields_is_sampled_with_the_engines_defaults():
    from dataclasses import asdict

    from runtime.gateway.schemas import CompletionRequest
    from runtime.pool.sampling import Sampling

    sent = CompletionRequest.model_validate({"model": "m", "prompt": "hi"}).sampling()
    engine = asdict(Sampling())
    assert sent == {name: engine[name] for name in sent}
    assert set(engine) - set(sent) == {"logit_bias", "grammar"}  # sent only when a request sets them
