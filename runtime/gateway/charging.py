"""Charging a call for the tokens it spends: which limits apply to a caller and
model (``QuotaBook``), admitting a call (quota, then its ledger row), the
ledger journal, and ``charge``, the one way an endpoint spends tokens:
reserve -> record -> settle, whether the call succeeds, fails or is cancelled.
The arithmetic and the storage live in ``runtime.accounting``; the routes that
read them in ``runtime.gateway.usage_api`` and ``runtime.gateway.admin``."""
from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace

from aiohttp import web

from runtime.accounting.keys import KeyStore
from runtime.accounting.ledger import Ledger, LedgerRow
from runtime.accounting.quotas import Grant, Limits, QuotaPolicy
from runtime.accounting.status import CallerKind, CallStatus
from runtime.errors import LlmfnError
from runtime.gateway.auth import Principal
from runtime.gateway.calls import CallMeter, CallRecord

log = logging.getLogger("llmfn.gateway")


@dataclass
class QuotaBook:
    """Where limits come from: the model's defaults (for everyone), the
    function's ``Metadata.llmfn.quotas`` and the key's own limits."""
    model_defaults: dict[str, Limits] = field(default_factory=dict)
    functions: dict[str, dict[str, Limits]] = field(default_factory=dict)  # model or "*"
    keys: KeyStore | None = None

    def limits(self, principal: Principal, model: str) -> Limits:
        limits = self.model_defaults.get(model, Limits())
        if principal.kind is CallerKind.FUNCTION:
            per_model = self.functions.get(principal.name, {})
            limits = limits.tighten(per_model.get(model) or per_model.get("*") or Limits())
        elif principal.kind is CallerKind.KEY and self.keys is not None:
            record = self.keys.get(principal.name)
            if record is not None:
                limits = limits.tighten(record.limits)
        return limits


class Accounting:
    def __init__(self, policy: QuotaPolicy, book: QuotaBook, ledger: Ledger | None):
        self.policy, self.book, self.ledger = policy, book, ledger
        self.journal = LedgerJournal(ledger) if ledger is not None else None

    async def admit(self, meter: CallMeter, tokens: int, prompt_tokens: int = 0, *,
                    wait: bool = True) -> Grant | None:
        """Admit a call before it is dispatched: reserve ``tokens`` against the
        caller's limits (429s), then wait until the ledger has its row (503 when
        it cannot). A refused call gives its reservation back. ``wait=False``
        leaves the row to the caller: ``meter.dispatched()`` queues it once the
        worker has the request (a generation overlaps the write with its prompt),
        and ``meter.confirm()`` must come before any byte of the response leaves."""
        grant = await self.reserve(meter.principal, meter.model, tokens)
        try:
            # A ledger that would refuse the row (its last write failed, or its backlog is
            # full) is asked, and waited for, at once: the refusal comes before any work.
            meter.begin(tokens, prompt_tokens, defer=not wait and self._takes_rows())
            if wait or (self.ledger is not None and not self.ledger.healthy):
                await meter.confirm()
        except BaseException:
            await self.settle(grant, 0)
            raise
        return grant

    def _takes_rows(self) -> bool:
        """The ledger's last write went through and its backlog has room."""
        return self.ledger is None or (self.ledger.healthy and not self.ledger.backlogged)

    async def reserve(self, principal: Principal, model: str, tokens: int) -> Grant | None:
        limits = self.book.limits(principal, model)
        if not limits:
            return None
        kind, resource = principal.subject
        return await self.policy.reserve(kind, resource, model, limits, tokens)

    async def settle(self, grant: Grant | None, actual: int) -> None:
        if grant is not None:
            await self.policy.settle(grant, actual)

    async def remaining(self, principal: Principal, model: str) -> int | None:
        kind, resource = principal.subject
        return await self.policy.remaining(kind, resource, model, self.book.limits(principal, model))


class LedgerJournal:
    """A call's life in the ledger (``runtime.gateway.calls.Journal``): its row
    at admission, its progress, its end; a call never admitted is one row."""

    def __init__(self, ledger: Ledger):
        self.ledger = ledger

    def admit(self, record: CallRecord) -> Future:
        return self.ledger.admit(LedgerRow.from_call(record))

    def progress(self, record: CallRecord) -> None:
        self.ledger.progress(LedgerRow.from_call(record))

    def end(self, record: CallRecord, admitted: bool) -> Future | None:
        row = LedgerRow.from_call(record)
        if admitted:
            return self.ledger.complete(row)
        try:
            self.ledger.record(replace(row, call_id=None, reserved_tokens=0))  # refused, never ran
        except RuntimeError:  # closed: the gateway is stopping
            log.warning("the ledger is closed; a refused call was not recorded")
        return None


ACCOUNTING = web.AppKey("accounting", Accounting)


@dataclass
class Charge:
    """What a call has spent so far. The endpoint updates ``prompt`` and
    ``completion`` (or gives ``charge`` a ``counted`` callable that reads them)."""
    meter: CallMeter
    grant: Grant | None
    prompt: int = 0
    completion: int = 0
    counted: Callable[[], tuple[int, int]] | None = None

    @property
    def headers(self) -> dict[str, str]:
        """The rate-limit headers of the caller's limits, for the response."""
        return self.grant.headers() if self.grant else {}

    def tokens(self) -> tuple[int, int]:
        return self.counted() if self.counted else (self.prompt, self.completion)


@asynccontextmanager
async def charge(accounting: Accounting, meter: CallMeter, reserve: int, prompt: int = 0, *,
                 wait: bool = True, counted: Callable[[], tuple[int, int]] | None = None
                 ) -> AsyncIterator[Charge]:
    """Admit the call (reserve ``reserve`` tokens, then its ledger row), run the
    body, and settle the reservation to the tokens counted, whatever happens: an
    error ends the call's row with the error's code, a cancellation (the client
    left) as cancelled. The body finishes the meter itself on success."""
    grant = await accounting.admit(meter, reserve, prompt, wait=wait)
    spent = Charge(meter, grant, counted=counted)
    try:
        yield spent
    except LlmfnError as err:
        await meter.finish(CallStatus.ERROR, *spent.tokens(), error=err.code)
        raise
    except BaseException:
        # The client went away (cancelled) or a bug: still count what was generated.
        meter.done(CallStatus.CANCELLED, *spent.tokens())
        raise
    finally:
        await accounting.settle(grant, sum(spent.tokens()))
