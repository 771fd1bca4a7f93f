"""Worker processes SIGKILLed mid-stream under a load of concurrent streams:
each affected client gets a clean error, the ledger has every call, and the
pool comes back."""
from __future__ import annotations

import http.client
import json
import os
import signal
import sqlite3
import threading
import time
from contextlib import closing
from urllib.parse import urlparse

import pytest

from runtime.accounting.keys import KeyStore
from tests.support.cli import wait_until
from tests.support.gateway import MODEL, call, model

ADMIN = "admin-secret-key"
KILLS = 20
CLIENTS = 4


class Client(threading.Thread):
    """Streams one completion after another until told to stop; keeps how each ended."""

    def __init__(self, url: str, key: str, stop: threading.Event):
        super().__init__(daemon=True)
        self.url, self.key, self.stop = urlparse(url), key, stop
        self.streams: list[dict] = []
        self.current: dict = {}

    def run(self) -> None:
        while not self.stop.is_set():
            self.current = {"chunks": 0, "started": time.monotonic()}
            self.streams.append(self.current)
            self._one(self.current)

    def _one(self, out: dict) -> None:
        conn = http.client.HTTPConnection(self.url.hostname, self.url.port, timeout=60)
        body = {"model": MODEL, "prompt": "Tell me a long story:", "max_tokens": 120,
                "ignore_eos": True, "stream": True,
                "stream_options": {"include_usage": True, "continuous_usage_stats": True}}
        try:
            conn.request("POST", "/v1/completions", json.dumps(body),
                         {"Content-Type": "application/json", "Authorization": f"Bearer {self.key}"})
            resp = conn.getresponse()
            out["request_id"] = resp.headers["x-request-id"]
            if resp.status != 200:
                out["end"] = ("http", resp.status, json.loads(resp.read()))
                return
            while line := resp.readline():
                if line.startswith(b"data: [DONE]"):
                    out["end"] = ("done",)
                    return
                if line.startswith(b"data: {"):
                    event = json.loads(line[6:])
                    if "error" in event:
                        out["end"] = ("error_event", event)
                        return
                    else:
                        out["usage"] = event["usage"]
                        out["chunks"] += 1
            out.setdefault("end", ("eof without [DONE] or an error",))
        except (OSError, http.client.HTTPException) as exc:  # a hang ends here, as a timeout
            out["end"] = ("broken", repr(exc))
        finally:
            conn.close()


def _worker_pid(url: str, killed: set[int]) -> int | None:
    pools = call(f"{url}/admin/pools", method="GET",
                 headers={"Authorization": f"Bearer {ADMIN}"}).json()
    pids = [p for p in pools[MODEL]["pids"] if p not in killed]
    return pids[0] if pids else None


def _mid_stream(clients: list[Client], since: float) -> bool:
    """A stream sent after ``since`` (the last kill) is well under way."""
    return any(c.current["started"] > since and c.current["chunks"] >= 3 and "end" not in c.current
               for c in clients)


@pytest.mark.timeout(600)  # twenty cold starts of a worker, on a CPU that may be shared
def test_twenty_worker_kills_mid_stream_each_end_cleanly_and_are_all_recorded(make_gateway, tmp_path):
    ledger_at = tmp_path / "ledger.sqlite3"
    key = KeyStore(tmp_path / "keys.sqlite3").create("load")
    gw = make_gateway(model(max_workers=1, slots=CLIENTS), ledger_at=ledger_at,
                      keys_at=tmp_path / "keys.sqlite3", admin_key=ADMIN)
    stop = threading.Event()
    clients = [Client(gw.url, key, stop) for _ in range(CLIENTS)]
    for c in clients:
        c.start()
    killed: set[int] = set()
    last_kill = 0.0
    try:
        for _ in range(KILLS):
            deadline = time.monotonic() + 120
            wait_until(lambda since=last_kill: _mid_stream(clients, since), deadline - time.monotonic(), step=0.01,
                       message="no stream got under way (no recovery)")
            pid = wait_until(lambda: _worker_pid(gw.url, killed), deadline - time.monotonic(), step=0.02)
            os.kill(pid, signal.SIGKILL)
            killed.add(pid)
            last_kill = time.monotonic()
    finally:
        stop.set()
        for c in clients:
            c.join(120)
    assert not any(c.is_alive() for c in clients), "a client hangs"
    streams = [s for c in clients for s in c.streams]
    ends = [s["end"][0] for s in streams]
    assert set(ends) <= {"done", "error_event", "http"}, [s["end"] for s in streams]
    failed = [s for s in streams if s["end"][0] != "done"]
    assert len(failed) >= KILLS  # every kill cut at least one stream short
    for s in failed:
        end = s["end"]
        error = (end[1] if end[0] == "error_event" else end[2])["error"]
        assert set(error) == {"message", "type", "param", "code"}, end
        assert error["type"] == "upstream_error", end
        if end[0] == "http":
            assert end[1] == 502, end

    # the ledger is read while the gateway still runs: every call was committed before its end
    # reached the client
    with closing(sqlite3.connect(ledger_at)) as conn:
        rows = {r[0]: r[1:] for r in conn.execute(
            "SELECT request_id, status, error_type, completion_tokens FROM calls")}
    assert len(rows) == len(streams)
    for s in streams:
        status, error_type, completion = rows[s["request_id"]]
        if s["end"][0] == "done":
            assert (status, completion) == ("success", s["usage"]["completion_tokens"])
        else:
            assert (status, error_type) == ("failure", "upstream_error")
            assert completion == s.get("usage", {}).get("completion_tokens", 0)

    after = call(f"{gw.url}/v1/completions", {"model": MODEL, "prompt": "Hello", "max_tokens": 4},
                 headers={"Authorization": f"Bearer {key}"})
    assert after.status == 200, after.body
