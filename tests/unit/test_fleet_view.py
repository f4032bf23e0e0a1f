"""FleetView built from plain dicts: no database. The rules: a budget a writer's
entry lacks counts from its breakdown (never blind), a malformed row is left out and
named while what it last held is carried (quarantine, never zero), a new day starts
from what its windows carried over."""

from __future__ import annotations

from datetime import date
from typing import Any

import pytest

from otel_budget import Budget
from otel_budget.fleet import (
    SOURCE_LOCAL,
    SOURCE_NONE,
    SOURCE_STORE,
    FleetView,
    after_merge,
    from_load,
    rolled,
)
from otel_budget.fleet_cache import cache_path, load, save
from otel_budget.spool import store_locator
from otel_budget.stores.base import open_store
from otel_budget.stores.entries import DayTotals, summarize, writer_row_name

DAY = date(2026, 11, 25)
TODAY = DAY.isoformat()
DAILY = Budget("daily", 10.0)
TEAM = Budget("team", 5.0, match={"team": "a"})
WEEK = Budget("week", 50.0, period="week")
AT = "2026-11-25T10:00:00+00:00"


def entry(writer: str, items: list[tuple[dict[str, Any], float]], *,
          budgets: tuple[Budget, ...] | None, day: str = TODAY) -> dict[str, Any]:
    """A writer entry; `budgets` None: one from a writer whose configuration has none."""
    total = round(sum(usd for _, usd in items), 9)
    out: dict[str, Any] = {
        "date": day, "writer_id": writer, "instance_id": "host", "spend_usd": total,
        "seq": 1, "updated_at": AT,
        "by_attributes": [{"attributes": a, "spend_usd": usd} for a, usd in items],
    }
    if budgets is not None:
        out["by_budget"] = {b.name: round(sum(usd for a, usd in items if b.matches(a)), 9)
                            for b in budgets}
    return out


def totals_of(day: str, entries: list[dict[str, Any]], *,
              quarantined: tuple[str, ...] = ()) -> DayTotals:
    return summarize(day, entries, quarantined=quarantined)


def test_a_writer_without_a_budget_counts_for_it_from_its_breakdown_at_load() -> None:
    old = entry("old", [({"team": "a"}, 4.0), ({"team": "b"}, 3.0)], budgets=(DAILY,))
    new = entry("new", [({"team": "a"}, 1.0)], budgets=(DAILY, TEAM))
    view = from_load(FleetView(), day=DAY, budgets=(DAILY, TEAM),
                     totals={TODAY: totals_of(TODAY, [old, new])}, entries=[old, new],
                     legacy=None, writer_id="new", own=new, read_at=AT)
    assert view.others_budget("team") == 4.0, "the old writer's team spend, from its breakdown"
    assert view.others_budget("daily") == 7.0
    assert view.others_total() == 7.0
    assert view.source == SOURCE_STORE and view.quarantined == ()


def test_writers_with_different_budget_sets_agree_after_every_merge() -> None:
    """Two writers, one configured with `team` and one not: each one's view of every
    budget, plus its own spend, is the fleet's exact spend."""
    old = entry("old", [({"team": "a"}, 4.0), ({"team": "b"}, 3.0)], budgets=(DAILY,))
    new = entry("new", [({"team": "a"}, 1.0), ({"team": "b"}, 0.5)], budgets=(DAILY, TEAM))
    fleet_team = 5.0
    # The writer with `team` merges: the others (old) lack it, so entries are read.
    prev = FleetView(day=DAY, source=SOURCE_STORE)
    view_new = after_merge(prev, day=DAY, budgets=(DAILY, TEAM),
                           others=totals_of(TODAY, [old]), entries=[old, new],
                           writer_id="new", read_at=AT)
    assert view_new.others_budget("team") + 1.0 == fleet_team
    assert not view_new.estimated
    # The old writer (no `team` in its configuration) sees daily exactly.
    view_old = after_merge(prev, day=DAY, budgets=(DAILY,), others=totals_of(TODAY, [new]),
                           entries=None, writer_id="old", read_at=AT)
    assert view_old.others_budget("daily") + 7.0 == 8.5
    # Without the entries (a failed read), the last figure is kept, marked estimated.
    stale = after_merge(view_new, day=DAY, budgets=(DAILY, TEAM),
                        others=totals_of(TODAY, [old]), entries=None, writer_id="new",
                        read_at=AT)
    assert stale.estimated and stale.others_budget("team") == 4.0


