"""The PatchStore contract (version 2: one row per day and writer), run against every
store kind in tests/support/store_kinds.py: memory, SQLite, a real PostgreSQL, and Supabase
(supabase-py against the gateway double in front of the same PostgreSQL)."""

from __future__ import annotations

import math
import random
import threading
from collections.abc import Callable
from typing import Any

import pytest

from otel_budget import CheckpointError, StoreError
from otel_budget.stores.base import (
    BudgetStore,
    BundledStore,
    ClaimStore,
    IdentifiedStore,
    LeaseStore,
    PatchStore,
    ReapingStore,
    SummingStore,
)
from otel_budget.stores.entries import (
    LEGACY_TYPE,
    SUMMARY_TYPE,
    WRITER_TYPE,
    empty_totals,
    normalize_writer_entry,
    summarize,
    summary_row_name,
    writer_row_name,
)
from tests.support.helpers import StoreFactory, run_in_threads
from tests.support.match_cases import MATCH_BUDGETS, MATCH_ITEMS
from tests.support.store_kinds import STORE_KINDS

# The PostgreSQL store is run once more through PgBouncer in transaction mode
# (tests/support/pgbouncer_server.py): no session state may survive between transactions.
CONTRACT_KINDS = {**STORE_KINDS, "pgbouncer": "pgbouncer_store_factory"}


@pytest.fixture(params=sorted(CONTRACT_KINDS))
def store_factory(request: pytest.FixtureRequest) -> StoreFactory:
    factory: StoreFactory = request.getfixturevalue(CONTRACT_KINDS[request.param])
    return factory


@pytest.fixture
def store(store_factory: StoreFactory) -> Any:
    return store_factory()


DAY = "2026-11-25"
NUDGE_TYPE = "sibling_nudge"


def entry(writer: str, spend: float, seq: int, *, day: str = DAY, instance: str = "host-a",
          budgets: dict[str, float] | None = None, **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "date": day, "writer_id": writer, "instance_id": instance, "spend_usd": spend,
        "seq": seq, "updated_at": f"{day}T10:00:{seq % 60:02d}+00:00", "timezone": "UTC",
        "by_attributes": [{"attributes": {"agent": "cloud_lu"}, "spend_usd": spend}],
    }
    if budgets is not None:
        out["by_budget"] = budgets
    return out | extra


def test_every_store_is_a_patch_store(store: Any) -> None:
    assert isinstance(store, PatchStore)
    assert not hasattr(store, "merge_budget"), "version 1's shared-document merge is gone"


def test_every_bundled_store_implements_the_whole_contract(store: Any) -> None:
    """What the library checks with isinstance (never by probing for a method): a
    bundled store missing one would silently lose what it is for."""
    for protocol in (BudgetStore, ClaimStore, LeaseStore, IdentifiedStore, ReapingStore,
                     SummingStore, BundledStore):
        assert isinstance(store, protocol), protocol.__name__
    assert PatchStore is BudgetStore
    assert isinstance(store.spool_key, str) and store.spool_key
    assert isinstance(store.identity(), str) and store.identity()
    assert store.known_identity in (None, store.identity())


def test_key_sums_are_the_python_reference_over_the_same_rows(store: Any) -> None:
    """SummingStore.key_sums (SQL on SQLite and PostgreSQL) against
    stores.keysums.sum_entry_keys over the entries the store holds."""
    from otel_budget.stores.keysums import sum_entry_keys
    from otel_budget.stores.layout import KEY_FIELD

    rng = random.Random(21)
    days = [DAY, "2026-11-24"]
    for n in range(6):
        by_key = {b: {f'["k{rng.randint(0, 4)}"]': round(rng.uniform(0, 3), 6)
                      for _ in range(rng.randint(0, 4))} for b in ("b", "c", "other")}
        store.merge_writer(entry(f"w{n}", 1.0, 1, day=days[n % 2]) | {KEY_FIELD: by_key})
    store.merge_writer(entry("plain", 1.0, 1))  # no by_key at all
    wanted = sum_entry_keys(store.writer_entries(days, breakdown=False), ["b", "c"],
                            exclude_writer="w2")
    got = store.key_sums(days, ["b", "c"], exclude_writer="w2")
    assert got[1] == wanted[1] == []
    assert set(got[0]) == set(wanted[0]) and set(got[0]) <= {"b", "c"}
    for budget, sums in wanted[0].items():
        assert got[0][budget] == pytest.approx(sums, abs=1e-9)
    assert store.key_sums([], ["b"]) == ({}, [])
    assert store.key_sums(["1999-01-01"], ["b"]) == ({}, [])


def test_get_absent_returns_none(store: Any) -> None:
    assert store.get(LEGACY_TYPE, "budget_1999-01-01") is None
    assert store.get(WRITER_TYPE, writer_row_name(DAY, "nobody")) is None


