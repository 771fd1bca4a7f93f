"""Accounting: the usage ledger (every LLM call is one row), quotas and rate
limits, API keys and usage reports, as data. It never serves HTTP and never
imports the gateway; the gateway (``runtime.gateway.charging``, ``usage_api``,
``admin``, ``usage_page``) calls it and serves what it returns.

- ``status``: the words a call is recorded with (caller kind, service type, statuses).
- ``ledger``: ``Ledger`` (SQLite, WAL, a writer thread) and ``LedgerRow``.
- ``quotas``: ``QuotaPolicy`` (rpm, tpm, daily and monthly budgets) and its counters.
- ``keys``: ``KeyStore``, the API keys created with ``llmfn keys``.
- ``reports``: ``usage_report``, ``parse_period``, ``render_text``.
"""
from runtime.accounting.ledger import Ledger, LedgerRow
from runtime.accounting.reports import usage_report

__all__ = ["Ledger", "LedgerRow", "usage_report"]