def test_the_overflow_bucket_is_the_only_estimate() -> None:
    old = entry("old", [({"team": "a"}, 2.0), ({"otel.metric.overflow": True}, 9.0)],
                budgets=(DAILY,))
    view = after_merge(FleetView(day=DAY, source=SOURCE_STORE), day=DAY,
                       budgets=(DAILY, TEAM), others=totals_of(TODAY, [old]),
                       entries=[old], writer_id="me", read_at=AT)
    assert view.others_budget("team") == 2.0
    assert view.others_budget("daily") == 11.0


def test_a_quarantined_row_is_named_and_its_last_good_spend_is_carried() -> None:
    a = entry("a", [({}, 3.0)], budgets=(DAILY,))
    b = entry("b", [({}, 2.0)], budgets=(DAILY,))
    good = after_merge(FleetView(day=DAY, source=SOURCE_STORE), day=DAY, budgets=(DAILY,),
                       others=totals_of(TODAY, [a, b]), entries=None, writer_id="me",
                       read_at=AT)
    assert good.others_budget("daily") == 5.0
    # b's row turns malformed: the store leaves it out and names it.
    name = writer_row_name(TODAY, "b")
    a2 = entry("a", [({}, 3.5)], budgets=(DAILY,))
    bad = after_merge(good, day=DAY, budgets=(DAILY,),
                      others=totals_of(TODAY, [a2], quarantined=(name,)), entries=None,
                      writer_id="me", read_at=AT)
    assert bad.quarantined == (name,)
    # b's $2 is carried (less a's growth since the last read: a lower bound).
    assert bad.others_budget("daily") == pytest.approx(5.0)
    assert bad.others_budget("daily") >= 3.5 + 2.0 - 0.5
    # Still quarantined at the next merge: what was carried stays carried.
    later = after_merge(bad, day=DAY, budgets=(DAILY,),
                        others=totals_of(TODAY, [entry("a", [({}, 4.0)], budgets=(DAILY,))],
                                         quarantined=(name,)),
                        entries=None, writer_id="me", read_at=AT)
    assert later.others_budget("daily") == pytest.approx(4.0 + 1.5)
    # Repaired: it counts again from the store, nothing carried.
    b_fixed = entry("b", [({}, 2.5)], budgets=(DAILY,))
    fixed = after_merge(later, day=DAY, budgets=(DAILY,),
                        others=totals_of(TODAY, [entry("a", [({}, 4.0)], budgets=(DAILY,)),
                                                 b_fixed]),
                        entries=None, writer_id="me", read_at=AT)
    assert fixed.quarantined == () and fixed.others_budget("daily") == 6.5


def test_a_row_known_good_from_its_entry_carries_that_entry() -> None:
    old = entry("old", [({"team": "a"}, 4.0)], budgets=(DAILY,))
    view = after_merge(FleetView(day=DAY, source=SOURCE_STORE), day=DAY,
                       budgets=(DAILY, TEAM), others=totals_of(TODAY, [old]),
                       entries=[old], writer_id="me", read_at=AT)
    name = writer_row_name(TODAY, "old")
    assert name in view.writers
    bad = after_merge(view, day=DAY, budgets=(DAILY, TEAM),
                      others=totals_of(TODAY, [], quarantined=(name,)), entries=None,
                      writer_id="me", read_at=AT)
    assert bad.others_budget("team") == 4.0 and bad.others_budget("daily") == 4.0


def test_a_quarantined_summary_row_is_named_until_a_merge_no_longer_reports_it() -> None:
    """The summary row is today's too: a merge that no longer names it clears it
    (a load's names of other days stay until the next load)."""
    from otel_budget.stores.entries import summary_quarantine_name

    a = entry("a", [({}, 3.0)], budgets=(DAILY,))
    summary = summary_quarantine_name(TODAY)
    older = writer_row_name("2026-11-24", "x")
    start = FleetView(day=DAY, source=SOURCE_STORE, quarantined=(older,))
    bad = after_merge(start, day=DAY, budgets=(DAILY,),
                      others=totals_of(TODAY, [a], quarantined=(summary,)), entries=None,
                      writer_id="me", read_at=AT)
    assert bad.quarantined == tuple(sorted((older, summary)))
    assert bad.others_budget("daily") == 3.0, "nothing carried: the store counts for it"
    fixed = after_merge(bad, day=DAY, budgets=(DAILY,), others=totals_of(TODAY, [a]),
                        entries=None, writer_id="me", read_at=AT)
    assert fixed.quarantined == (older,)