def test_insert_if_absent_claims_once(store: Any) -> None:
    nudge = {"to": "ag_lu", "kind": "budget_alert", "ratio": 0.8}
    assert store.insert_if_absent(NUDGE_TYPE, "budget_alert_2026-11-25_80", nudge) is True
    assert store.insert_if_absent(NUDGE_TYPE, "budget_alert_2026-11-25_80", {"other": 1}) is False
    assert store.get(NUDGE_TYPE, "budget_alert_2026-11-25_80") == nudge


def test_replace_claim_is_a_compare_and_set(store: Any) -> None:
    """How a claim records its delivery and how one writer (only one) takes over a
    claim its writer never delivered."""
    name = "budget_alert_2026-11-25_80"
    claim = {"id": name, "ratio": 0.8, "claimed_by": "a", "delivered_at": None}
    assert store.insert_if_absent(NUDGE_TYPE, name, claim)
    taken = {**claim, "claimed_by": "b"}
    assert store.replace_claim(NUDGE_TYPE, name, claim, taken) is True
    assert store.replace_claim(NUDGE_TYPE, name, claim, {**claim, "claimed_by": "c"}) is False
    assert store.get(NUDGE_TYPE, name) == taken
    done = {**taken, "delivered_at": "2026-11-25T12:00:00+00:00"}
    assert store.replace_claim(NUDGE_TYPE, name, taken, done) is True
    assert store.get(NUDGE_TYPE, name) == done
    assert store.replace_claim(NUDGE_TYPE, "absent", claim, done) is False
    assert store.get(NUDGE_TYPE, "absent") is None


def test_nudges_on_lists_the_nudges_claimed_that_day(store: Any) -> None:
    assert store.nudges_on("2026-11-25") == []
    first = {"to": "ag_lu", "date": "2026-11-25", "ratio": 0.8, "budget": "daily"}
    week = {"to": "ag_lu", "date": "2026-11-25", "ratio": 0.5, "budget": "team",
            "window": "2026-W48"}
    other_day = {"to": "ag_lu", "date": "2026-11-24", "ratio": 0.8}
    assert store.insert_if_absent("sibling_nudge", "budget_alert_2026-11-25_80", first)
    assert store.insert_if_absent("sibling_nudge", "budget_alert_team_2026-W48_50", week)
    assert store.insert_if_absent("sibling_nudge", "budget_alert_2026-11-24_80", other_day)
    assert store.insert_if_absent("budget", "budget_2026-11-25", {"date": "2026-11-25"})
    got = store.nudges_on("2026-11-25")
    assert sorted(got, key=lambda n: n["ratio"]) == [week, first]
    with pytest.raises((ValueError, CheckpointError)):
        store.nudges_on("not a day")


def test_a_legacy_day_document_is_still_read(store: Any) -> None:
    legacy = {"date": DAY, "total_usd": 3.5, "instances": {"a": {"spend_usd": 3.5, "seq": 2}}}
    assert store.insert_if_absent(LEGACY_TYPE, f"budget_{DAY}", legacy) is True
    assert store.get(LEGACY_TYPE, f"budget_{DAY}") == legacy


def test_merge_creates_the_writer_row(store: Any) -> None:
    result = store.merge_writer(entry("w1", 12.34, 1, budgets={"daily": 12.34}))
    assert result == {"applied": True, "stored_seq": 1, "others": empty_totals(DAY)}
    assert store.get(WRITER_TYPE, f"budget_{DAY}/w1") == entry(
        "w1", 12.34, 1, budgets={"daily": 12.34})


def test_amounts_are_rounded_to_a_nano_dollar(store: Any) -> None:
    raw = entry("w1", 0.1 + 0.2, 1, budgets={"daily": 1.0000000004, "team": 2.9999999996})
    raw["by_attributes"][0]["spend_usd"] = 0.12345678951
    store.merge_writer(raw)
    row = store.get(WRITER_TYPE, writer_row_name(DAY, "w1"))
    assert row["spend_usd"] == 0.3
    assert row["by_budget"] == {"daily": 1.0, "team": 3.0}
    assert row["by_attributes"][0]["spend_usd"] == 0.12345679
    assert raw["spend_usd"] == 0.1 + 0.2, "the caller's entry is not modified"


def test_seq_rules(store: Any) -> None:
    name = writer_row_name(DAY, "w1")
    assert store.merge_writer(entry("w1", 1.0, 5))["applied"] is True
    older = store.merge_writer(entry("w1", 0.5, 4))
    assert older["applied"] is False and older["stored_seq"] == 5
    assert store.get(WRITER_TYPE, name)["spend_usd"] == 1.0
    equal = store.merge_writer(entry("w1", 9.0, 5))
    assert equal["applied"] is False and equal["stored_seq"] == 5, "an equal seq is a no-op"
    assert store.get(WRITER_TYPE, name)["spend_usd"] == 1.0
    newer = store.merge_writer(entry("w1", 2.0, 6))
    assert newer["applied"] is True and newer["stored_seq"] == 6
    assert store.get(WRITER_TYPE, name)["spend_usd"] == 2.0
    assert store.day_totals([DAY])[DAY]["total_usd"] == 2.0, "replaced, not accumulated"


