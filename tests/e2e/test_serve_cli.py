"""``llmfn serve`` as a user runs it: flags, a real port, the openai SDK, a clean stop."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import openai
import pytest


def _start(args, env_extra=None):
    env = {**os.environ, **(env_extra or {})}
    proc = subprocess.Popen([sys.executable, "-m", "runtime.cli", "serve", *args],
                            stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 60
    lines = []
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        lines.append(line)
        m = re.search(r"gateway on (http://\S+)", line)
        if m:
            return proc, m.group(1), lines
        if proc.poll() is not None:
            break
    raise AssertionError("serve did not start:\n" + "".join(lines))


@pytest.mark.llama  # llmfn serve starts the pool
def test_serve_with_model_flag_serves_and_stops_cleanly(model_cache):
    proc, url, _ = _start(["--gateway-port", "0", "--model", "tiny=embedded", "--n-ctx", "512",
                           "--idle-timeout", "60"], {"LLMFN_CACHE_DIR": str(model_cache)})
    try:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0)
        assert [m.id for m in client.models.list().data] == ["tiny"]
        reply = client.completions.create(model="tiny", prompt="Hello", max_tokens=3)
        assert reply.usage.completion_tokens >= 1
        card = client.models.list().data[0].model_dump()
        assert card["context_length"] == 512 and card["pool"]["state"] == "warm"
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0


@pytest.mark.llama  # llmfn serve starts the pool
def test_serve_reads_models_from_the_template(model_cache, tmp_path):
    template = tmp_path / "template.yaml"
    template.write_text("""
Transform: AWS::Serverless-2016-10-31
Metadata:
  llmfn:
    models:
      small-chat:
        source: embedded
        pool: {max_workers: 1, n_ctx: 256}
Resources:
  Fn:
    Type: AWS::Serverless::Function
    Properties: {CodeUri: ., Handler: app.handler, Runtime: python3.11}
""")
    proc, url, _ = _start(["--gateway-port", "0", "--api-port", "0", "--lambda-port", "0", "--template", str(template)],
                          {"LLMFN_CACHE_DIR": str(model_cache)})
    try:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0)
        card = client.models.list().data[0].model_dump()
        assert card["id"] == "small-chat" and card["context_length"] == 256
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0


@pytest.mark.llama
def test_pool_flags_override_the_templates_pool(model_cache, tmp_path):
    template = tmp_path / "template.yaml"
    template.write_text("Metadata:\n  llmfn:\n    models:\n      small-chat:\n        pool: {n_ctx: 256}\n"
                        "Resources: {}\n")
    proc, url, _ = _start(["--gateway-port", "0", "--template", str(template), "--data-dir", str(tmp_path / "data"),
                           "--n-ctx", "320"], {"LLMFN_CACHE_DIR": str(model_cache)})
    try:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0)
        card = client.models.list().data[0].model_dump()
        assert card["id"] == "small-chat" and card["context_length"] == 320
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0


def test_bad_template_names_the_model_and_property(tmp_path):
    template = tmp_path / "template.yaml"
    template.write_text("Metadata:\n  llmfn:\n    models:\n      m1:\n        pool: {max_workers: 0}\n"
                        "Resources: {}\n")
    out = subprocess.run([sys.executable, "-m", "runtime.cli", "serve", "--template", str(template)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "Metadata.llmfn.models.m1" in out.stderr and "max_workers" in out.stderr
    assert "Traceback" not in out.stderr