def test_malformed_entries_read_for_a_breakdown_are_quarantined_not_fatal() -> None:
    good = entry("good", [({"team": "a"}, 1.0)], budgets=(DAILY,))
    broken = entry("broken", [({"team": "a"}, 1.0)], budgets=(DAILY,))
    broken["by_attributes"] = [{"attributes": {"team": "a"}, "spend_usd": "lots"}]
    view = from_load(FleetView(), day=DAY, budgets=(DAILY, TEAM),
                     totals={TODAY: totals_of(TODAY, [good, broken])},
                     entries=[good, broken, "not an entry"], legacy=None, writer_id="me",
                     own=None, read_at=AT)
    assert view.quarantined == (writer_row_name(TODAY, "broken"),)
    assert view.others_budget("team") == 1.0


def test_prior_days_of_a_week_count_every_writer_and_a_new_day_carries_them() -> None:
    monday = "2026-11-23"
    mine = entry("me", [({}, 2.0)], budgets=(DAILY, WEEK), day=monday)
    theirs = entry("them", [({}, 3.0)], budgets=(DAILY, WEEK), day=monday)
    tuesday = "2026-11-24"
    days = {monday: totals_of(monday, [mine, theirs]), tuesday: totals_of(tuesday, []),
            TODAY: totals_of(TODAY, [])}
    view = from_load(FleetView(), day=DAY, budgets=(DAILY, WEEK), totals=days, entries=[],
                     legacy=None, writer_id="me", own=None, read_at=AT)
    assert view.window_budget("week") == 5.0 and view.window_budget("daily") == 0.0
    nxt = rolled(view, date(2026, 11, 26), {"week": 7.0, "daily": 0.0})
    assert nxt.source == SOURCE_NONE and nxt.window_budget("week") == 7.0


def test_a_legacy_document_counts_by_budget() -> None:
    legacy = {"instances": {"x": {"spend_usd": 2.0, "seq": 1, "by_attributes": [
        {"attributes": {"team": "a"}, "spend_usd": 1.5},
        {"attributes": {"team": "b"}, "spend_usd": 0.5}]}}}
    view = from_load(FleetView(), day=DAY, budgets=(DAILY, TEAM),
                     totals={TODAY: totals_of(TODAY, [])}, entries=[], legacy=legacy,
                     writer_id="me", own=None, read_at=AT)
    assert view.others_budget("daily") == 2.0 and view.others_budget("team") == 1.5


def test_the_view_is_immutable() -> None:
    view = FleetView(day=DAY)
    with pytest.raises(AttributeError):
        view.day = None  # type: ignore[misc]
    with pytest.raises(TypeError):
        view.prior["daily"] = 1.0  # type: ignore[index]


def test_the_local_copy_round_trips_the_current_windows_only(tmp_path: Any) -> None:
    spool_root = tmp_path / "spool"
    spool_root.mkdir(mode=0o700)
    path = cache_path(spool_root, "sqlite:/x.db")
    save(path, day=DAY, total_usd=7.5, windows={"daily": (TODAY, 7.5), "week": ("2026-W47", 9.0)},
         read_at=AT)
    assert path.parent == spool_root and oct(path.stat().st_mode & 0o777) == "0o600"
    view = load(path, day=DAY, windows={"daily": TODAY, "week": "2026-W48"})
    assert view is not None and view.source == SOURCE_LOCAL and view.read_at == AT
    assert view.window_budget("daily") == 7.5
    assert view.window_budget("week") == 0.0, "an ended window is not carried"
    assert view.others_total() == 7.5
    assert load(path, day=date(2026, 11, 26), windows={"daily": "2026-11-26"}) is None
    path.write_text('{"version": 1, "budgets": {"daily": {"window": "2026-11-25", '
                    '"spend_usd": -5}}}')
    assert load(path, day=DAY, windows={"daily": TODAY}) is None, "a negative amount is ignored"


# --- Checkpointer, without a database (an in-process store) -----------------------------


class RefusingStore:
    """A named mock at the boundary: every write fails as an unreachable server does."""

    def merge_writer(self, entry: dict[str, Any]) -> Any:
        from otel_budget import StoreError
        raise StoreError("unreachable (RefusingStore)")

    retire_writer = merge_writer


def _snapshot(usd: float) -> Any:
    from otel_budget.spend import DaySnapshot

    nanos = round(usd * 1e9)
    return DaySnapshot(day=DAY, total_nanos=nanos, by_attributes=(({"agent": "x"}, nanos),),
                       by_budget={"daily": nanos})


