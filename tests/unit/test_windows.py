"""A budget's spend over its window (otel_budget.windows): the one computation the
report and the status page's store rows share. Plain dicts for the sum; a memory
store for the two callers, which must agree with each other and with the sum worked
by hand on a day where one writer's configuration left a budget out."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime, timezone
from typing import Any

import pytest

from otel_budget import Budget
from otel_budget.errors import StoreError
from otel_budget.report import load_report
from otel_budget.stores.entries import summarize
from otel_budget.stores.memory import MemoryStore
from otel_budget.web.status import StatusSource
from otel_budget.windows import NamedBudget, read_window_spend, spend_of_window

MONDAY = date(2026, 11, 23)
TODAY = date(2026, 11, 24)  # the Tuesday of ISO week 2026-W48
CODER = Budget("coder", 20.0, period="week", match={"agent": "coder"})
DAILY = Budget("daily", 10.0)
AT = "2026-11-24T10:00:00+00:00"


def entry(day: date, writer: str, items: list[tuple[dict[str, Any], float]], *,
          budgets: Sequence[Budget]) -> dict[str, Any]:
    """A writer entry with a figure for each of `budgets` only (its configuration's)."""
    return {
        "date": day.isoformat(), "writer_id": writer, "instance_id": "host", "seq": 1,
        "spend_usd": round(sum(usd for _, usd in items), 9), "updated_at": AT,
        "by_attributes": [{"attributes": a, "spend_usd": usd} for a, usd in items],
        "by_budget": {b.name: round(sum(usd for a, usd in items if b.matches(a)), 9)
                      for b in budgets},
    }


# Monday: both writers know both budgets. Today: "old" predates `coder`.
ROWS = [
    entry(MONDAY, "w1", [({"agent": "coder"}, 3.0), ({"agent": "chat"}, 1.0)],
          budgets=(CODER, DAILY)),
    entry(TODAY, "new", [({"agent": "coder"}, 1.5)], budgets=(CODER, DAILY)),
    entry(TODAY, "old", [({"agent": "coder"}, 2.0), ({"agent": "chat"}, 0.25)],
          budgets=(DAILY,)),
]
# By hand: coder's week is 3.0 (Monday) + 1.5 ("new") + 2.0 ("old"'s breakdown).
WANT = {"coder": 6.5, "daily": 3.75}


class CountingStore(MemoryStore):
    """A memory store that counts which days' breakdowns were read."""

    def __init__(self) -> None:
        super().__init__()
        self.entry_reads: list[list[str]] = []

    def writer_entries(self, days: Sequence[str], *, breakdown: bool = True
                       ) -> list[dict[str, Any]]:
        self.entry_reads.append(sorted(days))
        return super().writer_entries(days, breakdown=breakdown)


@pytest.fixture
def store() -> Any:
    s = CountingStore()
    for row in ROWS:
        s.merge_writer(row)
    yield s
    s.close()


def test_the_report_and_the_status_page_agree_where_a_writer_left_a_budget_out(
        store: CountingStore) -> None:
    report = load_report(store, days=1, today=TODAY, budgets=[CODER, DAILY])
    by_report = {b.name: b.spend_usd for b in report.budgets}
    clock = datetime(2026, 11, 24, 12, tzinfo=timezone.utc)
    source = StatusSource(store, budgets=[CODER, DAILY], clock=lambda: clock)
    document = source.status()
    by_status = {row["name"]: row["spend_usd"] for row in document["budgets"]}
    assert by_report == by_status == WANT
    assert document["errors"] == [] and report.unreadable == ()


def test_breakdowns_are_read_only_for_the_days_a_writer_left_a_budget_out(
        store: CountingStore) -> None:
    spent = read_window_spend(store, TODAY, [CODER, DAILY])
    assert dict(spent.spend_usd) == WANT
    assert store.entry_reads == [[TODAY.isoformat()]]  # Monday comes from its totals


class SummingCountingStore(CountingStore):
    """Also counts the days asked of budget_day_spend (the kept shares of closed
    days), and leaves its inner reads uncounted: they stand for the store's own."""

    def __init__(self) -> None:
        super().__init__()
        self.share_reads: list[list[str]] = []

    def budget_day_spend(self, days: Sequence[str], budgets: Sequence[Budget], *,
                         closed_before: str) -> dict[str, dict[str, float]]:
        self.share_reads.append(sorted(days))
        reads = list(self.entry_reads)
        try:
            return super().budget_day_spend(days, budgets, closed_before=closed_before)
        finally:
            self.entry_reads[:] = reads


def test_a_closed_day_a_writer_left_a_budget_out_comes_from_the_stores_shares() -> None:
    """A budget added mid-window: the closed days' shares come from the store
    (budget_day_spend: kept there), never from reading their breakdowns here."""
    store = SummingCountingStore()
    for row in [*ROWS, entry(MONDAY, "old", [({"agent": "coder"}, 0.5)], budgets=(DAILY,))]:
        store.merge_writer(row)
    try:
        spent = read_window_spend(store, TODAY, [CODER, DAILY])
        assert dict(spent.spend_usd) == {"coder": WANT["coder"] + 0.5, "daily": 3.75}
        assert store.share_reads == [[MONDAY.isoformat()]]
        assert store.entry_reads == [[TODAY.isoformat()]]
        report = load_report(store, days=1, today=TODAY, budgets=[CODER, DAILY])
        assert {b.name: b.spend_usd for b in report.budgets} == dict(spent.spend_usd)
    finally:
        store.close()


def test_the_status_page_reads_today_once(store: CountingStore) -> None:
    clock = datetime(2026, 11, 24, 12, tzinfo=timezone.utc)
    StatusSource(store, budgets=[CODER, DAILY], clock=lambda: clock).status()
    assert store.entry_reads.count([TODAY.isoformat()]) == 1


def test_a_day_from_its_totals_or_its_entries_and_a_named_budget_from_its_figures() -> None:
    monday, today = MONDAY.isoformat(), TODAY.isoformat()
    totals = {monday: summarize(monday, ROWS[:1]), today: summarize(today, ROWS[1:])}
    spent = spend_of_window(TODAY, [CODER], totals, ROWS[1:])
    assert spent.spend_usd["coder"] == 6.5
    named = spend_of_window(TODAY, [NamedBudget("coder", "week")], totals, ROWS[1:])
    assert named.spend_usd == {"coder": 4.5}  # "old" reported no figure for it
    # Without today's entries the day where "old" left coder out counts nothing of
    # it: the totals would say 1.5, which is not the budget's spend.
    assert spend_of_window(TODAY, [CODER], totals).spend_usd == {"coder": 3.0}


def test_a_malformed_entry_is_left_out_and_named() -> None:
    today = TODAY.isoformat()
    bad = {**ROWS[2], "spend_usd": "lots", "writer_id": "bad"}
    totals = {today: summarize(today, ROWS[1:])}
    spent = spend_of_window(TODAY, [CODER], totals, [*ROWS[1:], bad])
    assert spent.spend_usd == {"coder": 3.5}
    assert spent.quarantined == (f"budget_{today}/bad",)


def test_a_failed_read_raises_or_is_reported(store: CountingStore) -> None:
    store.close()
    with pytest.raises(StoreError):
        read_window_spend(store, TODAY, [CODER])
    failures: list[str] = []
    spent = read_window_spend(store, TODAY, [CODER],
                              on_error=lambda what, exc: failures.append(what))
    assert failures == ["the budgets' windows"] and spent.spend_usd == {"coder": 0.0}
