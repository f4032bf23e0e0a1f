"""The pieces the tracker coordinates, each on its own: reading the fleet (fleet_read),
alert claims delivered at least once (claims), and rounds taking turns (rounds).
Stores here are the in-memory one: no database."""

from __future__ import annotations

import threading
from dataclasses import replace
from datetime import date, datetime, timedelta, timezone
from typing import Any

import pytest

from otel_budget import Budget
from otel_budget.claims import AlertClaims, read_claims
from otel_budget.fleet import SOURCE_STORE, FleetView, Spend
from otel_budget.fleet_read import (
    days_to_read,
    entries_of,
    prior_after_roll,
    read_day,
    restore_ok,
    split_light,
    view_info,
    view_of,
)
from otel_budget.live import budget_row, inherited_spend, live_spend
from otel_budget.rounds import RoundGate, within
from otel_budget.spend import DaySnapshot
from otel_budget.stores.entries import WRITER_TYPE, writer_row_name
from otel_budget.stores.layout import LEGACY_TYPE as BUDGET_TYPE
from otel_budget.stores.layout import NUDGE_TYPE
from otel_budget.stores.layout import nudge_row_name as budget_nudge_name
from otel_budget.stores.legacy import document_name as budget_name
from otel_budget.stores.memory import MemoryStore

DAY = date(2026, 11, 25)  # a Wednesday
TODAY = DAY.isoformat()
DAILY = Budget("daily", 10.0)
TEAM = Budget("team", 5.0, match={"team": "a"})
WEEK = Budget("week", 50.0, period="week")
AT = "2026-11-25T10:00:00+00:00"
NOW = datetime(2026, 11, 25, 10, 0, tzinfo=timezone.utc)


def entry(writer: str, usd: float, *, by_budget: dict[str, float] | None, seq: int = 1,
          day: str = TODAY, team: str = "a") -> dict[str, Any]:
    out: dict[str, Any] = {
        "date": day, "writer_id": writer, "instance_id": "host", "spend_usd": usd,
        "seq": seq, "updated_at": AT,
        "by_attributes": [{"attributes": {"team": team}, "spend_usd": usd}],
    }
    if by_budget is not None:
        out["by_budget"] = by_budget
    return out


# --- fleet_read -----------------------------------------------------------------------


def test_days_to_read_cover_each_budgets_window_up_to_today() -> None:
    assert days_to_read(DAY, [DAILY]) == [TODAY]
    assert days_to_read(DAY, [DAILY, WEEK]) == ["2026-11-23", "2026-11-24", TODAY]


def test_read_day_then_view_of_counts_the_others_and_leaves_this_writer_out() -> None:
    with MemoryStore() as store:
        store.merge_writer(entry("w1", 2.0, by_budget={"daily": 2.0, "week": 2.0},
                                 day="2026-11-24"))
        store.merge_writer(entry("w2", 3.0, by_budget={"daily": 3.0, "week": 3.0}))
        mine = entry("me", 1.0, by_budget={"daily": 1.0, "week": 1.0})
        store.merge_writer(mine)
        read = read_day(store, DAY, [DAILY, WEEK])
    assert list(read.names) == ["2026-11-23", "2026-11-24", TODAY]
    assert read.legacy is None and list(read.entries) == []
    view = view_of(FleetView(), read, budgets=[DAILY, WEEK], writer_id="me", own=mine,
                   read_at=AT)
    assert view.others_total() == 3.0
    assert view.window_budget("week") == 5.0  # Tuesday's 2 + today's others' 3
    assert restore_ok(AT, read) == {"ok": True, "at": AT, "error": None, "days_read": 3,
                                    "legacy_document": False}


def test_a_malformed_legacy_document_is_quarantined_not_fatal() -> None:
    with MemoryStore() as store:
        store.put_raw(BUDGET_TYPE, budget_name(DAY), {"date": TODAY, "instances": "bad"})
        read = read_day(store, DAY, [DAILY])
    assert read.legacy is None
    assert list(read.legacy_quarantined) == [budget_name(DAY)]
    view = view_of(FleetView(), read, budgets=[DAILY], writer_id="me", own=None, read_at=AT)
    assert budget_name(DAY) in view.quarantined


def test_split_light_completes_from_the_same_seq_and_names_the_rest() -> None:
    w1 = replace(Spend.of(4.0, {"daily": 4.0, "team": 1.5}), seq=3)
    cached = FleetView(day=DAY, writers={writer_row_name(TODAY, "w1"): w1},
                       source=SOURCE_STORE)
    light = [
        entry("me", 9.0, by_budget=None),  # this writer: left out
        entry("w1", 4.0, by_budget={"daily": 4.0}, seq=3),  # same seq: from the view
        entry("w2", 2.0, by_budget={"daily": 2.0}, seq=1),  # not cached: read whole
        entry("w3", 1.0, by_budget={"daily": 1.0, "team": 1.0}),  # complete
        "not an entry",
    ]
    out, missing = split_light(light, cached, [DAILY, TEAM], "me")
    assert missing == [writer_row_name(TODAY, "w2")]
    by_writer = {e["writer_id"]: e for e in out}
    assert set(by_writer) == {"w1", "w3"}
    assert by_writer["w1"]["by_budget"] == {"daily": 4.0, "team": 1.5}


