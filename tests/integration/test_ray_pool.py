"""Pools whose backend is ray, on a real local Ray cluster of a head and two
simulated nodes (each with a custom resource of its own): workers are actors
placed on the node their resource names, scale to zero (the actor is gone),
cold-start again, survive a killed actor (its request gets a 502, the next one
a new actor), and stream with the usage the ledger records. One cluster and
one gateway for the module: starting either costs seconds of a small CI box."""
from __future__ import annotations

import sqlite3
import threading
import time
from contextlib import closing

import openai
import pytest
import ray
from ray.cluster_utils import Cluster

from runtime.pool import ModelStore
from runtime.pool.ray_backend import NAMESPACE
from tests.support.cli import wait_until
from tests.support.gateway import GatewayThread, call, model

pytestmark = [pytest.mark.llama, pytest.mark.timeout(300)]

ON_A, ON_B = "on-node-a", "on-node-b"  # two pools of the embedded model, one per node
NOWHERE = "on-no-node"  # a pool whose resource no node offers


@pytest.fixture(scope="session")
def ray_nodes():
    """A head that runs nothing, and nodes that offer node_a and node_b: name -> node id."""
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    for name in ("node_a", "node_b"):
        cluster.add_node(num_cpus=2, resources={name: 2})
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, namespace=NAMESPACE, log_to_driver=False)
    nodes = {r: n["NodeID"] for n in ray.nodes() if n["Alive"] for r in n["Resources"] if r.startswith("node_")}
    yield nodes
    ray.shutdown()
    cluster.shutdown()


@pytest.fixture(scope="module")
def gw(ray_nodes, model_cache, tmp_path_factory):
    ledger = tmp_path_factory.mktemp("ray-ledger") / "ledger.sqlite3"
    models = [model(ON_A, backend="ray", resources={"node_a": 1}, idle_timeout=2.0, n_threads=1),
              model(ON_B, backend="ray", resources={"node_b": 1}, n_threads=1),
              model(NOWHERE, backend="ray", resources={"node_c": 1}, cold_start_timeout=2.0)]
    with GatewayThread(models, ModelStore(model_cache, show_progress=False), ledger_at=ledger) as gateway:
        gateway.ledger_at = ledger
        yield gateway


def _sdk(gw) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gw.url}/v1", api_key="x", max_retries=0, timeout=120)


def _actor(gw, pool: str) -> dict:
    [worker] = gw.pool_status(pool)["placement"]
    return worker


def _alive(actor: str) -> bool:
    try:
        ray.get_actor(actor, namespace=NAMESPACE)  # a dead actor's name is released
    except ValueError:
        return False
    return True


def test_workers_are_actors_on_the_node_that_offers_their_resource(gw, ray_nodes):
    client = _sdk(gw)
    for pool, node in ((ON_A, "node_a"), (ON_B, "node_b")):
        assert client.completions.create(model=pool, prompt="Hello", max_tokens=2).choices
        worker = _actor(gw, pool)
        assert (worker["backend"], worker["state"], worker["node_id"]) == ("ray", "warm", ray_nodes[node])
        assert worker["resources"][node] == 1 and worker["resources"]["CPU"] == 1
        card = client.models.retrieve(pool).model_dump()
        assert card["pool"]["placement"][0]["node_id"] == ray_nodes[node]


def test_an_idle_actor_is_killed_and_the_next_request_starts_another(gw):
    client = _sdk(gw)
    assert client.completions.create(model=ON_A, prompt="Hello", max_tokens=2).choices
    first = _actor(gw, ON_A)["actor"]
    assert _alive(first)
    wait_until(lambda: gw.pool_status(ON_A)["state"] == "cold", timeout=30)
    wait_until(lambda: not _alive(first), timeout=15)
    assert gw.pool_status(ON_A)["placement"] == []
    cold_starts = gw.pool_status(ON_A)["cold_starts"]
    assert client.completions.create(model=ON_A, prompt="Hello again", max_tokens=2).choices
    status = gw.pool_status(ON_A)
    assert status["cold_starts"] == cold_starts + 1 and status["placement"][0]["actor"] != first
    assert status["last_cold_start"]["load_s"] > 0


def test_a_killed_actor_fails_its_request_with_502_and_a_new_one_serves_the_next(gw):
    client = _sdk(gw)
    assert client.completions.create(model=ON_B, prompt="warm up", max_tokens=1).choices
    victim = _actor(gw, ON_B)["actor"]
    result = {}

    def long_request():
        result["reply"] = call(f"{gw.url}/v1/completions",
                               {"model": ON_B, "prompt": "Write a long story:", "max_tokens": 900})

    t = threading.Thread(target=long_request)
    t.start()
    wait_until(lambda: gw.pool_status(ON_B)["in_flight"] == 1)
    time.sleep(0.3)
    ray.kill(ray.get_actor(victim, namespace=NAMESPACE))  # as a lost node or the OOM killer would
    t.join(60)
    reply = result["reply"]
    assert reply.status == 502, reply.body
    assert reply.json()["error"]["type"] == "upstream_error"
    assert client.completions.create(model=ON_B, prompt="Hello", max_tokens=2).choices
    assert _actor(gw, ON_B)["actor"] != victim


def test_a_stream_from_an_actor_carries_the_usage_the_ledger_records(gw):
    reply = call(f"{gw.url}/v1/chat/completions",
                 {"model": ON_B, "messages": [{"role": "user", "content": "Count to ten."}],
                  "max_tokens": 12, "stream": True, "stream_options": {"include_usage": True}})
    events = reply.events()
    assert events[-1] == "[DONE]"
    usage = events[-2]["usage"]
    text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events[:-2] if e["choices"])
    finish = [e["choices"][0]["finish_reason"] for e in events[:-2] if e["choices"]][-1]
    assert text and usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert usage["completion_tokens"] == 12 if finish == "length" else 0 < usage["completion_tokens"] <= 12
    with closing(sqlite3.connect(gw.ledger_at)) as db:
        row = db.execute("SELECT status, model, prompt_tokens, completion_tokens FROM calls "
                         "WHERE request_id = ?", (reply.headers["x-request-id"],)).fetchone()
    assert row == ("success", ON_B, usage["prompt_tokens"], usage["completion_tokens"])


def test_a_pool_no_node_can_place_answers_503_and_leaves_no_pending_actor(gw):
    result = {}
    t = threading.Thread(target=lambda: result.setdefault("reply", call(
        f"{gw.url}/v1/completions", {"model": NOWHERE, "prompt": "Hello", "max_tokens": 2})))
    t.start()
    [pending] = wait_until(lambda: [w for w in gw.pool_status(NOWHERE)["placement"] if "actor" in w], timeout=10)
    assert (pending["state"], pending.get("node_id")) == ("starting", None) and _alive(pending["actor"])
    t.join(30)
    assert result["reply"].status == 503, result["reply"].body
    assert result["reply"].json()["error"]["code"] == "model_loading"
    assert gw.pool_status(NOWHERE)["placement"] == []
    wait_until(lambda: not _alive(pending["actor"]), timeout=10)