def test_seqs_beyond_64_bits_still_compare(store: Any) -> None:
    big = 2**70
    store.merge_writer(entry("w1", 1.0, big))
    assert store.merge_writer(entry("w1", 2.0, big - 1))["stored_seq"] == big
    result = store.merge_writer(entry("w1", 3.0, big + 1))
    assert result["applied"] is True and result["stored_seq"] == big + 1


def test_others_are_every_other_writer_of_the_day(store: Any) -> None:
    store.merge_writer(entry("w1", 1.0, 1, budgets={"daily": 1.0}))
    store.merge_writer(entry("w2", 2.0, 1, instance="host-b", budgets={"daily": 2.0, "team": 2.0}))
    store.merge_writer(entry("w9", 50.0, 1, day="2026-11-24", budgets={"daily": 50.0}))
    result = store.merge_writer(entry("w3", 4.0, 1, budgets={"daily": 4.0}))
    others = result["others"]
    assert others["writers"] == 2 and others["total_usd"] == 3.0
    assert others["by_budget"] == {"daily": 3.0, "team": 2.0}
    assert others["budget_writers"] == {"daily": 2, "team": 1}
    assert others["updated_at"] == f"{DAY}T10:00:01+00:00"
    # A no-op merge still reports the others, and never counts itself.
    again = store.merge_writer(entry("w1", 1.0, 1))
    assert again["applied"] is False
    assert again["others"]["total_usd"] == 6.0 and again["others"]["writers"] == 2


def test_sums_carry_no_float_noise(store: Any) -> None:
    store.merge_writer(entry("a", 0.1, 1))
    store.merge_writer(entry("b", 0.2, 1))
    result = store.merge_writer(entry("c", 0.363000000000000004, 1))
    assert result["others"]["total_usd"] == 0.3
    assert store.day_totals([DAY])[DAY]["total_usd"] == 0.663


def test_day_totals_reads_several_days_at_once(store: Any) -> None:
    days = [f"2026-11-{d:02d}" for d in range(23, 30)]  # a week
    store.merge_writer(entry("w1", 1.5, 1, day=days[0], budgets={"weekly": 1.5}))
    store.merge_writer(entry("w2", 2.5, 3, day=days[0], budgets={"weekly": 2.5, "daily": 2.5}))
    store.merge_writer(entry("w1", 4.0, 2, day=days[3], budgets={"weekly": 4.0}))
    totals = store.day_totals(days)
    assert list(totals) == days
    assert totals[days[0]]["total_usd"] == 4.0 and totals[days[0]]["writers"] == 2
    assert totals[days[0]]["by_budget"] == {"daily": 2.5, "weekly": 4.0}
    assert totals[days[0]]["budget_writers"] == {"daily": 1, "weekly": 2}
    assert totals[days[3]]["total_usd"] == 4.0 and totals[days[3]]["writers"] == 1
    for day in days[1:3] + days[4:]:
        assert totals[day] == empty_totals(day)
    assert store.day_totals([]) == {}
    assert list(store.day_totals([days[3], days[0], days[3]])) == [days[3], days[0]]


def test_writer_entries_with_and_without_breakdown(store: Any) -> None:
    store.merge_writer(entry("w2", 2.0, 1, budgets={"daily": 2.0}))
    store.merge_writer(entry("w1", 1.0, 1))
    store.merge_writer(entry("w3", 3.0, 1, day="2026-11-26"))
    full = store.writer_entries([DAY])
    assert sorted(e["writer_id"] for e in full) == ["w1", "w2"]
    assert {e["writer_id"]: e for e in full}["w2"] == entry("w2", 2.0, 1, budgets={"daily": 2.0})
    light = store.writer_entries([DAY, "2026-11-26"], breakdown=False)
    assert sorted(e["writer_id"] for e in light) == ["w1", "w2", "w3"]
    for item in light:
        assert "by_attributes" not in item
        assert item["spend_usd"] > 0 and item["seq"] == 1
    assert store.writer_entries(["2026-01-01"]) == []


@pytest.mark.parametrize("writer", [
    "it's", 'quote"d', "a/b", "50%_off", "x'); DROP TABLE quilt_patches; --", "ünïcødé", "w" * 200,
])
def test_awkward_writer_ids_are_data(store: Any, writer: str) -> None:
    store.merge_writer(entry("plain", 1.0, 1))
    result = store.merge_writer(entry(writer, 2.0, 3))
    assert result["others"]["total_usd"] == 1.0
    assert store.get(WRITER_TYPE, writer_row_name(DAY, writer))["writer_id"] == writer
    assert store.merge_writer(entry(writer, 7.0, 2))["stored_seq"] == 3
    assert store.day_totals([DAY])[DAY]["total_usd"] == 3.0


