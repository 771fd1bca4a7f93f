"""Accounting: the usage ledger (every LLM call is one row), quotas and rate
limits, API keys and usage reports, as data. It never serves HTTP and never
imports the gateway; the gateway (``runtime.gateway.charging``, ``usage_api``,
``admin``, ``usage_page``) calls it and serves what it returns.

- ``status``: the words a call is recorded with (caller kind, service type, statuses).
- ``ledger``: ``Ledger`` (a SQLite file or a PostgreSQL database, a writer
  thread) and ``LedgerRow``; ``owners``: which gateways' calls in flight are
  still alive (lock files, or PostgreSQL advisory locks).
- ``quotas``: ``QuotaPolicy`` (rpm, tpm, daily and monthly budgets) and its counters.
- ``keys``: ``KeyStore``, the API keys created with ``llmfn keys``.
- ``reports``: ``usage_report``, ``parse_period``, ``render_text``; ``call_log``:
  the ledger's rows a page at a time.
- ``transfer``: the ledger and the keys as JSON lines, out of one database and
  into another (``llmfn ledger export`` / ``import``).
"""
from runtime.accounting.ledger import Ledger, LedgerRow
from runtime.accounting.reports import usage_report

__all__ = ["Ledger", "LedgerRow", "usage_report"]
