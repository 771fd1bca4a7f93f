"""Model pools over real llama.cpp worker processes: scale to zero, cold starts
that queue, a killed worker, capacity limits, and S3 models through moto."""
from __future__ import annotations

import os
import pathlib
import signal
import socket
import threading
import time

import boto3
import openai
import pytest

from tests.support.cli import wait_until
from tests.support.gateway import MODEL, call, model


def _sdk(gw) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gw.url}/v1", api_key="x", max_retries=0, timeout=120)



def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); it is gone once it is no longer in /proc or is 'Z'.
    stat = pathlib.Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split(")")[-1].split()[0] != "Z"


def test_scale_to_zero_frees_the_worker_and_restarts_on_demand(make_gateway):
    gw = make_gateway(model(idle_timeout=1.0))
    assert gw.pool_status(MODEL)["state"] == "cold"
    client = _sdk(gw)
    assert client.completions.create(model=MODEL, prompt="Hello", max_tokens=2).choices
    status = gw.pool_status(MODEL)
    assert status["state"] == "warm" and len(status["pids"]) == 1
    pid = status["pids"][0]
    assert status["placement"] == [{"state": "warm", "backend": "local", "node_ip": socket.gethostname(), "pid": pid}]
    assert _alive(pid)
    wait_until(lambda: gw.pool_status(MODEL)["state"] == "cold", timeout=20)
    wait_until(lambda: not _alive(pid), timeout=10)
    cards = {m.id: m.model_dump() for m in client.models.list().data}
    assert cards[MODEL]["pool"]["state"] == "cold"
    cold = cards[MODEL]["pool"]["last_cold_start"]
    assert cold["ready_s"] > 0
    assert cold["fetch_s"] + cold["process_start_s"] + cold["load_s"] <= cold["ready_s"] + 0.01
    # a spare that had the engine prepared already loaded it before the request came
    assert cold["load_s"] > 0 or cold["spare"] == "preloaded"
    assert client.completions.create(model=MODEL, prompt="Hello again", max_tokens=2).choices
    status = gw.pool_status(MODEL)
    assert status["cold_starts"] == 2 and status["pids"][0] != pid


def test_cold_start_takes_a_spare_with_the_engine_prepared(make_gateway):
    # A CPU pool's spare maps the weights and creates the context while the pool is
    # at rest, so a cold start only hands it over.
    gw = make_gateway(model(idle_timeout=1.0, slots=2))
    wait_until(lambda: gw.pool_status(MODEL)["spare"] == "ready", timeout=60)
    client = _sdk(gw)
    assert client.completions.create(model=MODEL, prompt="Hello", max_tokens=2).choices
    assert gw.pool_status(MODEL)["last_cold_start"]["spare"] == "preloaded"
    # after scale to zero the refilled spare is prepared again for the next cold start
    wait_until(lambda: gw.pool_status(MODEL)["state"] == "cold", timeout=20)
    wait_until(lambda: gw.pool_status(MODEL)["spare"] == "ready", timeout=60)
    assert client.completions.create(model=MODEL, prompt="Hello again", max_tokens=2).choices
    status = gw.pool_status(MODEL)
    assert status["cold_starts"] == 2 and status["last_cold_start"]["spare"] == "preloaded"


def test_killed_worker_fails_in_flight_with_502_then_recovers(make_gateway):
    gw = make_gateway(model())
    client = _sdk(gw)
    client.completions.create(model=MODEL, prompt="warm up", max_tokens=1)
    pid = gw.pool_status(MODEL)["pids"][0]
    result = {}

    def long_request():
        result["reply"] = call(f"{gw.url}/v1/completions",
                               {"model": MODEL, "prompt": "Write a long story:", "max_tokens": 900})

    t = threading.Thread(target=long_request)
    t.start()
    wait_until(lambda: gw.pool_status(MODEL)["in_flight"] == 1)
    time.sleep(0.3)
    os.kill(pid, signal.SIGKILL)
    t.join(60)
    reply = result["reply"]
    assert reply.status == 502, reply.body
    assert reply.json()["error"]["type"] == "upstream_error"
    assert client.completions.create(model=MODEL, prompt="Hello", max_tokens=2).choices
    assert gw.pool_status(MODEL)["pids"][0] != pid


def test_killed_worker_mid_stream_ends_the_stream_with_an_error(make_gateway):
    gw = make_gateway(model())
    client = _sdk(gw)
    stream = client.completions.create(model=MODEL, prompt="Write a long story:", max_tokens=900,
                                       stream=True)
    with pytest.raises(openai.APIError) as exc:
        for i, _chunk in enumerate(stream):
            if i == 2:
                os.kill(gw.pool_status(MODEL)["pids"][0], signal.SIGKILL)
    assert "worker died" in str(exc.value)
    assert client.completions.create(model=MODEL, prompt="Hello", max_tokens=2).choices


