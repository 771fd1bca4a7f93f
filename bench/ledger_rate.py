"""The ledger's write rate: calls per second that are admitted and completed,
each waiting for both of its commits as the gateway does, with many calls at
once (group commit), on a SQLite file and on a PostgreSQL database (a real
server started in a temporary folder, as the tests start it; no model needed).

Both sides commit without a disk flush per transaction here (SQLite's WAL with
``synchronous = NORMAL``; the test server runs with ``fsync = off``), so the
ratio is what the database path itself costs: round trips to a server process
against a file in the gateway's own process.

    .venv/bin/python bench/ledger_rate.py [--calls 4000] [--concurrency 64]
"""
from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from _common import figures_line, log, ratio

from runtime.accounting.ledger import Ledger, LedgerRow, committed
from runtime.accounting.status import LedgerStatus, ServiceType
from tests.support.postgres import PostgresServer


def _row(i: int, status: LedgerStatus) -> LedgerRow:
    return LedgerRow(ts=time.time(), service_type=ServiceType.KEY, resource="bench", invocation_id=None,
                     model="bench", prompt_tokens=16, completion_tokens=0 if status == "running" else 8,
                     cached_tokens=0, status=status, error_type=None, latency_ms=20.0, ttft_ms=5.0,
                     request_id=f"req-{i}", endpoint="completions", call_id=f"c{i}", reserved_tokens=32)


async def calls_per_second(target, calls: int, concurrency: int) -> float:
    """Admitted + completed calls per second, ``concurrency`` of them in flight."""
    ledger = Ledger(target)
    numbers = iter(range(calls))

    async def caller() -> None:
        for i in numbers:
            await committed(ledger.admit(_row(i, LedgerStatus.RUNNING)))
            await committed(ledger.complete(_row(i, LedgerStatus.SUCCESS)))

    t0 = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(concurrency)))
    elapsed = time.perf_counter() - t0
    written = ledger.read("SELECT COUNT(*) FROM calls WHERE status = 'success'")[0][0]
    ledger.close()
    if written != calls:
        log(f"warning: {written} of {calls} calls written")
    return calls / elapsed


async def run(args: argparse.Namespace) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="llmfn-bench-ledger-") as tmp:
        log(f"SQLite: {args.calls} calls, {args.concurrency} at once")
        sqlite = await calls_per_second(Path(tmp) / "ledger.sqlite3", args.calls, args.concurrency)
    server = PostgresServer().start()
    try:
        log(f"PostgreSQL: {args.calls} calls, {args.concurrency} at once")
        postgres = await calls_per_second(server.create_database(), args.calls, args.concurrency)
    finally:
        server.stop()
    return {"sqlite_calls_per_s": sqlite, "postgres_calls_per_s": postgres,
            "postgres_over_sqlite": ratio(postgres, sqlite)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--calls", type=int, default=4000)
    p.add_argument("--concurrency", type=int, default=64)
    print(figures_line("ledger_rate", asyncio.run(run(p.parse_args()))))


if __name__ == "__main__":
    main()
