"""One LLM call, measured once: ``CallMeter`` times it and hands a ``CallRecord``
to every sink (metrics, the per-invocation tally, the ledger)."""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Callable

from runtime.gateway.auth import Principal


@dataclass(frozen=True)
class CallRecord:
    at: float  # wall-clock start, seconds since the epoch
    principal: Principal
    model: str
    endpoint: str
    status: str  # "success" | "error:<code>" | "cancelled"
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    latency_s: float
    ttft_s: float | None
    request_id: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "success"


Sink = Callable[[CallRecord], None]


class Calls:
    """Where finished calls go."""

    def __init__(self) -> None:
        self.sinks: list[Sink] = []
        self.on_first_token: list[Callable[[str, float], None]] = []

    def meter(self, model: str, endpoint: str, principal: Principal, request_id: str = "") -> "CallMeter":
        return CallMeter(self, model, endpoint, principal, request_id)


class CallMeter:
    def __init__(self, calls: Calls, model: str, endpoint: str, principal: Principal, request_id: str):
        self.calls, self.model, self.endpoint = calls, model, endpoint
        self.principal, self.request_id = principal, request_id
        self.at = time.time()
        self.started = time.monotonic()
        self.ttft: float | None = None
        self.recorded = False

    def first_token(self) -> None:
        if self.ttft is None:
            self.ttft = time.monotonic() - self.started
            for hook in self.calls.on_first_token:
                hook(self.model, self.ttft)

    def done(self, status: str, prompt: int = 0, completion: int = 0, cached: int = 0) -> None:
        if self.recorded:
            return
        self.recorded = True
        record = CallRecord(self.at, self.principal, self.model, self.endpoint, status, prompt,
                            completion, cached, time.monotonic() - self.started, self.ttft,
                            self.request_id)
        try:  # after the response is on its way: the sinks are not the caller's wait
            asyncio.get_running_loop().call_soon(self._record, record)
        except RuntimeError:  # no loop (a synchronous caller)
            self._record(record)

    def _record(self, record: CallRecord) -> None:
        for sink in self.calls.sinks:
            sink(record)
