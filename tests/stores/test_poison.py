"""Poison input is refused at the door, before any side effect (one table, run once:
the validation is shared); whatever a store holds that it should not is named and
quarantined, per store, never a TypeError."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from otel_budget import (
    BudgetConfig,
    BudgetMeter,
    CheckpointError,
    ConfigError,
    read_day,
)
from otel_budget.stores.base import PatchStore
from otel_budget.stores.memory import MemoryStore
from tests.support.helpers import FakeClock, spend_points
from tests.support.paths import ROOT

POISON_AMOUNTS: list[Any] = [
    math.nan, math.inf, -math.inf, -0.01, 1e300, 10**400, Decimal("NaN"), Decimal("1e400"),
    "0.5", b"1", True, None, [1.0], {"usd": 1},
]
POISON_ATTRIBUTES: list[Any] = [
    {"k": {"nested": 1}}, {"k": b"bytes"}, {"k": math.nan}, {"k": math.inf},
    {"k": [[1, 2]]}, {"k": [1, "two"]}, {"k": "nul\x00"}, {"k": "lone \udc80"},
    {"lone \ud800": 1}, {"k": object()}, ["not", "a", "mapping"], {"k": "x" * 10_000},
]




@pytest.fixture
def meter(clock: FakeClock) -> Any:
    # The door's validation runs before any store is involved, so this table runs
    # once, on the memory store; what each store checks itself is tested per store
    # (the hand-edited rows below, and test_store_contract / test_store_bad_data).
    store = MemoryStore()
    reader = InMemoryMetricReader()
    config = BudgetConfig(daily_cap_usd=10, instance_id="a", collect_interval_s=3600)
    m = BudgetMeter(config, store=store, metric_readers=[reader], clock=clock).start()
    m.record(1.0, {"agent": "ok"})
    m.checkpoint()
    yield m, reader, store
    m.shutdown()


def assert_unchanged(meter: BudgetMeter, reader: InMemoryMetricReader, store: PatchStore) -> None:
    assert meter.daily_spend() == 1.0
    assert spend_points(reader) == {(("agent", "ok"),): 1.0}
    assert meter.checkpoint() is True, "no poison reached the checkpoint"
    assert read_day(store, "2026-11-25")["total_usd"] == 1.0
    assert meter.health()["status"] == "ok"


@pytest.mark.parametrize("bad", POISON_AMOUNTS, ids=repr)
def test_poison_amounts_change_nothing(meter: Any, bad: Any) -> None:
    m, reader, store = meter
    calls: tuple[Callable[[], object], ...] = (
        lambda: m.record(bad), lambda: m.guard(bad), lambda: m.reserve(bad))
    for call in calls:
        with pytest.raises(ValueError):  # AmountTypeError is a ValueError too
            call()
    assert_unchanged(m, reader, store)


@pytest.mark.parametrize("bad", POISON_ATTRIBUTES, ids=lambda v: repr(v)[:30])
def test_poison_attributes_change_nothing(meter: Any, bad: Any) -> None:
    m, reader, store = meter
    with pytest.raises((TypeError, ValueError)):
        m.record(0.5, bad)
    assert_unchanged(m, reader, store)


def test_max_call_usd_is_configurable(store: PatchStore, clock: FakeClock) -> None:
    config = BudgetConfig(daily_cap_usd=10, max_call_usd=5, collect_interval_s=3600)
    with BudgetMeter(config, store=store, clock=clock) as m:
        with pytest.raises(ValueError, match="max_call_usd"):
            m.record(5.01)
        m.record(5.0)
        assert m.daily_spend() == 5.0


@pytest.mark.parametrize("bad_id", ["nul\x00id", "lone\udc80", "x" * 201, ""])
def test_instance_ids_that_no_store_can_hold_are_refused(bad_id: str) -> None:
    with pytest.raises(ConfigError, match="instance_id"):
        BudgetConfig(daily_cap_usd=1, instance_id=bad_id)


def test_too_long_instance_id_from_resource_attributes_names_the_variable() -> None:
    env = {"OTEL_BUDGET_DAILY_CAP_USD": "1",
           "OTEL_RESOURCE_ATTRIBUTES": "service.instance.id=" + "x" * 300}
    with pytest.raises(ConfigError, match="OTEL_RESOURCE_ATTRIBUTES"):
        BudgetConfig.from_env(env)


def test_collect_interval_from_the_environment_has_a_floor() -> None:
    with pytest.raises(ConfigError, match="OTEL_BUDGET_COLLECT_INTERVAL_S"):
        BudgetConfig.from_env({"OTEL_BUDGET_DAILY_CAP_USD": "1",
                               "OTEL_BUDGET_COLLECT_INTERVAL_S": "1e-9"})
    assert BudgetConfig(daily_cap_usd=1, collect_interval_s=0.05).collect_interval_s == 0.05


HAND_EDITS: list[Any] = [
    {"instances": {"x": {"spend_usd": "lots", "seq": 1}}},
    {"instances": {"x": {"spend_usd": 1.0, "seq": 1, "by_attributes": [[["nested"]]]}}},
    {"instances": ["not", "an", "object"]},
]


@pytest.mark.parametrize("content", HAND_EDITS, ids=["string-amount", "nested-list", "list"])
def test_hand_edited_legacy_rows_are_a_checkpoint_error_naming_the_row(
        store: PatchStore, clock: FakeClock, content: Any) -> None:
    assert store.insert_if_absent("budget", "budget_2026-11-25", content)
    day = read_day(store, "2026-11-25")
    assert day["quarantined"] == ["budget_2026-11-25"] and day["total_usd"] == 0.0
    config = BudgetConfig(daily_cap_usd=10, collect_interval_s=3600)
    meter = BudgetMeter(config, store=store, clock=clock)
    with pytest.raises(CheckpointError, match="budget_2026-11-25"):
        meter.start(strict=True)
    meter.shutdown()
    # By default (a server keeps going): degraded, naming the row, counting and
    # checkpointing.
    meter = BudgetMeter(config, store=store, clock=clock).start()
    meter.record(1.0)
    health = meter.health()
    assert health["status"] == "degraded"
    assert health["quarantined_rows"] == ["budget_2026-11-25"]
    assert any("budget_2026-11-25" in reason for reason in health["reasons"])
    assert meter.checkpoint() is True
    meter.shutdown()


def test_status_on_a_hand_edited_row_is_one_line(tmp_path: Path) -> None:
    from otel_budget.stores.sqlite import SQLiteStore

    with SQLiteStore(tmp_path / "b.db") as store:
        store.insert_if_absent("budget", "budget_2026-11-25",
                               {"instances": {"x": {"spend_usd": 1.0, "seq": 1,
                                                    "by_attributes": [[["nested"]]]}}})
    done = subprocess.run(
        [sys.executable, "-m", "otel_budget.cli", "status", "--store",
         f"sqlite:///{tmp_path}/b.db", "--date", "2026-11-25", "--json"],
        capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    assert json.loads(done.stdout)["quarantined"] == ["budget_2026-11-25"]
    text = subprocess.run(
        [sys.executable, "-m", "otel_budget.cli", "status", "--store",
         f"sqlite:///{tmp_path}/b.db", "--date", "2026-11-25"],
        capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert text.returncode == 0 and "Traceback" not in text.stderr, text.stderr
    assert "quarantined (malformed, not counted): budget_2026-11-25" in text.stdout
