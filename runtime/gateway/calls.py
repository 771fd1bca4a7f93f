"""One LLM call, measured once: ``CallMeter`` times it and hands a ``CallRecord``
to every sink (metrics, the per-invocation tally) and to the journal (the
ledger), which sees the call's whole life: admitted, progressing, ended."""
from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Protocol

from runtime.accounting.ledger import committed
from runtime.accounting.status import CallStatus
from runtime.errors import LlmfnError
from runtime.gateway.auth import Principal

log = logging.getLogger("llmfn.gateway")
PROGRESS_INTERVAL_S = 0.1  # how often a call in flight updates its ledger row, at most


@dataclass(frozen=True)
class CallRecord:
    at: float  # wall-clock start, seconds since the epoch
    principal: Principal
    model: str
    endpoint: str
    status: CallStatus
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    latency_s: float
    ttft_s: float | None
    request_id: str = ""
    call_id: str = ""
    reserved: int = 0  # tokens reserved at admission
    error: str | None = None  # the error's code when ``status`` is ERROR

    @property
    def ok(self) -> bool:
        return self.status == CallStatus.SUCCESS


Sink = Callable[[CallRecord], None]


class Journal(Protocol):
    """The durable side of a call (the ledger). ``admit`` raises when the call
    cannot be recorded; the futures resolve once a write is committed."""
    def admit(self, record: CallRecord) -> Future: ...
    def progress(self, record: CallRecord) -> None: ...
    def end(self, record: CallRecord, admitted: bool) -> Future | None: ...


class Calls:
    """Where calls go: the journal through their life, the sinks when they end."""

    def __init__(self) -> None:
        self.sinks: list[Sink] = []
        self.journal: Journal | None = None
        self.on_first_token: list[Callable[[str, float], None]] = []

    def meter(self, model: str, endpoint: str, principal: Principal, request_id: str = "") -> CallMeter:
        return CallMeter(self, model, endpoint, principal, request_id)


class CallMeter:
    def __init__(self, calls: Calls, model: str, endpoint: str, principal: Principal, request_id: str):
        self.calls, self.model, self.endpoint = calls, model, endpoint
        self.principal, self.request_id = principal, request_id
        self.call_id = uuid.uuid4().hex
        self.at = time.time()
        self.started = time.monotonic()
        self.ttft: float | None = None
        self.reserved = 0
        self.admitted = False
        self.recorded = False
        self._written: Future | None = None
        self._admission: Future | None = None
        self._deferred = False  # the admission row waits for ``dispatched``
        self._prompt = 0
        # the admission row holds the call's start: a call shorter than the interval
        # writes no progress at all, and its first tokens pay for no write
        self._progress_at = self.started

    def record(self, status: CallStatus, prompt: int = 0, completion: int = 0, cached: int = 0,
               error: str | None = None) -> CallRecord:
        return CallRecord(self.at, self.principal, self.model, self.endpoint, status, prompt,
                          completion, cached, time.monotonic() - self.started, self.ttft,
                          self.request_id, self.call_id, self.reserved, error)

    async def admit(self, reserved: int, prompt: int = 0) -> None:
        """Record the call as admitted and wait for the commit: only then may it
        reach a worker. Raises ``LedgerUnavailable`` when it cannot be recorded."""
        self.begin(reserved, prompt)
        await self.confirm()

    def begin(self, reserved: int, prompt: int = 0, *, defer: bool = False) -> None:
        """Queue the call's admission row; ``confirm`` waits for its commit. With
        ``defer`` it is queued by ``dispatched`` instead, once the worker has the
        request (or by ``confirm``, whichever comes first)."""
        self.reserved, self._prompt = reserved, prompt
        self.admitted = True  # from now on the call's end updates that row
        if self.calls.journal is not None:
            self._deferred = True
            if not defer:
                self.dispatched()

    def dispatched(self) -> None:
        """The worker has the request: queue the admission row if it waited. Its write
        (another thread's) then overlaps the prompt instead of delaying the request."""
        if self._deferred:
            self._deferred = False
            self._admission = self.calls.journal.admit(self.record(CallStatus.RUNNING, self._prompt))

    async def confirm(self) -> None:
        """Wait until the admission row is on disk (at once when it already is).
        Raises ``LedgerUnavailable`` when it cannot be written."""
        self.dispatched()
        written, self._admission = self._admission, None
        if written is None:
            return
        if written.done():  # the usual case by the first token: no trip through the loop
            if written.exception() is not None:
                raise written.exception()
            return
        try:
            await committed(written)
        except asyncio.CancelledError:
            self.done(CallStatus.CANCELLED, self._prompt)  # the client left while its row was written
            raise

    def first_token(self) -> None:
        if self.ttft is None:
            self.ttft = time.monotonic() - self.started
            for hook in self.calls.on_first_token:
                hook(self.model, self.ttft)

    def progress(self, prompt: int, completion: int, cached: int = 0) -> None:
        """Tokens so far, so that a crash loses little of them (throttled)."""
        journal = self.calls.journal
        if journal is None or not self.admitted or self.recorded:
            return
        now = time.monotonic()
        if now - self._progress_at >= PROGRESS_INTERVAL_S:
            self._progress_at = now
            journal.progress(self.record(CallStatus.RUNNING, prompt, completion, cached))

    def done(self, status: CallStatus, prompt: int = 0, completion: int = 0, cached: int = 0,
             error: str | None = None) -> None:
        if self.recorded:
            return
        self.recorded = True
        self._deferred = False  # never queued: the end is the call's one row
        record = self.record(status, prompt, completion, cached, error)
        if self.calls.journal is not None:
            self._written = self.calls.journal.end(record, self.admitted)
        try:  # after the response is on its way: the sinks are not the caller's wait
            asyncio.get_running_loop().call_soon(self._record, record)
        except RuntimeError:  # no loop (a synchronous caller)
            self._record(record)

    def failed(self, err: LlmfnError, prompt: int = 0, completion: int = 0) -> None:
        """``done`` with the error's code."""
        self.done(CallStatus.ERROR, prompt, completion, error=err.code)

    async def finish(self, status: CallStatus, prompt: int = 0, completion: int = 0, cached: int = 0,
                     error: str | None = None) -> None:
        """``done``, then wait until the ledger holds the outcome, so that the end
        of the response never reaches the client before it. A success that cannot
        be recorded raises ``LedgerUnavailable``; an error goes out regardless
        (its row stays running and is marked interrupted at the next start)."""
        if self.recorded:
            return
        self.done(status, prompt, completion, cached, error)
        if self._written is None:
            return
        try:
            if not self._written.done():
                await committed(self._written)
            elif self._written.exception() is not None:  # committed at once: no trip through the loop
                raise self._written.exception()
        except LlmfnError:
            if status == CallStatus.SUCCESS:
                raise
            log.warning("the ledger could not record the end of call %s (%s)", self.request_id, status)

    def _record(self, record: CallRecord) -> None:
        for sink in self.calls.sinks:
            sink(record)