BAD_ENTRIES: dict[str, Any] = {
    "not a dict": [1, 2],
    "nan": entry("w1", math.nan, 2),
    "inf": entry("w1", math.inf, 2),
    "negative": entry("w1", -1.0, 2),
    "spend as text": entry("w1", "3", 2),  # type: ignore[arg-type]
    "bool spend": entry("w1", True, 2),
    "bool seq": entry("w1", 1.0, True),
    "negative seq": entry("w1", 1.0, -2),
    "float seq": entry("w1", 1.0, 2) | {"seq": 2.0},
    "bad date": entry("w1", 1.0, 2, day="2026-13-45"),
    "date not a string": entry("w1", 1.0, 2) | {"date": 20261125},
    "empty writer": entry("", 1.0, 2),
    "long writer": entry("w" * 201, 1.0, 2),
    "no instance": {k: v for k, v in entry("w1", 1.0, 2).items() if k != "instance_id"},
    "no updated_at": {k: v for k, v in entry("w1", 1.0, 2).items() if k != "updated_at"},
    "timezone not a string": entry("w1", 1.0, 2, timezone=0),
    "nul in writer": entry("w\x00", 1.0, 2),
    "nul in attribute value": entry("w1", 1.0, 2, by_attributes=[
        {"attributes": {"agent": "a\x00b"}, "spend_usd": 1.0}]),
    "lone surrogate in attribute key": entry("w1", 1.0, 2, by_attributes=[
        {"attributes": {"\udc80": "x"}, "spend_usd": 1.0}]),
    "lone surrogate in instance": entry("w1", 1.0, 2, instance="host-\ud800"),
    "nul in budget name": entry("w1", 1.0, 2, budgets={"dai\x00ly": 1.0}),
    "by_attributes not a list": entry("w1", 1.0, 2, by_attributes="x"),
    "by_attributes item without attributes": entry("w1", 1.0, 2, by_attributes=[
        {"spend_usd": 1.0}]),
    "by_attributes negative": entry("w1", 1.0, 2, by_attributes=[
        {"attributes": {}, "spend_usd": -0.5}]),
    "by_attributes nan": entry("w1", 1.0, 2, by_attributes=[
        {"attributes": {}, "spend_usd": math.nan}]),
    "by_budget not a dict": entry("w1", 1.0, 2, by_budget=[1.0]),
    "by_budget negative": entry("w1", 1.0, 2, budgets={"daily": -1.0}),
    "by_budget inf": entry("w1", 1.0, 2, budgets={"daily": math.inf}),
    "by_budget bool": entry("w1", 1.0, 2, budgets={"daily": True}),
    "final not a bool": entry("w1", 1.0, 2, final="yes"),
    "retired set by the writer": entry("w1", 1.0, 2, retired=True),
    "retired false": entry("w1", 1.0, 2, retired=False),
}


@pytest.mark.parametrize("bad", list(BAD_ENTRIES.values()), ids=list(BAD_ENTRIES))
def test_a_malformed_entry_is_refused_and_nothing_is_written(store: Any, bad: Any) -> None:
    store.merge_writer(entry("w1", 1.0, 1))
    before = store.writer_entries([DAY, "2026-11-26"])
    with pytest.raises(CheckpointError):
        store.merge_writer(bad)
    with pytest.raises(CheckpointError):
        store.retire_writer(bad)
    assert store.writer_entries([DAY, "2026-11-26"]) == before
    assert store.day_totals([DAY])[DAY]["total_usd"] == 1.0


@pytest.mark.parametrize("days", [["2026-11-32"], ["yesterday"], "2026-11-25", [None]])
def test_malformed_days_are_refused(store: Any, days: Any) -> None:
    with pytest.raises(CheckpointError):
        store.day_totals(days)
    with pytest.raises(CheckpointError):
        store.writer_entries(days)


def test_a_closed_store_refuses_every_method(store_factory: StoreFactory) -> None:
    store: Any = store_factory()
    store.merge_writer(entry("w1", 1.0, 1))
    store.close()
    store.close()  # idempotent
    calls: dict[str, Callable[[], Any]] = {
        "get": lambda: store.get(WRITER_TYPE, writer_row_name(DAY, "w1")),
        "insert_if_absent": lambda: store.insert_if_absent(NUDGE_TYPE, "n", {"a": 1}),
        "merge_writer": lambda: store.merge_writer(entry("w1", 2.0, 2)),
        "retire_writer": lambda: store.retire_writer(entry("w1", 2.0, 2)),
        "day_totals": lambda: store.day_totals([DAY]),
        "writer_entries": lambda: store.writer_entries([DAY]),
    }
    for method, call in calls.items():
        with pytest.raises(StoreError, match="closed"):
            call()
            pytest.fail(f"{method} worked on a closed store")


def test_a_store_is_a_context_manager(store_factory: StoreFactory) -> None:
    with store_factory() as store:
        store.merge_writer(entry("w1", 1.0, 1))
    with pytest.raises(StoreError, match="closed"):
        store.day_totals([DAY])


