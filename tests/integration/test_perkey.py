"""Budgets per key (`Budget(per=...)`): validation, the key of a call, the writer
entry's bounded `by_key`, `meter.budget()`, alerts once per key, a rolling restart
that keeps a key's window, overflow past the key bound, and a per-customer hard
budget refusing one customer while another passes across 4 real processes
(SQLite and PostgreSQL)."""

from __future__ import annotations

import json
import subprocess
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from otel_budget import Budget, BudgetConfig, BudgetMeter
from otel_budget.budgets import load_budgets_file
from otel_budget.errors import BudgetExceeded, ConfigError
from otel_budget.leases import LEASE_TYPE, lease_row_name
from otel_budget.perkey import (
    KEY_FIELD,
    OVERFLOW_KEY,
    KeyBook,
    add_entry_keys,
    key_budget_name,
    key_json,
)
from otel_budget.stores.base import open_store
from otel_budget.stores.layout import NUDGE_TYPE
from otel_budget.stores.layout import nudge_row_name as budget_nudge_name
from otel_budget.stores.memory import MemoryStore
from tests.support.apps.procs import PYTHON, ROOT, child_env, ensure_stopped
from tests.support.helpers import FakeClock, StoreFactory, wait_for

# --- validation and keys ----------------------------------------------------------------