def test_entries_of_reads_whole_what_it_cannot_complete() -> None:
    with MemoryStore() as store:
        store.merge_writer(entry("w2", 2.0, by_budget={"daily": 2.0}))
        store.merge_writer(entry("w3", 1.0, by_budget={"daily": 1.0, "team": 1.0}))
        out = entries_of(store, TODAY, FleetView(), [DAILY, TEAM], "me")
        whole = store.get(WRITER_TYPE, writer_row_name(TODAY, "w2"))
    assert {e["writer_id"] for e in out} == {"w2", "w3"}
    w2 = next(e for e in out if e["writer_id"] == "w2")
    assert w2 == whole and w2["by_attributes"]  # the breakdown, to compute "team" from


def test_prior_after_roll_carries_a_window_that_goes_on_and_zeroes_a_new_one() -> None:
    view = FleetView(day=DAY, others=Spend.of(3.0, {"daily": 3.0, "week": 3.0}),
                     prior={"week": 5.0}, source=SOURCE_STORE)
    own = DaySnapshot(day=DAY, total_nanos=2_000_000_000, by_attributes=(),
                      by_budget={"daily": 2_000_000_000, "week": 2_000_000_000})
    kept = prior_after_roll(view, [DAILY, WEEK], old_day=DAY, new_day=DAY + timedelta(days=1),
                            inherited=None, last_own=own)
    assert kept == {"daily": 0.0, "week": pytest.approx(10.0)}
    sunday = date(2026, 11, 29)
    new_week = prior_after_roll(view, [WEEK], old_day=sunday,
                                new_day=sunday + timedelta(days=1), inherited=own,
                                last_own=None)
    assert new_week == {"week": 0.0}


def test_view_info_says_where_the_numbers_came_from_and_their_age() -> None:
    view = FleetView(day=DAY, read_at=AT, source=SOURCE_STORE,
                     carried={"x": Spend.of(1.25, {})})
    info = view_info(view, NOW + timedelta(seconds=90))
    assert info == {"source": SOURCE_STORE, "read_at": AT, "age_s": 90.0,
                    "estimated": False, "carried_usd": 1.25}
    assert view_info(FleetView(read_at="not a time"), NOW)["age_s"] is None
    assert view_info(FleetView(read_at="2026-11-25T09:00:00"), NOW)["age_s"] is None


# --- claims -----------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> datetime:
        return self.now


def make_claims(store: MemoryStore, writer: str, clock: Clock,
                sent: list[dict[str, Any]]) -> AlertClaims:
    return AlertClaims(store, sibling="agent", instance_id="host", writer_id=lambda: writer,
                       now=clock, submit_nudge=sent.append, delivery_timeout_s=60.0,
                       pending_nudges=lambda: [])


def test_one_writer_wins_a_claim_and_records_its_delivery() -> None:
    clock = Clock()
    sent_a: list[dict[str, Any]] = []
    sent_b: list[dict[str, Any]] = []
    name = budget_nudge_name("daily", TODAY, 0.8)
    with MemoryStore() as store:
        a, b = (make_claims(store, "a", clock, sent_a), make_claims(store, "b", clock, sent_b))
        assert a.claim_due(DAY, [(DAILY, TODAY, 8.5)]) is None
        assert b.claim_due(DAY, [(DAILY, TODAY, 8.5)]) is None
        row = store.get(NUDGE_TYPE, name)
    assert [n["id"] for n in sent_a] == [name] and sent_b == []
    assert a.claimed("daily", TODAY) == [0.8] == b.claimed("daily", TODAY)
    assert row is not None and row["claimed_by"] == "a" and row["delivered_at"] is not None


def test_an_undelivered_claim_is_taken_over_after_the_timeout_by_one_writer() -> None:
    clock = Clock()
    sent: list[dict[str, Any]] = []
    name = budget_nudge_name("daily", TODAY, 0.8)
    with MemoryStore() as store:
        store.insert_if_absent(NUDGE_TYPE, name, {
            "id": name, "claimed_by": "dead", "claimed_at": AT, "delivered_at": None})
        claimed, undelivered = read_claims(store, DAY, [DAILY])
        assert claimed == [("daily", TODAY, 0.8)] and undelivered == [name]
        b, c = make_claims(store, "b", clock, sent), make_claims(store, "c", clock, sent)
        for claims in (b, c):
            claims.apply_read(claimed, undelivered)
        b.watch_round()
        assert sent == []  # not yet past the timeout
        clock.now = NOW + timedelta(seconds=61)
        b.watch_round()
        c.watch_round()
        b.watch_round()  # its notifiers took it: the delivery is recorded
        row = store.get(NUDGE_TYPE, name)
    assert [n["claimed_by"] for n in sent] == ["b"]
    assert row is not None and row["takeovers"] == 1 and row["delivered_at"] is not None