@pytest.mark.parametrize("seed", [11, 12])
def test_totals_are_entries_summarize_on_random_data(store: Any, seed: int) -> None:
    rng = random.Random(seed)
    days = ["2026-11-24", DAY, "2026-11-26"]
    latest: dict[tuple[str, str], dict[str, Any]] = {}
    for step in range(60):
        day = rng.choice(days)
        writer = rng.choice(["a", "b", "c", "it's", "d/e"])
        spend = rng.choice([rng.uniform(0, 50), rng.random() / 1e6, round(rng.uniform(0, 9), 3),
                            float(rng.randint(0, 5)), rng.randint(0, 5), 1e-10])
        budgets = {name: rng.choice([spend, rng.uniform(0, 3), 0])
                   for name in rng.sample(["daily", "team", "weekly"], rng.randint(0, 3))}
        raw = entry(writer, spend, rng.randint(0, 8), day=day, budgets=budgets)
        raw["updated_at"] = f"t{step:03d}"
        result = store.merge_writer(raw)
        key = (day, writer)
        stored = latest.get(key)
        if stored is None or raw["seq"] > stored["seq"]:
            latest[key] = normalize_writer_entry(raw, where="test")
        assert result["applied"] == (latest[key]["updated_at"] == raw["updated_at"])
        assert result["stored_seq"] == latest[key]["seq"]
        others = [e for (d, w), e in latest.items() if d == day and w != writer]
        assert result["others"] == summarize(day, others), step
    totals = store.day_totals(days)
    for day in days:
        assert totals[day] == summarize(day, [e for (d, _), e in latest.items() if d == day])


def test_concurrent_writers_lose_nothing(store_factory: StoreFactory) -> None:
    writers, rounds = 6, 30

    def write(index: int) -> None:
        handle: Any = store_factory()
        for seq in range(1, rounds + 1):
            handle.merge_writer(entry(f"w{index}", seq * 0.01, seq))

    assert run_in_threads(write, writers) == []
    reader: Any = store_factory()
    assert {e["writer_id"]: e["seq"] for e in reader.writer_entries([DAY])} == {
        f"w{i}": rounds for i in range(writers)}
    assert reader.day_totals([DAY])[DAY]["total_usd"] == round(writers * rounds * 0.01, 9)


# --- retiring writers into the day's summary row ---------------------------------------


def _all_rows_totals(store: Any, day: str) -> Any:
    """The reference: entries.summarize over every writer row of the day, retired or not."""
    return summarize(day, store.writer_entries([day], breakdown=False))


def test_retire_counts_the_writer_once_in_the_summary(store: Any) -> None:
    store.merge_writer(entry("w1", 1.0, 1, budgets={"daily": 1.0}))
    store.merge_writer(entry("w2", 2.0, 1, budgets={"daily": 2.0, "team": 2.0}))
    before = store.day_totals([DAY])[DAY]
    result = store.retire_writer(entry("w2", 2.5, 2, budgets={"daily": 2.5, "team": 0.5},
                                       final=True))
    assert result["applied"] is True and result["stored_seq"] == 2
    assert result["others"] == summarize(DAY, [normalize_writer_entry(
        entry("w1", 1.0, 1, budgets={"daily": 1.0}), where="test")])
    row = store.get(WRITER_TYPE, writer_row_name(DAY, "w2"))
    assert row["retired"] is True and row["final"] is True and row["spend_usd"] == 2.5
    assert store.get(SUMMARY_TYPE, summary_row_name(DAY)) == {
        "date": DAY, "spend_nanos": 2_500_000_000, "writers": 1,
        "updated_at": f"{DAY}T10:00:02+00:00",
        "by_budget_nanos": {"daily": 2_500_000_000, "team": 500_000_000},
        "budget_writers": {"daily": 1, "team": 1}}
    totals = store.day_totals([DAY])[DAY]
    assert totals == _all_rows_totals(store, DAY)
    assert totals["total_usd"] == 3.5 and totals["writers"] == before["writers"] == 2
    assert totals["budget_writers"] == {"daily": 2, "team": 1}
    # A retry (its first answer lost) changes nothing: the row is counted once.
    again = store.retire_writer(entry("w2", 2.5, 2, budgets={"daily": 2.5, "team": 0.5},
                                      final=True))
    assert again["applied"] is False and again["stored_seq"] == 2
    assert again["others"]["total_usd"] == 1.0 and again["others"]["writers"] == 1
    assert store.day_totals([DAY])[DAY] == totals
    assert store.get(SUMMARY_TYPE, summary_row_name(DAY))["writers"] == 1
    # Other writers' merges see the retired writer through the summary.
    others = store.merge_writer(entry("w1", 1.5, 2, budgets={"daily": 1.5}))["others"]
    assert others["total_usd"] == 2.5 and others["writers"] == 1
    assert others["by_budget"] == {"daily": 2.5, "team": 0.5}
    # writer_entries still lists every row, retired ones included.
    assert sorted((e["writer_id"], e.get("retired", False))
                  for e in store.writer_entries([DAY])) == [("w1", False), ("w2", True)]


