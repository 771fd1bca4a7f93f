"""A SIGKILL of the whole ``llmfn serve`` process group, right after calls
succeeded and with streams in flight: after a restart the ledger holds every
call with the tokens its client was shown, and a spent budget stays spent."""
from __future__ import annotations

import http.client
import json
import math
import os
import signal
import sqlite3
import subprocess
import threading
import time
from contextlib import closing, contextmanager
from pathlib import Path
from urllib.parse import urlparse

import pytest

from tests.support.cli import Server, llmfn, wait_until
from tests.support.gateway import call

# every test here starts an llmfn command that serves the embedded model (its pool's workers)
pytestmark = pytest.mark.llama

MODEL = "gemma3-270m"


class Serve(Server):
    """``llmfn serve`` in a process group of its own (its workers with it)."""

    def __init__(self, env: dict[str, str]):
        super().__init__("serve", "--gateway-port", "0", "--model", "embedded", "--n-ctx", "1024", "--slots", "4",
                         "--n-threads", "2", ready="gateway", env=env, new_session=True)

    def kill(self) -> None:
        """SIGKILL the gateway and its workers at once: nothing gets to clean up."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(30)

    def stop(self) -> int:
        try:
            super().stop()
        except subprocess.TimeoutExpired:
            pass
        self.kill()  # whatever is left of the group
        return self.proc.returncode


@contextmanager
def serving(env):
    server = Serve(env)
    try:
        yield server
    finally:
        server.stop()


def _key(env, name: str, *flags: str) -> str:
    cp = llmfn("keys", "create", name, *flags, env=env)
    assert cp.returncode == 0, cp.stderr
    return cp.stdout.strip()


def _rows(data_dir: Path) -> dict[str, dict]:
    """Ledger rows by request id, read straight from the file (no ``Ledger``, which
    would itself mark dead gateways' calls)."""
    with closing(sqlite3.connect(data_dir / "ledger.sqlite3")) as conn:
        conn.row_factory = sqlite3.Row
        return {r["request_id"]: dict(r) for r in conn.execute("SELECT * FROM calls")}


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _refused_for_budget(url: str, key: str) -> None:
    after = call(f"{url}/v1/completions", {"model": MODEL, "prompt": "Hi", "max_tokens": 2},
                 headers=_bearer(key))
    assert after.status == 429, after.body
    assert after.json()["error"]["code"] == "insufficient_quota"


def test_a_kill_right_after_calls_loses_none_of_them(model_cache, tmp_path):
    env = {"LLMFN_CACHE_DIR": str(model_cache), "LLMFN_DATA_DIR": str(tmp_path / "data")}
    key = _key(env, "crash-calls")
    budget = _key(env, "crash-budget", "--daily-tokens", "30")
    shown: dict[str, tuple[int, int]] = {}  # request id -> (prompt, completion) the client saw
    with serving(env) as serve:
        bodies = [("completions", {"prompt": "Hello", "max_tokens": 4}),
                  ("chat/completions", {"messages": [{"role": "user", "content": "Hi"}],
                                        "max_tokens": 4}),
                  ("chat/completions", {"messages": [{"role": "user", "content": "Count"}],
                                        "max_tokens": 6, "stream": True,
                                        "stream_options": {"include_usage": True}}),
                  ("embeddings", {"input": "a sentence to embed"})]
        for i in range(12):
            path, body = bodies[i % len(bodies)]
            reply = call(f"{serve.url}/v1/{path}", {"model": MODEL, **body}, headers=_bearer(key))
            assert reply.status == 200, reply.body
            usage = reply.events()[-2]["usage"] if body.get("stream") else reply.json()["usage"]
            shown[reply.headers["x-request-id"]] = (usage["prompt_tokens"],
                                                    usage.get("completion_tokens", 0))
        spent = 0
        while True:  # spend the budget; a budget admits calls while anything is left of it
            reply = call(f"{serve.url}/v1/completions",
                         {"model": MODEL, "prompt": "Count to ten:", "max_tokens": 12},
                         headers=_bearer(budget))
            if reply.status == 429:
                break
            assert reply.status == 200, reply.body
            spent += 1
            shown[reply.headers["x-request-id"]] = (reply.json()["usage"]["prompt_tokens"],
                                                    reply.json()["usage"]["completion_tokens"])
        assert spent >= 1
        serve.kill()  # at once: no flush, no shutdown
        with serving(env) as again:
            _refused_for_budget(again.url, budget)
    rows = _rows(tmp_path / "data")
    admitted = {rid: r for rid, r in rows.items() if r["call_id"] is not None}
    assert set(shown) <= set(admitted)
    for rid, (prompt, completion) in shown.items():
        r = rows[rid]
        assert (r["status"], r["prompt_tokens"], r["completion_tokens"]) == (
            "success", prompt, completion), r
    # only the refusal after the restart (budget) and none left in flight
    assert not [r for r in rows.values() if r["status"] == "running"]
    assert len(admitted) == len(shown)
    report = json.loads(llmfn("usage", "--key", "crash-calls", "--json", env=env).stdout)["totals"]
    assert (report["calls"], report["success"]) == (12, 12)
    assert report["output_tokens"] == sum(rows[rid]["completion_tokens"] for rid in shown
                                          if rows[rid]["resource"] == "crash-calls")


def _stream(url: str, key: str, out: dict) -> None:
    """One long stream; ``out`` gets the request id, what the client was shown
    (the usage on its last chunk) and how it ended."""
    u = urlparse(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=120)
    body = {"model": MODEL, "prompt": "Write a long story about a cat:", "max_tokens": 400,
            "ignore_eos": True, "stream": True,
            "stream_options": {"include_usage": True, "continuous_usage_stats": True}}
    try:
        conn.request("POST", "/v1/completions", json.dumps(body),
                     {"Content-Type": "application/json", **_bearer(key)})
        resp = conn.getresponse()
        out["request_id"] = resp.headers["x-request-id"]
        out["chunks"] = 0
        while line := resp.readline():
            if line.startswith(b"data: {"):
                chunk = json.loads(line[6:])
                out["usage"] = chunk["usage"]
                out.setdefault("first", time.monotonic())
                out["last"] = time.monotonic()
                out["chunks"] += 1
            elif line.startswith(b"data: [DONE]"):
                out["done"] = True
    except (OSError, http.client.HTTPException) as exc:
        out["error"] = repr(exc)
    finally:
        conn.close()


def test_a_kill_with_streams_in_flight_leaves_each_an_interrupted_row(model_cache, tmp_path):
    env = {"LLMFN_CACHE_DIR": str(model_cache), "LLMFN_DATA_DIR": str(tmp_path / "data")}
    # each stream reserves prompt + 400 tokens: all four fit the budget, with little to spare
    key = _key(env, "crash-streams", "--daily-tokens", "1500")
    streams = [{} for _ in range(4)]
    with serving(env) as serve:
        threads = [threading.Thread(target=_stream, args=(serve.url, key, s)) for s in streams]
        for t in threads:
            t.start()
        wait_until(lambda: all(s.get("chunks", 0) >= 8 for s in streams), 120, step=0.02,
                   message=f"streams never got under way: {streams}")
        serve.kill()
        for t in threads:
            t.join(30)
        assert not any(t.is_alive() for t in threads)
        with serving(env) as again:
            # the streams ran out the budget only by what they reserved: still spent after the crash
            _refused_for_budget(again.url, key)
    rows = _rows(tmp_path / "data")
    for s in streams:
        assert "done" not in s  # the kill cut every stream short
        r = rows[s["request_id"]]
        assert (r["status"], r["error_type"]) == ("failure", "interrupted"), r
        assert r["prompt_tokens"] == s["usage"]["prompt_tokens"]
        # the row's progress trails what the client saw by at most a few progress intervals
        seen = s["usage"]["completion_tokens"]
        rate = seen / max(s["last"] - s["first"], 1e-3)
        slack = math.ceil(rate * 0.5) + 2
        assert seen - slack <= r["completion_tokens"] <= seen + slack, (r, s, slack)
        assert r["reserved_tokens"] == r["prompt_tokens"] + 400
    # reports: the interrupted streams are failures with their known tokens (and the refusal)
    report = json.loads(llmfn("usage", "--key", "crash-streams", "--json", env=env).stdout)["totals"]
    assert (report["calls"], report["success"], report["failure"]) == (5, 0, 5)
    assert report["output_tokens"] == sum(rows[s["request_id"]]["completion_tokens"] for s in streams)
