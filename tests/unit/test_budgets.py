"""Budgets, plural: per agent or model, per day, ISO week or month, on real stores."""

from __future__ import annotations

import json
import multiprocessing
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from otel_budget import Budget, BudgetConfig, BudgetExceeded, BudgetMeter, ConfigError, read_day
from otel_budget.ledger import window_days_before, window_id
from otel_budget.stores.base import PatchStore
from otel_budget.stores.layout import NUDGE_TYPE
from otel_budget.stores.sqlite import SQLiteStore
from tests.support.helpers import FakeClock, StoreFactory, wait_for

AGENTS = [
    Budget("planner", 5.0, match={"agent": "planner"}, hard=True),
    Budget("coder", 4.5, match={"agent": "coder"}, hard=True),
]


def make(store: PatchStore, clock: FakeClock, budgets: list[Budget], *,
         notifiers: list[Any] | None = None, **config: Any) -> BudgetMeter:
    cfg = BudgetConfig(budgets=budgets, collect_interval_s=3600, instance_id="a", **config)
    return BudgetMeter(cfg, store=store, notifiers=notifiers or [], clock=clock)


def by_name(meter: BudgetMeter) -> dict[str, dict[str, Any]]:
    return {row["name"]: row for row in meter.budgets()}


# --- pure: windows and validation -------------------------------------------------

