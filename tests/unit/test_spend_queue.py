"""The ledger's hot path leaves a call for a set seen today pending on its cell, with
no lock, and drains in batches: reads count every call that returned, pending calls
stay few without a reader, a held lock never stops a call, and a call left on a
cell across midnight counts on the open day, never lost."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

from otel_budget.budgets import Budget
from otel_budget.spend import _DRAIN_AT, SpendLedger
from tests.support.helpers import FakeClock

UTC = ZoneInfo("UTC")


def make(clock: FakeClock) -> SpendLedger:
    return SpendLedger([Budget("all", 1e6), Budget("a_only", 1e6, match={"agent": "a"})],
                       tz=UTC, max_attribute_sets=100, clock=clock)


def test_every_returned_call_is_in_every_read(clock: FakeClock) -> None:
    ledger = make(clock)
    for calls in (1, 7, _DRAIN_AT - 1, _DRAIN_AT, 3 * _DRAIN_AT + 5):
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


def test_calls_appended_during_a_drain_wait_for_the_next(clock: FakeClock) -> None:
    ledger = make(clock)
    ledger.add(1, {"agent": "a"})
    cell = ledger._cells[frozenset({"agent": "a"}.items())]
    for _ in range(3):
        ledger.add(10, {"agent": "a"})
    assert cell.pending == [10, 10, 10] and cell.dirty

    class Racing(list[int]):
        """A pending list that gets one more call while the (first) drain sums it."""
        raced = False

        def __iter__(self) -> Any:
            for value in list.__iter__(self):
                if not self.raced:
                    self.raced = True
                    self.append(1000)
                yield value

    cell.pending = Racing(cell.pending)
    assert ledger.snapshot().total_nanos == 31  # the call appended meanwhile is not lost:
    assert cell.pending[:] == [1000]
    ledger.add(5, {"agent": "a"})  # the flag was cleared first, so the cell is listed
    assert ledger.snapshot().total_nanos == 1036


def test_pending_calls_stay_few_without_a_reader(clock: FakeClock) -> None:
    ledger = make(clock)
    ledger.add(1, {"agent": "a"})
    cell = ledger._cells[frozenset({"agent": "a"}.items())]
    longest = 0
    for _ in range(20_000):
        ledger.add(1, {"agent": "a"})
        longest = max(longest, len(cell.pending))
    assert longest <= _DRAIN_AT
    assert ledger.snapshot().total_nanos == 20_001


def test_a_held_lock_never_stops_a_call(clock: FakeClock) -> None:
    ledger = make(clock)
    ledger.add(1, {"agent": "a"})  # seen today: later calls take the queue
    done = threading.Event()

    def calls() -> None:
        for _ in range(20 * _DRAIN_AT):
            ledger.add(1, {"agent": "a"})
        done.set()

    with ledger._lock:  # a preempted holder, say
        worker = threading.Thread(target=calls)
        worker.start()
        finished = done.wait(30)
    worker.join()
    assert finished  # all 5,120 calls returned while the lock was held
    assert ledger.snapshot().total_nanos == 1 + 20 * _DRAIN_AT


def test_a_call_left_on_a_cell_across_midnight_counts_on_the_open_day(
    clock: FakeClock
) -> None:
    ledger = make(clock)
    day = ledger.day
    clock.set(datetime.combine(day, datetime.max.time(), tzinfo=timezone.utc)
              - timedelta(seconds=1))
    ledger.add(10, {"agent": "a"})
    # The interleaving to force: a call read yesterday's cell before midnight, the
    # roll drained it, then the call appended and listed the cell.
    stale = ledger._cells[frozenset({"agent": "a"}.items())]
    clock.advance(seconds=2)
    ledger.roll_if_due()
    stale.pending.append(5)
    stale.dirty = True
    ledger._dirty.append(stale)
    [closed] = ledger.take_closed_days()
    assert closed.day == day and closed.total_nanos == 10
    today = ledger.snapshot()
    assert today.day > day and today.total_nanos == 5
    assert today.by_budget == {"all": 5, "a_only": 5}
    assert [n for _, n in today.by_attributes] == [5]
    assert [n for _, n in ledger.export_points()] == [15]  # the lifetime sum has both