def test_a_refused_claim_is_named_and_reported_as_not_an_outage() -> None:
    class Refusing(MemoryStore):
        def insert_if_absent(self, patch_type: str, name: str, content: dict[str, Any]) -> bool:
            from otel_budget.errors import CheckpointError

            raise CheckpointError("refused")

    sent: list[dict[str, Any]] = []
    with Refusing() as store:
        claims = make_claims(store, "a", Clock(), sent)
        assert claims.claim_due(DAY, [(DAILY, TODAY, 9.0)]) is True
    assert sent == [] and claims.claimed("daily", TODAY) == []
    assert claims.error is not None and "refused" in claims.error


# --- rounds -----------------------------------------------------------------------------


def test_a_round_asked_for_while_one_runs_is_run_again_by_its_holder() -> None:
    inside, release = threading.Event(), threading.Event()
    runs: list[bool] = []
    hooks: list[int] = []

    def run_round(checkpoint: bool) -> None:
        runs.append(checkpoint)
        if len(runs) == 1:
            inside.set()
            release.wait(10)

    gate = RoundGate(run_round)
    gate.add_hook(lambda: hooks.append(len(runs)))
    holder = threading.Thread(target=gate.run, kwargs={"checkpoint": False, "wait": True})
    holder.start()
    assert inside.wait(10)
    assert gate.run(checkpoint=True, wait=False) is False  # did not wait
    assert gate.run(checkpoint=False, wait=True, timeout_s=0.0) is False
    release.set()
    holder.join(10)
    assert runs == [False, True]  # the second asked for a checkpoint: it got one
    assert hooks == [1, 2]


def test_a_failing_hook_does_not_stop_the_round_or_the_next_hook() -> None:
    calls: list[str] = []
    gate = RoundGate(lambda checkpoint: calls.append("round"))

    def bad() -> None:
        raise RuntimeError("hook")

    gate.add_hook(bad)
    gate.add_hook(lambda: calls.append("hook"))
    assert gate.run(checkpoint=False, wait=True)
    assert calls == ["round", "hook"]


def test_within_gives_up_at_its_timeout_and_runs_the_fallback() -> None:
    release = threading.Event()
    fallbacks: list[int] = []
    assert within(lambda: True, 5.0, lambda: fallbacks.append(1)) is True
    assert within(lambda: release.wait(10), 0.05, lambda: fallbacks.append(2)) is False
    release.set()
    assert fallbacks == [2]


# --- live --------------------------------------------------------------------------------


def test_live_spend_adds_the_others_this_writer_and_what_it_inherited() -> None:
    view = FleetView(day=DAY, others=Spend.of(3.0, {"daily": 3.0, "week": 3.0}),
                     prior={"week": 5.0}, source=SOURCE_STORE)
    inherited = DaySnapshot(day=DAY, total_nanos=500_000_000, by_attributes=(),
                            by_budget={"daily": 500_000_000, "week": 500_000_000})
    total, spends = live_spend(view, [DAILY, WEEK], own_total_nanos=1_250_000_000,
                               own_budget_nanos=[1_250_000_000, 1_250_000_000],
                               inherited=inherited)
    assert total == 4.75
    assert spends == [4.75, 9.75]  # the week also counts its days before today
    alone, _ = live_spend(FleetView(), [DAILY], own_total_nanos=1, own_budget_nanos=[1],
                          inherited=None)
    assert alone == 0.000000001


def test_budget_row_compares_the_spend_with_the_cap() -> None:
    row = budget_row(TEAM, window=TODAY, spend_usd=6.0, alerts_sent=[0.8])
    assert row["remaining_usd"] == 0.0 and row["utilization"] == 1.2
    assert row["match"] == {"team": "a"} and row["alerts_sent"] == [0.8]
    assert (row["name"], row["period"], row["window"], row["cap_usd"]) == ("team", "day", TODAY,
                                                                          5.0)


def test_a_fork_of_a_fork_inherits_both_parents_spend_of_the_same_day_only() -> None:
    def snap(day: date, nanos: int) -> DaySnapshot:
        return DaySnapshot(day=day, total_nanos=nanos, by_attributes=(({"a": 1}, nanos),),
                           by_budget={"daily": nanos})

    both = inherited_spend(snap(DAY, 2), snap(DAY, 3))
    assert (both.total_nanos, both.by_budget, len(both.by_attributes)) == (5, {"daily": 5}, 2)
    assert inherited_spend(snap(DAY - timedelta(days=1), 2), snap(DAY, 3)) == snap(DAY, 3)
    assert inherited_spend(None, snap(DAY, 3)) == snap(DAY, 3)
