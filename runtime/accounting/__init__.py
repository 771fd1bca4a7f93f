"""Accounting: the usage ledger (every LLM call is one row), quotas and rate
limits, and usage reports. It never serves HTTP itself; the gateway calls it.

- ``ledger``: ``Ledger`` (SQLite, WAL, a writer thread) and ``LedgerRow``.
- ``reports``: ``usage_report``, ``parse_period``, ``render_text``.
- ``page``: the usage web page's HTML and static files, for the gateway to mount.
"""
from runtime.accounting.ledger import Ledger, LedgerRow
from runtime.accounting.reports import usage_report

__all__ = ["Ledger", "LedgerRow", "usage_report"]
