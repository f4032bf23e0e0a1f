"""How long each wait lasts against a hung PostgreSQL (every server process
SIGSTOPped), with the store's default timeouts. Run from the repository root:

    python -m tests.bench.hung_store

Prints one line per measured call (seconds). The server is a throwaway one
(tests/support/pg_server.py), resumed and removed at the end whatever happens.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable

from otel_budget import BudgetConfig, BudgetMeter
from otel_budget.stores.postgres import PostgresStore
from tests.support.pg_server import start_server


def _timed(what: str, call: Callable[[], object]) -> None:
    started = time.monotonic()
    try:
        outcome = repr(call())
    except Exception as exc:  # the measured outcome, printed
        outcome = type(exc).__name__
    print(f"{what:<40} {time.monotonic() - started:6.2f} s  {outcome}")


def main() -> None:
    server = start_server()
    try:
        url = server.create_database("bench_hung", migrate=True)
        spool = tempfile.mkdtemp(prefix="otel-budget-bench-")
        store = PostgresStore(url)
        config = BudgetConfig(daily_cap_usd=100.0, instance_id="bench", checkpoint_every=1,
                              collect_interval_s=3600.0, spool_dir=spool)
        meter = BudgetMeter(config, store=store).start()
        meter.record(1.0, {"agent": "a"})
        meter.checkpoint()
        fresh = PostgresStore(url)
        with server.frozen():
            meter.record(2.0, {"agent": "a"})
            _timed("store.get (pool 5 s + io 6 s bound)", lambda: store.get("x", "y"))
            _timed("meter.checkpoint(timeout=1)", lambda: meter.checkpoint(timeout=1.0))
            _timed("meter.collect()", meter.collect)
            _timed("meter.shutdown(timeout=2)", lambda: meter.shutdown(timeout=2.0))
            second = BudgetMeter(BudgetConfig(daily_cap_usd=100.0, instance_id="bench-2",
                                              spool_dir=spool), store=fresh)
            _timed("start() on a new store (start_timeout_s=5)", second.start)
            _timed("shutdown(timeout=2) of that meter", lambda: second.shutdown(timeout=2.0))
        store.close()
        fresh.close()
    finally:
        server.destroy()


if __name__ == "__main__":
    main()