def test_concurrent_cold_starts_start_one_worker(make_gateway):
    gw = make_gateway(model(max_workers=1))
    client = _sdk(gw)
    replies, errors = [], []

    def one(i):
        try:
            replies.append(client.completions.create(model=MODEL, prompt=f"Number {i}:", max_tokens=2))
        except Exception as exc:  # collected to fail the test below with the cause
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    wait_until(lambda: gw.pool_status(MODEL)["queued"] > 0 or len(replies) == 6)
    for t in threads:
        t.join(120)
    assert not errors and len(replies) == 6
    status = gw.pool_status(MODEL)
    assert status["cold_starts"] == 1 and len(status["pids"]) == 1


def test_queue_full_is_503_with_retry_after(make_gateway):
    gw = make_gateway(model(max_workers=1, queue_limit=1))
    client = _sdk(gw)
    client.completions.create(model=MODEL, prompt="warm", max_tokens=1)
    body = {"model": MODEL, "prompt": "Write a long story:", "max_tokens": 120}
    threads = [threading.Thread(target=call, args=(f"{gw.url}/v1/completions", body)) for _ in range(2)]
    threads[0].start()
    wait_until(lambda: gw.pool_status(MODEL)["in_flight"] == 1)
    threads[1].start()
    wait_until(lambda: gw.pool_status(MODEL)["queued"] == 1)
    reply = call(f"{gw.url}/v1/completions", body)
    assert reply.status == 503
    assert reply.json()["error"]["code"] == "server_overloaded"
    assert int(reply.headers["Retry-After"]) >= 1
    for t in threads:
        t.join(120)


def test_cold_start_over_its_limit_is_503_model_loading(make_gateway):
    gw = make_gateway(model(cold_start_timeout=0.05))
    reply = call(f"{gw.url}/v1/completions", {"model": MODEL, "prompt": "Hi", "max_tokens": 1})
    assert reply.status == 503
    assert reply.json()["error"]["code"] == "model_loading"
    assert "Retry-After" in reply.headers


def test_api_keys_required_only_when_configured(make_gateway):
    open_gw = make_gateway(model())
    for headers in ({}, {"Authorization": "Bearer anything"}):
        assert call(f"{open_gw.url}/v1/models", method="GET", headers=headers).status == 200
    gw = make_gateway(model(), api_keys={"sk-test-123"})
    reply = call(f"{gw.url}/v1/models", method="GET")
    assert reply.status == 401 and reply.json()["error"]["type"] == "authentication_error"
    reply = call(f"{gw.url}/v1/models", method="GET", headers={"Authorization": "Bearer sk-wrong"})
    assert reply.status == 401 and "sk-wrong" not in reply.body.decode()
    ok = openai.OpenAI(base_url=f"{gw.url}/v1", api_key="sk-test-123", max_retries=0)
    assert [m.id for m in ok.models.list().data] == [MODEL]
    assert call(f"{gw.url}/health", method="GET").status == 200


@pytest.fixture(scope="module")
def s3_model(s3_server, model_cache):
    """The embedded GGUF uploaded to moto's S3 server over HTTP."""
    bucket = "models"
    s3 = boto3.client("s3", endpoint_url=s3_server)
    s3.create_bucket(Bucket=bucket)
    gguf = next(pathlib.Path(model_cache, "embedded").glob("*.gguf"))
    s3.upload_file(str(gguf), bucket, "gemma/gemma3-270m.gguf")
    return f"s3://{bucket}/gemma/gemma3-270m.gguf"


def test_s3_model_concurrent_cold_starts_download_once(make_gateway, s3_server, s3_model, tmp_path):
    from runtime.pool import ModelStore
    from tests.support.gateway import GatewayThread

    store = ModelStore(tmp_path / "cache", s3_endpoint_url=s3_server, show_progress=False)
    with GatewayThread([model("gemma-s3", s3_model, max_workers=1)], store) as gw:
        client = _sdk(gw)
        replies = []
        threads = [threading.Thread(target=lambda: replies.append(
            client.chat.completions.create(model="gemma-s3", max_tokens=2,
                                           messages=[{"role": "user", "content": "hi"}])))
            for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(180)
        assert len(replies) == 4
        assert store.downloads() == 1
        status = gw.pool_status("gemma-s3")
        assert status["cold_starts"] == 1 and status["last_cold_start"]["downloaded"] is True
        cached = next((tmp_path / "cache").rglob("gemma3-270m.gguf"))
        assert cached.stat().st_size > 100_000_000


def test_s3_missing_model_is_a_clear_error(make_gateway, s3_server, s3_model):
    gw = make_gateway(model("ghost", "s3://models/missing.gguf"), s3_endpoint_url=s3_server)
    reply = call(f"{gw.url}/v1/chat/completions",
                 {"model": "ghost", "messages": [{"role": "user", "content": "hi"}]})
    assert reply.status == 503
    err = reply.json()["error"]
    assert err["code"] == "model_unavailable"
    assert "ghost" in err["message"] and "s3://models/missing.gguf" in err["message"]
    assert "Traceback" not in err["message"] and "testing" not in err["message"]
    assert call(f"{gw.url}/health", method="GET").status == 200