def test_retire_without_an_earlier_merge_and_with_a_stale_seq(store: Any) -> None:
    fresh = store.retire_writer(entry("w1", 4.0, 3))
    assert fresh == {"applied": True, "stored_seq": 3, "others": empty_totals(DAY)}
    assert store.get(WRITER_TYPE, writer_row_name(DAY, "w1"))["retired"] is True
    # The stored seq is newer than the final entry: the stored entry is the one retired.
    store.merge_writer(entry("w2", 5.0, 9))
    stale = store.retire_writer(entry("w2", 1.0, 4))
    assert stale["applied"] is False and stale["stored_seq"] == 9
    row = store.get(WRITER_TYPE, writer_row_name(DAY, "w2"))
    assert row["retired"] is True and row["spend_usd"] == 5.0
    assert store.get(SUMMARY_TYPE, summary_row_name(DAY))["spend_nanos"] == 9_000_000_000
    assert store.day_totals([DAY])[DAY]["total_usd"] == 9.0


def test_a_late_merge_on_a_retired_row_moves_the_summary_by_the_difference(store: Any) -> None:
    store.merge_writer(entry("other", 1.0, 1))
    store.retire_writer(entry("w1", 2.0, 5, budgets={"daily": 2.0, "old": 2.0}))
    older = store.merge_writer(entry("w1", 9.0, 4))
    assert older["applied"] is False and older["stored_seq"] == 5
    assert store.day_totals([DAY])[DAY]["total_usd"] == 3.0
    newer = store.merge_writer(entry("w1", 3.0, 6, budgets={"daily": 3.0, "new": 1.0}))
    assert newer["applied"] is True and newer["stored_seq"] == 6
    assert newer["others"]["total_usd"] == 1.0 and newer["others"]["writers"] == 1
    assert newer["others"]["by_budget"] == {}
    row = store.get(WRITER_TYPE, writer_row_name(DAY, "w1"))
    assert row["retired"] is True and row["spend_usd"] == 3.0, "never un-retired"
    assert store.get(SUMMARY_TYPE, summary_row_name(DAY)) == {
        "date": DAY, "spend_nanos": 3_000_000_000, "writers": 1,
        "updated_at": f"{DAY}T10:00:06+00:00",
        "by_budget_nanos": {"daily": 3_000_000_000, "new": 1_000_000_000},
        "budget_writers": {"daily": 1, "new": 1}}
    totals = store.day_totals([DAY])[DAY]
    assert totals == _all_rows_totals(store, DAY)
    assert totals["total_usd"] == 4.0 and totals["writers"] == 2
    # A newer retire of a retired row is the same move, still counted once.
    store.retire_writer(entry("w1", 3.25, 7, budgets={"daily": 3.25}))
    assert store.day_totals([DAY])[DAY] == _all_rows_totals(store, DAY)
    assert store.day_totals([DAY])[DAY]["writers"] == 2


@pytest.mark.parametrize("seed", [21, 22, 23])
def test_totals_with_retired_writers_are_summarize_over_every_row(store: Any, seed: int) -> None:
    """Random merges and retires, in random order: day_totals and every answer's
    others equal entries.summarize over ALL the day's rows (retired or not)."""
    rng = random.Random(seed)
    days = [DAY, "2026-11-26"]
    latest: dict[tuple[str, str], dict[str, Any]] = {}
    retired: set[tuple[str, str]] = set()
    for step in range(70):
        day = rng.choice(days)
        writer = rng.choice(["a", "b", "c", "it's", "d/e", "f", "g"])
        spend = rng.choice([rng.uniform(0, 50), rng.random() / 1e6, round(rng.uniform(0, 9), 3),
                            float(rng.randint(0, 5)), 1e-10, 123456.789012345])
        budgets = {name: rng.choice([spend, rng.uniform(0, 3), 0])
                   for name in rng.sample(["daily", "team", "weekly"], rng.randint(0, 3))}
        key = (day, writer)
        stored = latest.get(key)
        seq = rng.randint(0, 9)
        raw = entry(writer, spend, seq, day=day, budgets=budgets)
        # updated_at grows with seq, as a writer's clock does.
        raw["updated_at"] = f"t{seq:02d}-{step:03d}"
        retire = rng.random() < 0.35
        was_retired = key in retired
        result = (store.retire_writer if retire else store.merge_writer)(raw)
        if stored is None or raw["seq"] > stored["seq"]:
            latest[key] = normalize_writer_entry(raw, where="test")
        if retire:
            retired.add(key)
        assert result["stored_seq"] == latest[key]["seq"]
        others = summarize(day, [e for (d, w), e in latest.items() if d == day and w != writer])
        got = dict(result["others"])
        if was_retired:  # documented: others.updated_at may then be this writer's
            got["updated_at"] = others["updated_at"] = None
        assert got == others, step
        for d in days:
            assert store.day_totals([d])[d] == summarize(
                d, [e for (dd, _), e in latest.items() if dd == d]), step
    rows = store.writer_entries(days, breakdown=False)
    assert {(e["date"], e["writer_id"]) for e in rows if e.get("retired")} == retired
    assert len(rows) == len(latest)


