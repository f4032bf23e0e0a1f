"""Two starts computing closed days' budget shares at once (otel_budget_budget_spend)
must not deadlock: each upserts share rows, and two callers asking for different sets
of days, or for the budgets in another order, used to take the rows' locks in
different orders. Counted by the server (pg_stat_database.deadlocks), since the store
retries a deadlock and only a second of waiting would show otherwise."""

from __future__ import annotations

import threading
from datetime import date, timedelta
from typing import Any

import psycopg

from otel_budget.budgets import Budget
from otel_budget.stores.postgres import PostgresStore

FIRST = date(2026, 10, 1)
DAYS = [(FIRST + timedelta(days=i)).isoformat() for i in range(31)]
TODAY = (FIRST + timedelta(days=31)).isoformat()
BUDGETS = [Budget(f"b{i}", 100.0, period="month", match={"team": f"t{i}"}) for i in range(4)]


def _entry(day: str, writer: str, seq: int) -> dict[str, Any]:
    items = [{"attributes": {"team": f"t{i}"}, "spend_usd": 0.25} for i in range(4)]
    return {"date": day, "writer_id": writer, "instance_id": "h", "spend_usd": 1.0,
            "seq": seq, "updated_at": f"{day}T10:00:00+00:00", "by_attributes": items}


def _deadlocks(url: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute("select deadlocks from pg_stat_database "
                           "where datname = current_database()").fetchone()
    assert row is not None
    return int(row[0])


def test_concurrent_share_computations_take_locks_in_one_order(pg_clean: str) -> None:
    stores = [PostgresStore(pg_clean) for _ in range(2)]
    try:
        before = _deadlocks(pg_clean)
        answers: list[dict[str, dict[str, float]]] = []
        errors: list[BaseException] = []
        for round_ in range(6):
            for day in DAYS:  # a new entry each round: every kept share is stale again
                stores[0].merge_writer(_entry(day, "w", round_ + 1))
            asks = [(DAYS, BUDGETS), (DAYS[::-1][: 20 + round_], BUDGETS[::-1])]
            start = threading.Barrier(2)

            def ask(store: PostgresStore, days: list[str], budgets: list[Budget],
                    start: threading.Barrier = start) -> None:
                start.wait()
                try:
                    answers.append(store.budget_day_spend(days, budgets, closed_before=TODAY))
                except BaseException as exc:  # reported below
                    errors.append(exc)

            threads = [threading.Thread(target=ask, args=(store, *args))
                       for store, args in zip(stores, asks, strict=True)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(60)
        assert errors == []
        assert all(spend == {b.name: 0.25 for b in BUDGETS}
                   for answer in answers for spend in answer.values())
        assert _deadlocks(pg_clean) == before, "the server broke a deadlock"
    finally:
        for store in stores:
            store.close()
