"""The ledger's hot path queues (cell, nanos) for a set seen today and drains in
batches: reads count every call that returned, the queue stays short without a
reader, a held lock never stops a call, and a cell queued across midnight counts on
the open day, never lost."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

from otel_budget.budgets import Budget
from otel_budget.spend import _DRAIN_AT, _DRAIN_CHUNK, SpendLedger
from tests.conftest import FakeClock

UTC = ZoneInfo("UTC")


def make(clock: FakeClock) -> SpendLedger:
    return SpendLedger([Budget("all", 1e6), Budget("a_only", 1e6, match={"agent": "a"})],
                       tz=UTC, max_attribute_sets=100, clock=clock)


def test_every_returned_call_is_in_every_read(clock: FakeClock) -> None:
    ledger = make(clock)
    for calls in (1, 7, _DRAIN_AT - 1, _DRAIN_AT, 3 * _DRAIN_CHUNK + 5):
        before = ledger.snapshot().total_nanos
        for i in range(calls):
            ledger.add(3, {"agent": "a" if i % 2 else "b"})
        snap = ledger.snapshot()
        assert snap.total_nanos - before == 3 * calls
    snap = ledger.snapshot()
    by = {attrs["agent"]: n for attrs, n in snap.by_attributes}
    assert by["a"] + by["b"] == snap.total_nanos
    assert snap.by_budget == {"all": snap.total_nanos, "a_only": by["a"]}
    assert sorted(n for _, n in ledger.export_points()) == sorted(by.values())


def test_the_queue_stays_short_without_a_reader(clock: FakeClock) -> None:
    ledger = make(clock)
    longest = 0
    for _ in range(20_000):
        ledger.add(1, {"agent": "a"})
        longest = max(longest, len(ledger._queue))
    assert longest <= _DRAIN_AT
    assert ledger.snapshot().total_nanos == 20_000


def test_a_held_lock_never_stops_a_call(clock: FakeClock) -> None:
    ledger = make(clock)
    ledger.add(1, {"agent": "a"})  # seen today: later calls take the queue
    done = threading.Event()

    def calls() -> None:
        for _ in range(5 * _DRAIN_CHUNK):
            ledger.add(1, {"agent": "a"})
        done.set()

    with ledger._lock:  # a preempted holder, say
        worker = threading.Thread(target=calls)
        worker.start()
        finished = done.wait(30)
    worker.join()
    assert finished  # all 5,120 calls returned while the lock was held
    assert ledger.snapshot().total_nanos == 1 + 5 * _DRAIN_CHUNK


def test_a_cell_queued_across_midnight_counts_on_the_open_day(clock: FakeClock) -> None:
    ledger = make(clock)
    day = ledger.day
    clock.set(datetime.combine(day, datetime.max.time(), tzinfo=timezone.utc)
              - timedelta(seconds=1))
    ledger.add(10, {"agent": "a"})
    # The interleaving to force: a call read yesterday's cell before midnight, the
    # roll drained the queue, then the call appended.
    stale = ledger._cells[frozenset({"agent": "a"}.items())]
    clock.advance(seconds=2)
    ledger.roll_if_due()
    ledger._queue.append((stale, 5))
    [closed] = ledger.take_closed_days()
    assert closed.day == day and closed.total_nanos == 10
    today = ledger.snapshot()
    assert today.day > day and today.total_nanos == 5
    assert today.by_budget == {"all": 5, "a_only": 5}
    assert [n for _, n in today.by_attributes] == [5]
    assert [n for _, n in ledger.export_points()] == [15]  # the lifetime sum has both