@pytest.mark.parametrize(("day", "period", "window", "before"), [
    (date(2026, 11, 25), "day", "2026-11-25", 0),
    (date(2026, 11, 25), "week", "2026-W48", 2),       # a Wednesday
    (date(2026, 11, 23), "week", "2026-W48", 0),       # Monday starts the ISO week
    (date(2026, 11, 22), "week", "2026-W47", 6),       # Sunday ends the previous one
    (date(2027, 1, 1), "week", "2026-W53", 4),         # ISO year differs from the calendar
    (date(2026, 11, 25), "month", "2026-11", 24),
    (date(2026, 12, 1), "month", "2026-12", 0),
])
def test_window_ids_and_days(day: date, period: str, window: str, before: int) -> None:
    assert window_id(day, period) == window
    days = window_days_before(day, period)
    assert len(days) == before and all(window_id(d, period) == window for d in days)


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"name": "", "cap_usd": 1}, "name"),
    ({"name": "a b", "cap_usd": 1}, "name"),
    ({"name": "x", "cap_usd": 0}, "cap_usd"),
    ({"name": "x", "cap_usd": float("nan")}, "cap_usd"),
    ({"name": "x", "cap_usd": 1, "period": "year"}, "period"),
    ({"name": "x", "cap_usd": 1, "match": {}}, "match"),
    ({"name": "x", "cap_usd": 1, "match": {"agent": {"nested": 1}}}, "match"),
    ({"name": "x", "cap_usd": 1, "match": ["agent"]}, "match"),
    ({"name": "x", "cap_usd": 1, "alert_ratios": (1.5,)}, "alert_ratios"),
    ({"name": "x", "cap_usd": 1, "hard": "yes"}, "hard"),
    ({"name": "x", "cap_usd": 1, "enforce": "fleet"}, "enforce"),  # fleet needs hard
])
def test_bad_budgets_name_the_budget_and_the_field(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        Budget(**kwargs)
    assert field in str(info.value) and repr(kwargs["name"])[:5] in str(info.value)


def test_a_hard_budget_is_enforced_across_the_fleet_unless_asked_otherwise(
        tmp_path: Path) -> None:
    assert Budget("x", 1.0, hard=True).enforce == "fleet"
    assert Budget("x", 1.0).enforce == "process"  # a soft budget only alerts
    assert Budget("x", 1.0, hard=True, enforce="process").enforce == "process"
    assert Budget("x", 1.0, hard=True, enforce=None).describe()["enforce"] == "fleet"
    [daily] = BudgetConfig(daily_cap_usd=3.0).all_budgets
    assert daily.hard and daily.enforce == "fleet"
    path = tmp_path / "budgets.toml"
    path.write_text('[[budget]]\nname = "a"\ncap_usd = 1\nhard = true\n\n'
                    '[[budget]]\nname = "b"\ncap_usd = 1\nhard = true\nenforce = "process"\n\n'
                    '[[budget]]\nname = "c"\ncap_usd = 1\n')
    a, b, c = BudgetConfig.from_env({"OTEL_BUDGET_BUDGETS_FILE": str(path)}).all_budgets
    assert (a.enforce, b.enforce, c.enforce) == ("fleet", "process", "process")


def test_budget_names_are_unique_and_one_must_exist() -> None:
    with pytest.raises(ConfigError, match=r"'daily'.*unique"):
        BudgetConfig(daily_cap_usd=5, budgets=[Budget("daily", 3)])
    with pytest.raises(ConfigError, match="unique"):
        BudgetConfig(budgets=[Budget("x", 3), Budget("x", 4)])
    config = BudgetConfig(budgets=[Budget("x", 3)])
    assert config.daily_cap_usd is None and [b.name for b in config.all_budgets] == ["x"]


def test_match_semantics() -> None:
    budget = Budget("b", 1, match={"agent": ["a", "b"], "team": "t"})
    assert budget.matches({"agent": "a", "team": "t", "other": 1})
    assert not budget.matches({"agent": "a"})
    assert not budget.matches({"agent": "c", "team": "t"})
    assert not budget.matches({"agent": ["a"], "team": "t"})  # a list never equals a scalar
    assert not budget.covers(None) and Budget("all", 1).covers(None)
    with pytest.raises(AttributeError):
        budget.cap_usd = 2  # type: ignore[misc]  # frozen


def test_match_values_may_be_shell_patterns() -> None:
    opus = Budget("opus", 1, match={"gen_ai.request.model": "claude-opus-4*"})
    for model in ("claude-opus-4", "claude-opus-4-1", "claude-opus-4-1-20250805"):
        assert opus.matches({"gen_ai.request.model": model}), model
    for model in ("claude-opus-3", "claude-sonnet-4", "x-claude-opus-4", "Claude-Opus-4"):
        assert not opus.matches({"gen_ai.request.model": model}), model
    assert not opus.matches({"gen_ai.request.model": 4})  # a number never matches text
    assert not opus.matches({"gen_ai.request.model": ["claude-opus-4"]})
    mixed = Budget("m", 1, match={"agent": ["coder", "review-?", "lit[e]ral"],
                                  "team": "a"})
    assert mixed.matches({"agent": "coder", "team": "a"})  # exact value
    assert mixed.matches({"agent": "review-2", "team": "a"})
    assert not mixed.matches({"agent": "review-12", "team": "a"})
    assert mixed.matches({"agent": "lit[e]ral", "team": "a"})  # the value itself, too
    assert mixed.matches({"agent": "literal", "team": "a"})  # and as a pattern
    assert not mixed.matches({"agent": "review-2", "team": "b"})  # every key must match
    # Shown as given; equal budgets stay equal.
    assert opus.match == {"gen_ai.request.model": "claude-opus-4*"}
    assert opus == Budget("opus", 1, match={"gen_ai.request.model": "claude-opus-4*"})


def test_a_match_key_no_call_carries_is_reported_after_a_whole_period(
        caplog: pytest.LogCaptureFixture) -> None:
    import logging

    from otel_budget.health import MatchKeyWatch

    now = [100.0]
    typo = Budget("coder", 5, match={"agents": "coder"})
    good = Budget("team", 5, match={"team": "a"})
    watch = MatchKeyWatch([typo, good, Budget("all", 5)], 60.0, clock=lambda: now[0])
    calls = [{"agent": "coder", "team": "a"}, {"agent": "other"}]
    with caplog.at_level(logging.WARNING, logger="otel_budget"):
        watch.observe([])  # no call yet: nothing to judge
        watch.observe(calls)  # calls recorded: the period starts
        now[0] += 59.0
        watch.observe(calls)
        assert watch.unmatched() == [] and not caplog.records
        now[0] += 1.0  # a whole period without the key
        watch.observe(calls)
        watch.observe(calls)
        now[0] += 600.0
        watch.observe(calls)
    assert watch.unmatched() == [{"budget": "coder", "key": "agents"}]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "'coder'" in warnings[0] and "'agents'" in warnings[0]
    watch.observe([*calls, {"agents": "coder"}])  # the key shows up: no longer reported
    assert watch.unmatched() == []


def test_health_names_a_budget_whose_match_key_no_call_carries(
        caplog: pytest.LogCaptureFixture) -> None:
    import logging

    from otel_budget.stores.memory import MemoryStore
    from tests.support.helpers import wait_for

    config = BudgetConfig(instance_id="a", collect_interval_s=0.05, budgets=[
        Budget("coder", 5, match={"agents": "coder"}), Budget("all", 50)])
    with caplog.at_level(logging.WARNING, logger="otel_budget"), \
            BudgetMeter(config, store=MemoryStore()) as meter:
        meter.record(0.5, {"agent": "coder"})
        assert wait_for(lambda: meter.health()["unmatched_match_keys"], timeout=10)
        assert meter.health()["unmatched_match_keys"] == [{"budget": "coder", "key": "agents"}]
        for _ in range(3):
            meter.collect()
    warnings = [r.getMessage() for r in caplog.records
                if r.levelno == logging.WARNING and "'agents'" in r.getMessage()]
    assert len(warnings) == 1 and "'coder'" in warnings[0]


def test_budgets_from_a_toml_file(tmp_path: Path) -> None:
    path = tmp_path / "budgets.toml"
    path.write_text(
        '[[budget]]\nname = "coder"\ncap_usd = 4.5\nmatch = { agent = "coder" }\nhard = true\n\n'
        '[[budget]]\nname = "team-month"\ncap_usd = 300\nperiod = "month"\n'
        'match = { team = ["a", "b"] }\nalert_ratios = [0.5, 0.9]\n'
    )
    config = BudgetConfig.from_env({"OTEL_BUDGET_BUDGETS_FILE": str(path)})
    coder, month = config.all_budgets
    assert coder == Budget("coder", 4.5, match={"agent": "coder"}, hard=True)
    assert month.period == "month" and month.alert_ratios == (0.5, 0.9)
    assert month.match == {"team": ["a", "b"]}
    path.write_text('[[budget]]\nname = "x"\ncap_usd = -1\n')
    with pytest.raises(ConfigError, match=r"OTEL_BUDGET_BUDGETS_FILE.*'x'.*cap_usd"):
        BudgetConfig.from_env({"OTEL_BUDGET_BUDGETS_FILE": str(path)})
    path.write_text('[[budget]]\nname = "x"\ncap_usd = 1\ncolour = "red"\n')
    with pytest.raises(ConfigError, match="colour: unknown field"):
        BudgetConfig.from_env({"OTEL_BUDGET_BUDGETS_FILE": str(path)})


# --- the meter ------------------------------------------------------------------------

def test_two_agents_with_separate_caps_never_block_each_other(store: PatchStore,
                                                              clock: FakeClock) -> None:
    meter = make(store, clock, AGENTS, daily_cap_usd=20.0).start()
    meter.record(4.5, {"agent": "coder"})
    with pytest.raises(BudgetExceeded) as info:
        meter.guard(0.01, {"agent": "coder"})
    assert info.value.budget == "coder"
    meter.guard(4.9, {"agent": "planner"})  # the coder's spend is not the planner's
    with meter.reserve(5.0, {"agent": "planner"}) as r:
        r.settle(4.0)
    rows = by_name(meter)
    assert rows["coder"]["spend_usd"] == 4.5 and rows["planner"]["spend_usd"] == 4.0
    assert rows["daily"]["spend_usd"] == 8.5 and meter.daily_spend() == 8.5
    assert rows["planner"]["utilization"] == 0.8 and rows["coder"]["remaining_usd"] == 0.0
    assert set(rows["coder"]) >= {"name", "period", "window", "match", "cap_usd", "spend_usd",
                                  "remaining_usd", "utilization", "alerts_sent", "hard"}
    health = json.loads(json.dumps(meter.health()))
    assert [b["name"] for b in health["budgets"]] == ["daily", "planner", "coder"]
    meter.checkpoint()
    stored = read_day(store, "2026-11-25")
    assert stored["by_budget"] == {"coder": 4.5, "daily": 8.5, "planner": 4.0}
    meter.shutdown()


def test_hard_budget_on_one_model_refuses_while_another_passes(clock: FakeClock,
                                                               store: PatchStore) -> None:
    opus = Budget("opus", 1.0, match={"gen_ai.request.model": "claude-opus-4-1"}, hard=True)
    meter = make(store, clock, [opus, Budget("all", 100.0)]).start()
    meter.record(0.99, {"gen_ai.request.model": "claude-opus-4-1"})
    with pytest.raises(BudgetExceeded):
        meter.reserve(0.02, {"gen_ai.request.model": "claude-opus-4-1"})
    with meter.reserve(0.5, {"gen_ai.request.model": "claude-haiku-4-5"}) as r:
        r.settle(0.25)
    meter.guard(5.0)  # no attributes: only budgets matching every call, none hard here
    assert by_name(meter)["all"]["spend_usd"] == 1.24
    meter.shutdown()


def test_alerts_once_per_budget_window_and_ratio(store_factory: StoreFactory,
                                                 clock: FakeClock) -> None:
    delivered: list[dict[str, Any]] = []
    budgets = [*AGENTS, Budget("month", 10.0, period="month", alert_ratios=(0.5, 0.8))]
    meter = make(store_factory(), clock, budgets, notifiers=[delivered.append]).start()
    meter.record(4.0, {"agent": "planner"})  # planner 80%, month 40%
    meter.record(1.0, {"agent": "coder"})    # month 50%
    meter.collect()
    assert wait_for(lambda: len(delivered) == 2)
    got = {(n["budget"], n["window"], n["ratio"]) for n in delivered}
    assert got == {("planner", "2026-11-25", 0.8), ("month", "2026-11", 0.5)}
    nudge = next(n for n in delivered if n["budget"] == "month")
    assert nudge["period"] == "month" and nudge["match"] is None and nudge["spend_usd"] == 5.0
    # A claim's delivery is recorded by the first collection that finds the notifiers
    # took it: the same one when the delivery thread was quick, else this one.
    assert wait_for(lambda: not meter.health()["pending_nudges"])
    meter.collect()
    store = store_factory()
    assert store.get(NUDGE_TYPE, "budget_alert_month_2026-11_50") == \
        {**nudge, "delivered_at": "2026-11-25T12:00:00+00:00"}
    assert store.get(NUDGE_TYPE, "budget_alert_planner_2026-11-25_80") is not None
    meter.shutdown()
    again = make(store_factory(), clock, budgets, notifiers=[delivered.append]).start()
    again.record(0.1, {"agent": "planner"})
    again.collect()
    assert not wait_for(lambda: len(delivered) > 2, timeout=0.3)
    assert by_name(again)["month"]["alerts_sent"] == [0.5]
    again.shutdown()


def test_month_rollover_and_a_restart_on_day_two(store_factory: StoreFactory) -> None:
    clock = FakeClock(datetime(2026, 11, 30, 23, 0, tzinfo=timezone.utc))
    budgets = [Budget("month", 100.0, period="month"), Budget("week", 50.0, period="week")]
    first = make(store_factory(), clock, budgets).start()
    first.record(3.0)
    clock.set(datetime(2026, 12, 1, 0, 30, tzinfo=timezone.utc))  # a Tuesday
    first.record(2.0)
    first.collect()
    rows = by_name(first)
    assert rows["month"]["window"] == "2026-12" and rows["month"]["spend_usd"] == 2.0
    assert rows["week"]["window"] == "2026-W49" and rows["week"]["spend_usd"] == 5.0
    first.shutdown()
    clock.set(datetime(2026, 12, 2, 9, 0, tzinfo=timezone.utc))
    second = make(store_factory(), clock, budgets).start()
    second.record(1.0)
    rows = by_name(second)
    assert rows["month"]["spend_usd"] == 3.0, "day 1 of the month counts after a restart"
    assert rows["week"]["spend_usd"] == 6.0, "Monday the 30th is in the same ISO week"
    assert read_day(store_factory(), "2026-11-30")["total_usd"] == 3.0
    second.shutdown()


def test_week_rolls_over_sunday_to_monday_in_the_budgets_zone(store: PatchStore) -> None:
    # Sunday 2026-11-29 23:30 in Tokyo is 14:30 UTC; Monday starts at 15:00 UTC.
    clock = FakeClock(datetime(2026, 11, 29, 14, 30, tzinfo=timezone.utc))
    meter = make(store, clock, [Budget("week", 50.0, period="week")],
                 timezone="Asia/Tokyo").start()
    meter.record(7.0)
    assert by_name(meter)["week"]["window"] == "2026-W48"
    clock.set(datetime(2026, 11, 29, 15, 0, 1, tzinfo=timezone.utc))
    meter.record(1.0)
    row = by_name(meter)["week"]
    assert row["window"] == "2026-W49" and row["spend_usd"] == 1.0
    meter.checkpoint()
    assert read_day(store, "2026-11-29")["total_usd"] == 7.0
    assert read_day(store, "2026-11-30")["total_usd"] == 1.0
    meter.shutdown()


def test_dst_change_keeps_the_local_day(store: PatchStore) -> None:
    # Berlin leaves summer time on 2026-10-25 at 03:00 local (01:00 UTC): the day is
    # 25 hours long, and 23:30 local on the 25th is 22:30 UTC.
    clock = FakeClock(datetime(2026, 10, 25, 0, 30, tzinfo=timezone.utc))
    meter = make(store, clock, [Budget("day", 10.0)], timezone="Europe/Berlin").start()
    meter.record(1.0)
    clock.set(datetime(2026, 10, 25, 22, 30, tzinfo=timezone.utc))
    meter.record(2.0)
    assert by_name(meter)["day"]["window"] == "2026-10-25"
    assert by_name(meter)["day"]["spend_usd"] == 3.0
    clock.set(datetime(2026, 10, 25, 23, 0, 1, tzinfo=timezone.utc))
    meter.record(4.0)
    assert by_name(meter)["day"] == {**by_name(meter)["day"], "window": "2026-10-26",
                                     "spend_usd": 4.0}
    meter.shutdown()


def test_a_budget_added_mid_window_counts_earlier_days_from_the_breakdown(
        store_factory: StoreFactory) -> None:
    clock = FakeClock(datetime(2026, 11, 24, 12, 0, tzinfo=timezone.utc))
    before = make(store_factory(), clock, [Budget("all", 100.0)]).start()
    before.record(2.0, {"agent": "coder"})
    before.record(3.0, {"agent": "planner"})
    before.shutdown()
    clock.set(datetime(2026, 11, 25, 12, 0, tzinfo=timezone.utc))
    coder_week = Budget("coder-week", 10.0, period="week", match={"agent": "coder"})
    after = make(store_factory(), clock, [Budget("all", 100.0), coder_week]).start()
    after.record(1.0, {"agent": "coder"})
    assert by_name(after)["coder-week"]["spend_usd"] == 3.0
    after.shutdown()


def _claimer(path: str, barrier: Any, out: Any) -> None:
    clock = FakeClock(datetime(2026, 11, 25, 12, 0, tzinfo=timezone.utc))
    delivered: list[dict[str, Any]] = []
    cfg = BudgetConfig(budgets=[*AGENTS, Budget("month", 10.0, period="month")],
                       collect_interval_s=3600)
    meter = BudgetMeter(cfg, store=SQLiteStore(path), notifiers=[delivered.append], clock=clock)
    meter.start()
    barrier.wait()
    meter.record(4.5, {"agent": "planner"})
    meter.record(4.0, {"agent": "coder"})
    meter.collect()
    meter.shutdown(timeout=5)
    out.put([(n["budget"], n["window"], n["ratio"]) for n in delivered])


def test_exactly_once_per_budget_window_and_ratio_across_four_processes(tmp_path: Path) -> None:
    path = str(tmp_path / "fleet.db")
    SQLiteStore(path).close()
    ctx = multiprocessing.get_context("spawn")
    barrier, out = ctx.Barrier(4), ctx.Queue()
    procs = [ctx.Process(target=_claimer, args=(path, barrier, out)) for _ in range(4)]
    for proc in procs:
        proc.start()
    try:
        results = [out.get(timeout=60) for _ in procs]
    finally:
        for proc in procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()
    claims = [claim for result in results for claim in result]
    # Every process reached every threshold; each (budget, window, ratio) went out once.
    assert sorted(claims) == sorted({("planner", "2026-11-25", 0.8),
                                     ("coder", "2026-11-25", 0.8),
                                     ("month", "2026-11", 0.8)})
    with SQLiteStore(path) as store:
        assert read_day(store, "2026-11-25")["total_usd"] == 34.0
