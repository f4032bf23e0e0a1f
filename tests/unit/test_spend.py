"""The per-process exact ledger, without a store: exact sums, the per-day bound on the
breakdown (afresh each day), lifetime export sums, validation before any change."""

from __future__ import annotations

import math
import threading
from datetime import datetime, timezone
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from otel_budget.budgets import Budget
from otel_budget.ledger import OVERFLOW_ATTRIBUTES, check_attributes
from otel_budget.money import to_nanos
from otel_budget.spend import SpendLedger
from tests.support.helpers import FakeClock

UTC = ZoneInfo("UTC")


def make(clock: FakeClock, limit: int = 3, budgets: list[Budget] | None = None) -> SpendLedger:
    return SpendLedger(budgets or [Budget("all", 100.0)], tz=UTC, max_attribute_sets=limit,
                       clock=clock)


def test_sums_are_exact_integers(clock: FakeClock) -> None:
    ledger = make(clock)
    for _ in range(400_000):
        ledger.add(to_nanos(0.001), None)
    snap = ledger.snapshot()
    assert snap.total_nanos == 400 * 10**9 and snap.total_usd == 400.0
    assert snap.by_budget == {"all": 400 * 10**9}


def test_breakdown_is_bounded_per_day_and_starts_afresh(clock: FakeClock) -> None:
    ledger = make(clock, limit=3)
    for i in range(10):
        ledger.add(10**9, {"agent": f"a{i}"})
    snap = ledger.snapshot()
    assert snap.total_nanos == 10 * 10**9, "totals exact whatever the breakdown holds"
    named = [attrs for attrs, _ in snap.by_attributes if attrs != OVERFLOW_ATTRIBUTES]
    assert len(named) == 3
    assert dict((tuple(a.items()), n) for a, n in snap.by_attributes)[
        tuple(OVERFLOW_ATTRIBUTES.items())] == 7 * 10**9
    clock.set(datetime(2026, 11, 26, 0, 0, 1, tzinfo=timezone.utc))
    ledger.add(10**9, {"agent": "new-on-day-2"})
    [closed] = ledger.take_closed_days()
    assert closed.day.isoformat() == "2026-11-25" and closed.total_nanos == 10 * 10**9
    snap = ledger.snapshot()
    assert snap.day.isoformat() == "2026-11-26"
    assert [attrs for attrs, _ in snap.by_attributes] == [{"agent": "new-on-day-2"}]
    # The exported counter is cumulative for the process's life (bounded the same way).
    exported = dict((tuple(sorted(a.items())), n) for a, n in ledger.export_points())
    assert sum(exported.values()) == 11 * 10**9
    assert exported[(("otel.metric.overflow", True),)] == 8 * 10**9


def test_per_budget_sums_follow_match(clock: FakeClock) -> None:
    ledger = make(clock, budgets=[Budget("all", 1), Budget("coder", 1, match={"agent": "coder"}),
                                  Budget("gpt", 1, match={"model": ["gpt-4o", "gpt-4.1"]})])
    ledger.add(1, {"agent": "coder", "model": "gpt-4o"})
    ledger.add(2, {"agent": "coder", "model": "o3"})
    ledger.add(4, {"agent": "planner", "model": "gpt-4.1"})
    ledger.add(8, None)
    assert ledger.snapshot().by_budget == {"all": 15, "coder": 3, "gpt": 5}


@pytest.mark.parametrize("bad", [
    {"k": {"nested": 1}}, {"k": b"bytes"}, {"k": math.nan}, {"k": math.inf}, {"k": None},
    {"k": [1, "mixed"]}, {"k": [[1]]}, {"k": "nul\x00"}, {"k": "lone \ud800"},
    {"nul\x00key": 1}, {"": 1}, {1: "int key"}, {"k": "x" * 5000}, {"k" * 300: 1},
    {f"k{i}": i for i in range(65)},
])
def test_poison_attributes_are_refused_before_any_change(
    clock: FakeClock, bad: dict[Any, Any]
) -> None:
    ledger = make(clock)
    ledger.add(5, {"agent": "ok"})
    with pytest.raises((TypeError, ValueError)):
        ledger.add(7, bad)
    with pytest.raises((TypeError, ValueError)):
        check_attributes(bad)
    snap = ledger.snapshot()
    assert snap.total_nanos == 5 and snap.by_attributes == (({"agent": "ok"}, 5),)
    assert ledger.export_points() == [({"agent": "ok"}, 5)]


def test_good_attributes_keep_their_types(clock: FakeClock) -> None:
    attrs = {"s": "x", "b": True, "i": 3, "f": 0.5, "seq": ["a", "b"], "ints": (1, 2)}
    assert check_attributes(attrs) == {**attrs, "seq": ("a", "b")}
    ledger = make(clock)
    ledger.add(1, attrs)
    ledger.add(1, dict(attrs))  # same set, same cell
    assert ledger.snapshot().by_attributes == ((check_attributes(attrs), 2),)


def test_fork_reset_hands_the_parents_day_back(clock: FakeClock) -> None:
    ledger = make(clock)
    ledger.add(10, {"agent": "parent"})
    inherited = ledger.reset_after_fork()
    assert inherited.total_nanos == 10
    assert ledger.snapshot().total_nanos == 0 and ledger.export_points() == []
    ledger.add(3, {"agent": "child"})
    assert ledger.snapshot().total_nanos == 3


def test_concurrent_adds_are_all_counted(clock: FakeClock) -> None:
    ledger = make(clock, limit=2000)

    def work(n: int) -> None:
        for i in range(5000):
            ledger.add(1, {"t": n, "i": i % 50})

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    snap = ledger.snapshot()
    assert snap.total_nanos == 40_000 and sum(n for _, n in snap.by_attributes) == 40_000


def test_current_day_is_the_open_day_until_its_boundary_then_none(clock: FakeClock) -> None:
    ledger = make(clock)
    day = ledger.day
    assert ledger.current_day() == day
    clock.set(datetime.combine(day, datetime.max.time(), tzinfo=timezone.utc))
    assert ledger.current_day() == day
    clock.advance(seconds=1)  # past midnight, not rolled yet: the caller must lock
    assert ledger.current_day() is None
    ledger.roll_if_due()
    assert ledger.current_day() == ledger.day and ledger.day > day