def test_concurrent_retires_and_merges_lose_nothing(store_factory: StoreFactory) -> None:
    writers, rounds = 6, 12

    def write(index: int) -> None:
        handle: Any = store_factory()
        for seq in range(1, rounds + 1):
            handle.merge_writer(entry(f"w{index}", seq * 0.01, seq, budgets={"d": 0.01}))
        handle.retire_writer(entry(f"w{index}", 1.0, rounds + 1, budgets={"d": 1.0}))
        handle.retire_writer(entry(f"w{index}", 1.0, rounds + 1, budgets={"d": 1.0}))

    assert run_in_threads(write, writers) == []
    reader: Any = store_factory()
    totals = reader.day_totals([DAY])[DAY]
    assert totals["total_usd"] == float(writers) and totals["writers"] == writers
    assert totals["budget_writers"] == {"d": writers}
    assert reader.get(SUMMARY_TYPE, summary_row_name(DAY))["writers"] == writers


# --- the reaper: writers that stopped checkpointing (killed, OOM, frozen) -------------

def _reap_all(store: Any) -> list[str]:
    """Every live row written before now (the clocks of SQLite and memory tick in
    milliseconds and microseconds: wait until they have moved past the last write)."""
    names: list[str] = []
    for _ in range(200):
        names += store.reap_stale(0)
        if not [e for e in store.writer_entries([DAY, "2026-11-26"], breakdown=False)
                if not e.get("retired")]:
            break
        threading.Event().wait(0.005)
    return sorted(names)


def test_the_reaper_retires_stale_writers_and_a_late_merge_never_counts_twice(
    store: Any,
) -> None:
    store.merge_writer(entry("killed", 1.0, 3, budgets={"daily": 1.0}))
    store.merge_writer(entry("slow", 2.0, 1, budgets={"daily": 2.0, "team": 2.0}))
    before = store.day_totals([DAY])[DAY]
    assert store.reap_stale(3600) == [], "nothing that old"
    assert _reap_all(store) == [writer_row_name(DAY, "killed"), writer_row_name(DAY, "slow")]
    rows = {e["writer_id"]: e for e in store.writer_entries([DAY], breakdown=False)}
    assert rows["killed"]["retired"] is True and rows["slow"]["retired"] is True
    assert rows["killed"]["seq"] == 3 and rows["killed"]["spend_usd"] == 1.0, "its own entry"
    assert store.day_totals([DAY])[DAY] == before, "retiring moves nothing"
    assert store.get(SUMMARY_TYPE, summary_row_name(DAY))["writers"] == 2
    assert store.reap_stale(0) == [], "a retired row is reaped once"

    # The slow writer comes back: its newer entry replaces its row, counted once.
    late = store.merge_writer(entry("slow", 2.5, 2, budgets={"daily": 2.5, "team": 2.5}))
    assert late["applied"] is True and late["stored_seq"] == 2
    assert late["others"]["total_usd"] == 1.0 and late["others"]["writers"] == 1
    again = store.merge_writer(entry("slow", 2.5, 2, budgets={"daily": 2.5, "team": 2.5}))
    assert again["applied"] is False and again["others"]["total_usd"] == 1.0
    totals = store.day_totals([DAY])[DAY]
    assert totals["total_usd"] == 3.5 and totals["writers"] == 2
    assert totals["by_budget"] == {"daily": 3.5, "team": 2.5}
    assert totals["budget_writers"] == {"daily": 2, "team": 1}
    assert store.get(SUMMARY_TYPE, summary_row_name(DAY))["spend_nanos"] == 3_500_000_000
    fresh = store.merge_writer(entry("fresh", 4.0, 1))
    assert fresh["others"]["total_usd"] == 3.5 and fresh["others"]["writers"] == 2
    assert store.reap_stale(3600) == []


def test_reap_stale_refuses_bad_arguments_before_any_io(store: Any) -> None:
    for bad in (-1, math.nan, "10", None):
        with pytest.raises(CheckpointError):
            store.reap_stale(bad)
    with pytest.raises(CheckpointError):
        store.reap_stale(10, limit=0)