def test_the_checkpointer_writes_seqs_and_reports_results(tmp_path: Any) -> None:
    from datetime import datetime, timezone

    from otel_budget.checkpoint import Checkpointer
    from otel_budget.stores.memory import MemoryStore

    store = MemoryStore()
    started = datetime(2026, 11, 25, 9, 0, tzinfo=timezone.utc)
    cp = Checkpointer(store, None, instance_id="host", timezone="UTC", started_at=started)
    assert cp.status()["checkpoint_age_s"] is None and cp.status()["seq"] == 0
    entry = cp.entry(_snapshot(1.5), cp.next_seq(), AT)
    assert entry["writer_id"] == cp.writer_id and entry["seq"] == 1
    assert entry["by_attributes"] == [{"attributes": {"agent": "x"}, "spend_usd": 1.5}]
    result = cp.write(entry)
    assert result is not None and result["applied"] is True
    status = cp.status()
    assert status["last_checkpoint"]["ok"] is True and status["checkpoint_age_s"] is not None
    final = cp.entry(_snapshot(2.0), cp.next_seq(), AT, final=True)
    assert cp.write(final) is not None
    row = store.get(WRITER_TYPE_NAME, writer_row_name(TODAY, cp.writer_id))
    assert row is not None and row["retired"] is True and row["spend_usd"] == 2.0
    old = cp.writer_id
    cp.new_writer(started)
    assert cp.writer_id != old and cp.status()["seq"] == 0


def test_the_checkpointer_spools_what_the_store_refuses_and_replays_it(tmp_path: Any) -> None:
    from datetime import datetime, timezone

    from otel_budget.checkpoint import Checkpointer
    from otel_budget.spool import Spool
    from otel_budget.stores.memory import MemoryStore

    store = MemoryStore()
    spool = Spool(str(tmp_path / "spool"), store=store)
    started = datetime(2026, 11, 25, 9, 0, tzinfo=timezone.utc)
    down = Checkpointer(RefusingStore(), spool, instance_id="host",  # type: ignore[arg-type]
                        timezone="UTC", started_at=started)
    entry = down.entry(_snapshot(3.0), down.next_seq(), AT)
    assert down.write(entry) is None
    status = down.status()
    assert status["checkpoint_failed"] is True and status["last_checkpoint"]["spooled"] is True
    assert down.store_up is False
    deferred = down.entry(_snapshot(4.0), down.next_seq(), AT)
    assert down.defer(deferred) is True
    assert spool.summary()["entries"] == 1, "the newer seq replaces the older"
    up = Checkpointer(store, spool, instance_id="host", timezone="UTC", started_at=started)
    replayed, own = up.replay_spool()
    assert replayed is True and own == []
    assert spool.summary()["entries"] == 0
    assert store.day_totals([TODAY])[TODAY]["total_usd"] == 4.0


WRITER_TYPE_NAME = "budget_writer"


def test_an_entry_read_without_its_breakdown_is_completed_from_the_same_seq_only() -> None:
    from otel_budget.fleet import fill_from_cache, lacks_budgets

    old = entry("old", [({"team": "a"}, 4.0)], budgets=(DAILY,))
    view = after_merge(FleetView(day=DAY, source=SOURCE_STORE), day=DAY,
                       budgets=(DAILY, TEAM), others=totals_of(TODAY, [old]),
                       entries=[old], writer_id="me", read_at=AT)
    light = {k: v for k, v in old.items() if k != "by_attributes"}
    assert lacks_budgets(light, (DAILY, TEAM)) and not lacks_budgets(light, (DAILY,))
    filled = fill_from_cache(light, view, (DAILY, TEAM))
    assert filled is not None and filled["by_budget"] == {"daily": 4.0, "team": 4.0}
    assert fill_from_cache({**light, "seq": 2}, view, (DAILY, TEAM)) is None, "a newer seq"


def test_the_local_copy_is_found_whatever_the_urls_spelling(tmp_path: Any,
                                                              monkeypatch: Any) -> None:
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path / "sub")
    spellings = [f"sqlite:///{tmp_path / 'x.db'}", "sqlite:///../x.db",
                 f"sqlite:///{tmp_path / 'sub' / '..' / 'x.db'}"]
    paths = set()
    for url in spellings:
        with open_store(url) as store:
            paths.add(cache_path(tmp_path, store_locator(store)))
    assert len(paths) == 1
    with open_store(f"sqlite:///{tmp_path / 'other.db'}") as store:
        assert cache_path(tmp_path, store_locator(store)) not in paths