@pytest.mark.parametrize("per, message", [
    ("", "non-empty"),
    ([], "non-empty list"),
    (("customer", "customer"), "twice"),
    (("a\x00b",), "control character"),
    ((1,), "non-empty strings"),
    (tuple(f"a{i}" for i in range(9)), "at most 8"),
    ({"customer": 1}, "attribute name or a non-empty list"),
])
def test_per_is_validated(per: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        Budget("b", 1.0, per=per)
    assert "per" in str(info.value)


def test_a_hard_per_key_budget_is_fleet_enforced() -> None:
    with pytest.raises(ConfigError, match="enforced across the fleet"):
        Budget("b", 1.0, hard=True, enforce="process", per="customer")
    assert Budget("b", 1.0, hard=True, per="customer").enforce == "fleet"


def test_per_normalises_and_keys_calls() -> None:
    one = Budget("b", 1.0, per="customer")
    assert one.per == ("customer",)
    two = Budget("b", 1.0, per=["team", "customer"])  # type: ignore[arg-type]
    assert two.per == ("team", "customer")
    assert two.key_of({"customer": "c1", "team": "t", "x": 1}) == ("t", "c1")
    # a call without the attribute is not free: it is the key of None ("(unset)")
    assert one.key_of({"model": "m"}) == (None,)
    assert one.key_of(None) == (None,)
    assert Budget("b", 1.0).key_of({"customer": "c"}) is None
    assert two.describe()["per"] == ["team", "customer"]


def test_budgets_file_takes_per(tmp_path: Path) -> None:
    path = tmp_path / "budgets.toml"
    path.write_text('[[budget]]\nname = "per-customer"\ncap_usd = 5\nper = "customer"\n'
                    '[[budget]]\nname = "pair"\ncap_usd = 1\nper = ["team", "customer"]\n')
    budgets = load_budgets_file(str(path), "OTEL_BUDGET_BUDGETS_FILE")
    assert [b.per for b in budgets] == [("customer",), ("team", "customer")]
    path.write_text('[[budget]]\nname = "x"\ncap_usd = 5\nper = ""\n')
    with pytest.raises(ConfigError, match="per"):
        load_budgets_file(str(path), "OTEL_BUDGET_BUDGETS_FILE")


def test_config_bounds_keys() -> None:
    for bad in (0, -1, 1.5, True, "10"):
        with pytest.raises(ConfigError, match="max_keys_per_budget"):
            BudgetConfig(daily_cap_usd=1.0, max_keys_per_budget=bad)  # type: ignore[arg-type]


# --- the writer's book and entry ----------------------------------------------------------


def test_key_book_bounds_the_entry_and_folds_the_rest_into_overflow() -> None:
    from datetime import date

    budget = Budget("b", 1.0, per="customer", match={"team": "x"})
    book = KeyBook([budget], max_keys=2)
    day = date(2026, 12, 7)
    for customer, nanos in (("a", 10), ("b", 20), ("c", 30), ("a", 1), ("d", 4)):
        book.add(nanos * 10**9, {"team": "x", "customer": customer}, day)
    book.add(7 * 10**9, {"team": "y", "customer": "a"}, day)  # not the budget's call
    field = book.entry_field(day.isoformat())
    assert field == {"b": {key_json(("a",)): 11.0, key_json(("b",)): 20.0, OVERFLOW_KEY: 34.0}}
    # beyond the entry's bound a key is still known exactly in memory
    assert book.own_usd(budget, key_json(("c",)), day) == 30.0
    # a new day: the closed day's field waits for its final entry; today starts empty
    book.add(10**9, {"team": "x", "customer": "a"}, date(2026, 12, 8))
    assert book.entry_field("2026-12-07") == field
    assert book.entry_field("2026-12-08") == {"b": {key_json(("a",)): 1.0}}


def test_entry_keys_sum_and_malformed_fields_are_left_out() -> None:
    into: dict[str, dict[str, float]] = {}
    assert add_entry_keys(into, {KEY_FIELD: {"b": {"k": 1.5}, "other": {"k": 9}}}, ["b"])
    assert add_entry_keys(into, {KEY_FIELD: {"b": {"k": 0.5, "j": 2}}}, ["b"])
    assert not add_entry_keys(into, {KEY_FIELD: {"b": {"k": -1}}}, ["b"])
    assert not add_entry_keys(into, {KEY_FIELD: {"b": {"k": "1"}}}, ["b"])
    assert not add_entry_keys(into, {KEY_FIELD: ["b"]}, ["b"])
    assert into == {"b": {"k": 2.0, "j": 2.0}}


def test_no_per_key_budget_no_per_key_work() -> None:
    with BudgetMeter(BudgetConfig(budgets=(Budget("b", 1.0, hard=True),),
                                  collect_interval_s=3600.0), store=MemoryStore()) as meter:
        assert meter._perkey is None
        meter.record(0.1, {"customer": "a"})
        meter.checkpoint()
        entry = meter.store.writer_entries([meter.day.isoformat()])[0]
        assert KEY_FIELD not in entry


# --- through the meter ---------------------------------------------------------------------


def _config(budget: Budget, **kw: Any) -> BudgetConfig:
    return BudgetConfig(budgets=(budget,), collect_interval_s=kw.pop("collect_interval_s", 3600.0),
                        lease_ttl_s=kw.pop("lease_ttl_s", 5.0), **kw)


def _sqlite(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'perkey.db'}"


def test_meter_budget_shape_and_errors(tmp_path: Path) -> None:
    budget = Budget("per-customer", 2.0, per="customer", alert_ratios=(0.5,))
    with BudgetMeter(_config(budget, instance_id="a"), store=open_store(_sqlite(tmp_path))) as m:
        m.record(0.5, {"customer": "acme"})
        m.record(0.25, {"customer": "acme"})
        m.record(0.1, {"customer": "globex"})
        m.record(0.05)  # no customer: the "(unset)" key, not free
        state = m.budget("per-customer", {"customer": "acme"})
        for key in ("name", "window", "spend_usd", "cap_usd", "remaining_usd", "utilization"):
            assert key in state
        assert state["name"] == "per-customer" and state["key"] == {"customer": "acme"}
        assert state["spend_usd"] == 0.75 and state["cap_usd"] == 2.0
        assert state["remaining_usd"] == 1.25 and state["utilization"] == 0.375
        assert m.budget("per-customer", {"other": 1})["spend_usd"] == 0.05
        assert m.budget("per-customer", {"customer": "nobody"})["spend_usd"] == 0.0
        whole = m.budget("per-customer")
        assert whole["key_count"] == 3 and whole["total_spend_usd"] == 0.9
        assert [k["key"] for k in whole["top_keys"]] == [
            {"customer": "acme"}, {"customer": "globex"}, {"customer": None}]
        # the row's cap is each key's: its spend is the biggest key's, not the sum
        assert whole["spend_usd"] == 0.75
        assert next(r for r in m.budgets() if r["name"] == "per-customer") == whole
        health = m.health()["per_key"]
        assert health["keys_today"] == {"per-customer": 3}
        assert health["fleet_error"] is None and health["claim_error"] is None
        with pytest.raises(ConfigError, match="no budget named 'nope'"):
            m.budget("nope")
        with pytest.raises(TypeError):
            m.budget("per-customer", {"customer": object()})
        m.checkpoint()
        entry = m.store.writer_entries([m.day.isoformat()])[0]
        assert entry[KEY_FIELD] == {"per-customer": {
            key_json(("acme",)): 0.75, key_json(("globex",)): 0.1, key_json((None,)): 0.05}}


def test_hard_per_key_refuses_one_customer_while_another_passes(tmp_path: Path) -> None:
    budget = Budget("per-customer", 1.0, hard=True, per="customer")
    url = _sqlite(tmp_path)
    meters = [BudgetMeter(_config(budget, instance_id=f"w{i}"), store=open_store(url)).start()
              for i in range(2)]
    try:
        spent = 0.0
        refused: list[BudgetExceeded] = []
        for turn in range(60):
            meter = meters[turn % 2]
            try:
                with meter.reserve(0.05, {"customer": "hot"}) as r:
                    r.settle(0.04)
                    spent += 0.04
            except BudgetExceeded as exc:
                refused.append(exc)
            meter.reserve(0.01, {"customer": "cold"}).settle(0.01)  # never refused
        assert refused and spent <= 1.0 + 1e-9
        assert all(e.budget == "per-customer" and e.key == {"customer": "hot"} for e in refused)
        assert "for {'customer': 'hot'}" in str(refused[0])
        recent = meters[0].refusals(1) or meters[1].refusals(1)
        assert recent[0]["key"] == {"customer": "hot"}
        window = meters[0].budget("per-customer")["window"]
    finally:
        for meter in meters:
            meter.shutdown()
    store = open_store(url)
    try:
        hot = store.get(LEASE_TYPE, lease_row_name(
            key_budget_name("per-customer", key_json(("hot",))), window))
        cold = store.get(LEASE_TYPE, lease_row_name(
            key_budget_name("per-customer", key_json(("cold",))), window))
        assert hot is not None and cold is not None
        assert hot["leases"] == {} and cold["leases"] == {}  # given back at shutdown
        assert hot["settled_usd"] == pytest.approx(spent)
        assert cold["settled_usd"] == pytest.approx(0.6)
        # no lease row of the budget as a whole: its cap is each key's
        assert store.get(LEASE_TYPE, lease_row_name("per-customer", window)) is None
    finally:
        store.close()


def test_rolling_restart_keeps_the_key_window(store_factory: StoreFactory) -> None:
    """A weekly per-key cap: a new writer started two days later in the same week (the
    old one gone) sees the key's earlier spend, shows it, and refuses past what is
    left (every store kind: PostgreSQL and SQLite sum the keys in SQL, the others
    here)."""
    budget = Budget("weekly", 1.0, hard=True, per="customer", period="week")
    tuesday = FakeClock(datetime(2026, 11, 24, 12, 0, tzinfo=timezone.utc))
    thursday = FakeClock(datetime(2026, 11, 26, 9, 0, tzinfo=timezone.utc))
    with BudgetMeter(_config(budget, instance_id="old"), store=store_factory(),
                     clock=tuesday) as old:
        for _ in range(15):
            old.reserve(0.05, {"customer": "acme"}).settle(0.05)
        old.record(0.1, {"customer": "acme"})  # without a reservation: still counted
        old.record(0.2, {"customer": "globex"})
    with BudgetMeter(_config(budget, instance_id="new"), store=store_factory(),
                     clock=thursday) as new:
        assert new.budget("weekly", {"customer": "acme"})["window"] == "2026-W48"
        assert new.budget("weekly", {"customer": "acme"})["spend_usd"] == pytest.approx(0.85)
        assert new.budget("weekly", {"customer": "globex"})["spend_usd"] == pytest.approx(0.2)
        passed = 0
        with pytest.raises(BudgetExceeded) as info:
            for _ in range(10):
                new.reserve(0.05, {"customer": "acme"}).settle(0.05)
                passed += 1
        assert passed == 3 and info.value.key == {"customer": "acme"}
        new.reserve(0.5, {"customer": "globex"}).settle(0.5)  # another key passes


def test_overflow_keys_still_refuse_at_their_cap(tmp_path: Path) -> None:
    budget = Budget("per-customer", 0.2, hard=True, per="customer")
    url = _sqlite(tmp_path)
    with BudgetMeter(_config(budget, max_keys_per_budget=2, instance_id="w"),
                     store=open_store(url)) as m:
        for customer in ("a", "b", "c", "d"):
            spent = 0.0
            with pytest.raises(BudgetExceeded) as info:
                for _ in range(10):
                    m.reserve(0.05, {"customer": customer}).settle(0.05)
                    spent += 0.05
            assert spent == pytest.approx(0.2), customer  # c and d past the bound too
            assert info.value.key == {"customer": customer}
        m.checkpoint()
        entry = m.store.writer_entries([m.day.isoformat()])[0]
        keys = entry[KEY_FIELD]["per-customer"]
        # the entry holds 2 keys and one overflow item, whose sum is the other keys'
        assert sorted(keys) == sorted([key_json(("a",)), key_json(("b",)), OVERFLOW_KEY])
        assert keys[OVERFLOW_KEY] == pytest.approx(0.4)
        assert entry["spend_usd"] == pytest.approx(0.8)


def test_alerts_once_per_key_across_writers(tmp_path: Path) -> None:
    budget = Budget("per-customer", 1.0, per="customer", alert_ratios=(0.5, 0.9))
    url = _sqlite(tmp_path)
    sent: list[dict[str, Any]] = []
    meters = [BudgetMeter(_config(budget, instance_id=f"w{i}"), store=open_store(url),
                          notifiers=[sent.append]).start() for i in range(2)]
    try:
        meters[0].record(0.3, {"customer": "acme"})
        meters[1].record(0.3, {"customer": "acme"})  # 0.6 together: past 0.5 only so
        meters[0].record(0.4, {"customer": "globex"})  # below every ratio
        for _ in range(2):  # each writer reads the other's entry; both see the crossing
            for meter in meters:
                meter.checkpoint()
        meters[1].record(0.35, {"customer": "acme"})  # 0.95: past 0.9
        for _ in range(2):
            for meter in meters:
                meter.checkpoint()
        for meter in meters:
            meter.shutdown()  # delivers what was submitted
        store = open_store(url)
        try:
            day = meters[0].day.isoformat()
            rows = [n for n in store.nudges_on(day) if n.get("budget") == "per-customer"]
        finally:
            store.close()
        assert sorted((r["ratio"], json.dumps(r["key"])) for r in rows) == [
            (0.5, '{"customer": "acme"}'), (0.9, '{"customer": "acme"}')]
        window = meters[0].budget("per-customer")["window"]
        name = key_budget_name("per-customer", key_json(("acme",)))
        assert {r["id"] for r in rows} == {f"budget_alert_{name}_{window}_50",
                                           f"budget_alert_{name}_{window}_90"}
        assert sorted(n["ratio"] for n in sent if n.get("budget") == "per-customer") == [0.5, 0.9]
        assert all(n["spend_usd"] >= n["ratio"] * n["cap_usd"] for n in sent)
        assert NUDGE_TYPE == "sibling_nudge"
    finally:
        for meter in meters:
            meter.shutdown()


# --- 4 real processes ------------------------------------------------------------------------

FLEET_CAP = 1.0


def _run_processes(url: str, tmp_path: Path, writers: int = 4) -> tuple[list[dict[str, Any]],
                                                                         list[str]]:
    log = tmp_path / "perkey.log"
    procs: list[subprocess.Popen[str]] = []
    try:
        for i in range(writers):
            procs.append(subprocess.Popen(
                [PYTHON, "-m", "tests.support.apps.perkey_worker", url, str(FLEET_CAP), str(200 + i),
                 str(log), "2.0"],
                cwd=ROOT, env=child_env(), stdout=subprocess.PIPE, text=True))
        for proc in procs:
            assert proc.stdout is not None
            assert json.loads(proc.stdout.readline())["started"]
        stats = []
        for proc in procs:
            proc.wait(timeout=180)
            # read() of the same text stream: its buffer may hold the last line already
            # (communicate() with a timeout reads past that buffer).
            assert proc.stdout is not None
            out = proc.stdout.read()
            assert proc.returncode == 0, out
            stats.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for proc in procs:
            ensure_stopped(proc)
    return stats, log.read_text().splitlines()


def _check_processes(url: str, stats: list[dict[str, Any]], lines: list[str]) -> None:
    billed = {"hot": 0.0, "cold": 0.0}
    for line in lines:
        parts = line.split(" ", 3)
        if parts[0] == "spend":
            billed[parts[1]] += float(parts[2])
        else:
            assert parts[1] == "hot" and json.loads(parts[3]) == {"customer": "hot"}
    print(f"\nhot billed ${billed['hot']:.6f} of ${FLEET_CAP}, cold ${billed['cold']:.6f}; {stats}")
    # every writer was refused for hot, none for cold
    assert all(s["hot_refused"] == 3 and s["cold_refused"] == 0 for s in stats), stats
    assert sum(s["cold_calls"] for s in stats) >= sum(s["hot_calls"] for s in stats)
    # the fleet never spent more than hot's cap on hot
    assert billed["hot"] <= FLEET_CAP + 1e-9, billed
    assert billed["hot"] > FLEET_CAP / 2  # it was really spent against, not refused early
    store = open_store(url)
    try:
        day = time.strftime("%Y-%m-%d", time.gmtime())
        entries = store.writer_entries([day], breakdown=False)
    finally:
        store.close()
    recorded: dict[str, float] = {}
    for entry in entries:
        for key, usd in entry.get(KEY_FIELD, {}).get("per-customer", {}).items():
            recorded[key] = recorded.get(key, 0.0) + usd
    assert recorded[key_json(("hot",))] == pytest.approx(billed["hot"])
    assert recorded[key_json(("cold",))] == pytest.approx(billed["cold"])


@pytest.mark.slow
def test_per_customer_cap_across_4_sqlite_processes(tmp_path: Path) -> None:
    url = _sqlite(tmp_path)
    stats, lines = _run_processes(url, tmp_path)
    _check_processes(url, stats, lines)


@pytest.mark.slow
def test_per_customer_cap_across_4_postgres_processes(pg_clean: str, tmp_path: Path) -> None:
    stats, lines = _run_processes(pg_clean, tmp_path)
    _check_processes(pg_clean, stats, lines)


def test_key_sums_skip_what_is_no_amount(store_factory: StoreFactory) -> None:
    """A hand-edited by_key (text, a negative number, a list) never fails the read:
    PostgreSQL and SQLite skip such items, the other stores leave the row out and name
    it."""
    from otel_budget.perkey import read_key_sums

    store = store_factory()
    day = "2026-11-25"

    def entry(writer: str, by_key: Any) -> dict[str, Any]:
        return {"date": day, "writer_id": writer, "instance_id": "i", "timezone": "UTC",
                "spend_usd": 1.0, "seq": 1, "updated_at": f"{day}T00:00:00+00:00",
                "started_at": f"{day}T00:00:00+00:00", "by_attributes": [],
                "by_budget": {}, KEY_FIELD: by_key}

    store.merge_writer(entry("good1", {"b": {'["a"]': 0.25, '["b"]': 1e-05}}))
    store.merge_writer(entry("good2", {"b": {'["a"]': 0.5}, "other": {'["a"]': 9}}))
    store.merge_writer(entry("bad", {"b": {'["a"]': "lots", '["c"]': -1, '["d"]': [1]}}))
    store.merge_writer(entry("me", {"b": {'["a"]': 100}}))
    sums, bad = read_key_sums(store, [day], ["b"], "me")
    assert sums["b"]['["a"]'] == pytest.approx(0.75)
    assert sums["b"]['["b"]'] == pytest.approx(1e-05)
    assert '["c"]' not in sums["b"] and '["d"]' not in sums["b"]
    assert set(sums) == {"b"}
    assert bad in ([], [f"budget_{day}/bad"])


def test_gauges_show_the_biggest_key_against_the_cap(tmp_path: Path) -> None:
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    budget = Budget("per-customer", 2.0, per="customer")
    reader = InMemoryMetricReader()
    with BudgetMeter(_config(budget, instance_id="g"), store=open_store(_sqlite(tmp_path)),
                     metric_readers=[reader]) as m:
        m.record(1.5, {"customer": "acme"})
        m.record(1.0, {"customer": "globex"})  # $2.5 in all: past the cap of no key
        data = reader.get_metrics_data()
        assert data is not None
        points = {metric.name: metric.data.data_points[0].value  # type: ignore[union-attr]
                  for rm in data.resource_metrics for sm in rm.scope_metrics
                  for metric in sm.metrics if metric.name.startswith("llm.budget.")
                  and metric.data.data_points}
        assert points["llm.budget.utilization.ratio"] == 0.75
        assert points["llm.budget.spend"] == 1.5


def test_key_leases_are_given_back_and_dropped_when_idle(tmp_path: Path) -> None:
    budget = Budget("per-customer", 1.0, hard=True, per="customer")
    url = _sqlite(tmp_path)
    with BudgetMeter(_config(budget, instance_id="w", collect_interval_s=0.05,
                             lease_ttl_s=0.6), store=open_store(url)) as m:
        for customer in ("a", "b", "c"):
            m.reserve(0.1, {"customer": customer}).settle(0.1)
        assert m.health()["per_key"]["key_leases"] == 3
        # idle: each key's lease goes back to its row and the object is dropped
        assert wait_for(lambda: m.health()["per_key"]["key_leases"] == 0, timeout=30)
        window = m.budget("per-customer")["window"]
        row = m.store.get(LEASE_TYPE, lease_row_name(
            key_budget_name("per-customer", key_json(("a",))), window))
        assert row is not None and row["leases"] == {} and row["settled_usd"] == 0.1
        # the key's next call takes a new lease on the same row, its spend still counted
        for _ in range(9):
            m.reserve(0.1, {"customer": "a"}).settle(0.1)
        with pytest.raises(BudgetExceeded):
            m.reserve(0.1, {"customer": "a"})
        m.reserve(0.1, {"customer": "b"}).settle(0.1)


def test_a_per_attribute_no_call_carries_is_named(tmp_path: Path,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    budget = Budget("per-customer", 1.0, per="customer")
    with BudgetMeter(_config(budget, instance_id="u"), store=open_store(_sqlite(tmp_path))) as m:
        m.record(0.1, {"cutsomer": "acme"})  # the typo: every call is (unset)'s
        m.checkpoint()
        assert m.health()["per_key"]["only_unset_key"] == ["per-customer"]
        warned = [r for r in caplog.records if "no call recorded today carries" in r.message
                  and "per-customer" in r.message]
        assert len(warned) == 1
        m.checkpoint()  # once, not at every round
        assert len([r for r in caplog.records
                    if "no call recorded today carries" in r.message
                    and "per-customer" in r.message]) == 1
        m.record(0.1, {"customer": "acme"})
        assert m.health()["per_key"]["only_unset_key"] == []


def test_a_key_alert_claimed_by_a_writer_that_died_is_delivered_once_by_another(
    tmp_path: Path, clock: FakeClock
) -> None:
    """Per-key alerts are delivered at least once too: a claim row whose writer died
    before its notifiers took it is taken over by one live writer after
    alert_delivery_timeout_s, under the same id."""
    url = f"sqlite:///{tmp_path / 'budget.db'}"
    budget = Budget("per-customer", 10.0, per="customer", alert_ratios=(0.8,))
    day = clock().date().isoformat()
    name = budget_nudge_name(key_budget_name("per-customer", key_json(("acme",))), day, 0.8)
    with open_store(url) as store:
        assert store.insert_if_absent(NUDGE_TYPE, name, {
            "id": name, "to": "ag_lu", "kind": "budget_alert", "date": day, "ratio": 0.8,
            "budget": "per-customer", "window": day, "claimed_by": "dead-writer",
            "claimed_at": clock().isoformat(), "created_at": clock().isoformat(),
            "delivered_at": None, "spend_usd": 8.5, "cap_usd": 10.0,
            "key": {"customer": "acme"}})
    got: list[list[dict[str, Any]]] = [[], []]
    config = BudgetConfig(budgets=[budget], store_url=url, collect_interval_s=3600,
                          alert_delivery_timeout_s=60.0)
    meters = [BudgetMeter(config, clock=clock, notifiers=[got[i].append]).start()
              for i in range(2)]
    try:
        meters[0].record(8.5, {"customer": "acme"})
        for meter in meters * 2:
            meter.checkpoint()
        assert got == [[], []], "not before the timeout: its writer may still deliver"
        clock.advance(seconds=61)
        for meter in meters * 3:
            meter.checkpoint()
        deadline = time.monotonic() + 10
        while not (got[0] or got[1]) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert wait_for(lambda: not any(m.health()["pending_nudges"] for m in meters))
        for meter in meters * 2:
            meter.checkpoint()
        delivered = got[0] + got[1]
        assert len(delivered) == 1, "exactly one writer took it over"
        assert delivered[0]["id"] == name and delivered[0]["key"] == {"customer": "acme"}
        with open_store(url) as store:
            row = store.get(NUDGE_TYPE, name)
        assert row is not None and isinstance(row["delivered_at"], str)
        assert row["claimed_by"] in {m.writer_id for m in meters}
    finally:
        for meter in meters:
            meter.shutdown(timeout=5)