@pytest.mark.parametrize("seed", [31, 32])
def test_merges_retires_and_reaps_in_any_order_keep_the_totals_exact(
    store: Any, seed: int
) -> None:
    """As the test above with retires, plus reaps at random moments: every answer's
    others and day_totals equal entries.summarize over every row, reaped or not."""
    rng = random.Random(seed)
    latest: dict[str, dict[str, Any]] = {}
    retired: set[str] = set()
    for step in range(60):
        if rng.random() < 0.15:
            for name in store.reap_stale(0, limit=rng.randint(1, 3)):
                retired.add(name.rsplit("/", 1)[1])
            continue
        writer = rng.choice(["a", "b", "c", "d", "e"])
        spend = rng.choice([rng.uniform(0, 20), 0.1, 1e-9, float(rng.randint(0, 4))])
        budgets = {n: rng.choice([spend, rng.uniform(0, 2)])
                   for n in rng.sample(["daily", "team"], rng.randint(0, 2))}
        seq = rng.randint(0, 9)
        raw = entry(writer, spend, seq, budgets=budgets)
        raw["updated_at"] = f"t{seq:02d}-{step:03d}"
        retire = rng.random() < 0.2
        stored = latest.get(writer)
        was_retired = writer in retired
        result = (store.retire_writer if retire else store.merge_writer)(raw)
        if stored is None or seq > stored["seq"]:
            latest[writer] = normalize_writer_entry(raw, where="test")
        if retire:
            retired.add(writer)
        got = dict(result["others"])
        want = summarize(DAY, [e for w, e in latest.items() if w != writer])
        if was_retired:  # documented: others.updated_at may then be this writer's
            got["updated_at"] = want["updated_at"] = None
        assert got == want, step
        assert store.day_totals([DAY])[DAY] == summarize(DAY, list(latest.values())), step
    rows = store.writer_entries([DAY], breakdown=False)
    assert {e["writer_id"] for e in rows if e.get("retired")} == retired


# --- a budget's share of closed days, computed in the store (otel_budget.stores.shares) --

def _breakdown_entry(writer: str, seq: int, items: list[tuple[dict[str, Any], float]],
                     *, day: str = "2026-11-24", budgets: dict[str, float] | None = None,
                     ) -> dict[str, Any]:
    raw = entry(writer, round(sum(s for _, s in items), 9), seq, day=day, budgets=budgets)
    raw["by_attributes"] = [{"attributes": a, "spend_usd": s} for a, s in items]
    return raw


def test_budget_day_spend_is_every_writers_share_of_the_budget(store: Any) -> None:
    from otel_budget.stores.shares import day_spend_from_entries

    budgets = list(MATCH_BUDGETS)
    items = list(MATCH_ITEMS)
    store.merge_writer(_breakdown_entry("old-config", 1, items))
    # A writer that reported "opus" itself: its own figure counts, not its breakdown.
    store.merge_writer(_breakdown_entry("new-config", 1, items[:2], budgets={"opus": 9.0}))
    store.merge_writer(_breakdown_entry("today", 1, items[:1], day=DAY))
    days = ["2026-11-23", "2026-11-24", DAY]
    got = store.budget_day_spend(days, budgets, closed_before=DAY)
    want = day_spend_from_entries(store.writer_entries(days), budgets)
    assert got["2026-11-24"] == pytest.approx(want["2026-11-24"], abs=1e-9)
    assert got["2026-11-24"]["opus"] == pytest.approx(1.25 + 2.0 + 9.0)
    assert got["2026-11-24"]["one"] == pytest.approx(1.25 + 2.0 + 0.125 + 1.25)
    assert got["2026-11-24"]["flag"] == pytest.approx(1.25 + 2.0 + 1.25)
    assert got["2026-11-24"]["daily"] == pytest.approx(3.9375 + 1.75), "overflow left out"
    assert got[DAY]["opus"] == pytest.approx(1.25)
    assert got["2026-11-23"] == {b.name: 0.0 for b in budgets}
    # Asked again: the same (kept, on the stores that keep them).
    assert store.budget_day_spend(days, budgets, closed_before=DAY) == got
    # A late entry of the closed day (a spool replayed after an outage) counts.
    store.merge_writer(_breakdown_entry("late", 1, items[:1]))
    again = store.budget_day_spend(days, budgets, closed_before=DAY)
    assert again["2026-11-24"]["opus"] == pytest.approx(got["2026-11-24"]["opus"] + 1.25)
    assert again[DAY] == got[DAY]


def test_closed_days_reach_the_fleet_view_as_one_entry_each(store: Any) -> None:
    from otel_budget.budgets import Budget
    from otel_budget.stores.shares import CLOSED_DAY_WRITER, incomplete_day_entries

    budgets = [Budget("opus", 10.0, period="month",
                      match={"gen_ai.request.model": "claude-opus-4*"})]
    items: list[tuple[dict[str, Any], float]] = [({"gen_ai.request.model": "claude-opus-4-1"}, 1.5),
             ({"gen_ai.request.model": "gpt-4o"}, 0.25)]
    for i in range(3):
        store.merge_writer(_breakdown_entry(f"w{i}", 1, items))
    store.merge_writer(_breakdown_entry("t", 1, items, day=DAY))
    days = ["2026-11-24", DAY]
    totals = store.day_totals(days)
    entries = incomplete_day_entries(store, days, totals, budgets, today=DAY)
    closed = [e for e in entries if e["date"] == "2026-11-24"]
    assert [e["writer_id"] for e in closed] == [CLOSED_DAY_WRITER]
    assert closed[0]["spend_usd"] == 5.25 and closed[0]["by_budget"] == {"opus": 4.5}
    assert [e["writer_id"] for e in entries if e["date"] == DAY] == ["t"], "today read whole"
