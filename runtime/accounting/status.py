"""The words a call is recorded with: who called (``CallerKind`` and the ledger's
``ServiceType`` it maps to), how the call went (``CallStatus``) and how the
ledger stores that (``LedgerStatus`` and an error type).

String enums: their values are what the ledger's rows, the usage reports and
the metrics' labels have always carried, so JSON and SQLite stay unchanged
(and a plain string of the same value compares equal).
"""
from __future__ import annotations

from enum import StrEnum


class ServiceType(StrEnum):
    """The ledger's kind of resource: a function or an API key."""
    FUNCTION = "function"
    KEY = "key"


class CallerKind(StrEnum):
    ANONYMOUS = "anonymous"
    KEY = "key"
    FUNCTION = "function"
    ADMIN = "admin"

    @property
    def service_type(self) -> ServiceType:
        """Functions are billed as functions; every other caller as a key."""
        return ServiceType.FUNCTION if self is CallerKind.FUNCTION else ServiceType.KEY


class CallStatus(StrEnum):
    """How a call went, as the gateway's meter reports it."""
    RUNNING = "running"  # admitted, in flight
    SUCCESS = "success"
    ERROR = "error"  # with the error's code beside it
    CANCELLED = "cancelled"  # the client went away


class LedgerStatus(StrEnum):
    RUNNING = "running"  # admitted, not ended
    SUCCESS = "success"
    FAILURE = "failure"  # with an error type beside it


CANCELLED = "cancelled"  # the error type of a call whose client went away
INTERRUPTED = "interrupted"  # the error type of a call whose gateway died under it


def call_label(status: CallStatus, error: str | None) -> str:
    """``success``, ``cancelled``, ``error:<code>``: the one spelling of an outcome
    for metrics' labels."""
    return f"error:{error}" if status == CallStatus.ERROR else str(status)


def ledger_outcome(status: CallStatus, error: str | None) -> tuple[LedgerStatus, str | None]:
    """A call's outcome as the ledger stores it: (status, error type)."""
    if status == CallStatus.SUCCESS:
        return LedgerStatus.SUCCESS, None
    if status == CallStatus.RUNNING:
        return LedgerStatus.RUNNING, None
    if status == CallStatus.CANCELLED:
        return LedgerStatus.FAILURE, CANCELLED
    return LedgerStatus.FAILURE, error or "unknown"
