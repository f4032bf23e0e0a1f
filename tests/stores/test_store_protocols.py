"""A third-party store that implements only `BudgetStore` (the required protocol of
otel_budget.stores.base): everything the optional protocols add is done without it,
and a fleet budget, which needs leases, is refused with a clear error."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Self

import pytest

from otel_budget import Budget, BudgetConfig, BudgetMeter, ConfigError
from otel_budget.perkey import read_key_sums
from otel_budget.spool import Spool, store_locator
from otel_budget.stores.base import (
    BudgetEntriesStore,
    BudgetStore,
    ClaimStore,
    IdentifiedStore,
    LeaseStore,
    ReapingStore,
    SummingStore,
)
from otel_budget.stores.entries import DayTotals, MergeResult
from otel_budget.stores.layout import KEY_FIELD, WRITER_TYPE, writer_row_name
from otel_budget.stores.memory import MemoryStore
from otel_budget.stores.shares import CLOSED_DAY_WRITER, incomplete_day_entries


class CoreOnlyStore:
    """A named test double: a store written against the required protocol only
    (every call goes to a real MemoryStore; counted, to see which ones are made)."""

    def __init__(self) -> None:
        self.inner = MemoryStore()
        self.calls: list[str] = []

    def get(self, patch_type: str, name: str) -> dict[str, Any] | None:
        self.calls.append("get")
        return self.inner.get(patch_type, name)

    def merge_writer(self, entry: dict[str, Any]) -> MergeResult:
        self.calls.append("merge_writer")
        return self.inner.merge_writer(entry)

    def retire_writer(self, entry: dict[str, Any]) -> MergeResult:
        self.calls.append("retire_writer")
        return self.inner.retire_writer(entry)

    def day_totals(self, days: Sequence[str]) -> dict[str, DayTotals]:
        self.calls.append("day_totals")
        return self.inner.day_totals(days)

    def writer_entries(self, days: Sequence[str], *,
                       breakdown: bool = True) -> list[dict[str, Any]]:
        self.calls.append("writer_entries")
        return self.inner.writer_entries(days, breakdown=breakdown)

    def nudges_on(self, day: str) -> list[dict[str, Any]]:
        return self.inner.nudges_on(day)

    def insert_if_absent(self, patch_type: str, name: str, content: dict[str, Any]) -> bool:
        return self.inner.insert_if_absent(patch_type, name, content)

    def close(self) -> None:
        self.inner.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def test_a_core_only_store_is_a_budget_store_and_nothing_more() -> None:
    store = CoreOnlyStore()
    assert isinstance(store, BudgetStore)
    for optional in (ClaimStore, LeaseStore, IdentifiedStore, ReapingStore, SummingStore,
                     BudgetEntriesStore):
        assert not isinstance(store, optional), optional.__name__


def test_a_core_only_store_checkpoints_retires_and_keeps_its_own_spool(tmp_path: Path) -> None:
    store = CoreOnlyStore()
    config = BudgetConfig(budgets=[Budget("daily", 10.0, hard=True, enforce="process")],
                          collect_interval_s=3600, instance_id="a",
                          spool_dir=str(tmp_path / "spool"))
    meter = BudgetMeter(config, store=store).start()
    meter.record(1.5)
    assert meter.checkpoint()
    writer = meter.health()["writer_id"]
    day = meter.health()["date"]
    meter.shutdown(timeout=5)
    row = store.inner.get(WRITER_TYPE, writer_row_name(day, writer))
    assert row is not None and row["spend_usd"] == pytest.approx(1.5)
    assert row.get("retired") is True, "the final entry retires the row"
    assert "retire_writer" in store.calls
    # No identity: the spool is keyed by the object, as for a memory store.
    assert store_locator(store) == f"CoreOnlyStore:{id(store)}"
    assert Spool(str(tmp_path / "spool"), store=store).put(
        {**row, "seq": row["seq"] + 1}).exists()


def test_a_fleet_budget_needs_a_lease_store() -> None:
    config = BudgetConfig(budgets=[Budget("fleet", 1.0, hard=True, enforce="fleet")],
                          collect_interval_s=3600)
    with pytest.raises(ConfigError, match=r"needs a store that grants leases.*CoreOnlyStore"):
        BudgetMeter(config, store=CoreOnlyStore())


def test_sums_fall_back_to_the_entries_of_a_core_only_store() -> None:
    store = CoreOnlyStore()
    day, closed = "2026-11-25", "2026-11-24"
    for writer, when, keys in (("w1", day, {"k": 1.0}), ("w2", day, {"k": 0.5, "j": 2.0}),
                               ("w3", closed, {"k": 4.0})):
        store.merge_writer({
            "date": when, "writer_id": writer, "instance_id": "i", "timezone": "UTC",
            "spend_usd": sum(keys.values()), "seq": 1, "updated_at": f"{when}T01:00:00+00:00",
            "by_attributes": [], "by_budget": {"b": sum(keys.values())},
            KEY_FIELD: {"b": keys}})
    store.calls.clear()
    sums, bad = read_key_sums(store, [day], ["b"], "w1")
    assert (sums, bad) == ({"b": {"k": 0.5, "j": 2.0}}, [])
    assert sums == store.inner.key_sums([day], ["b"], exclude_writer="w1")[0]
    assert store.calls == ["writer_entries"]
    totals = store.day_totals([closed, day])
    entries = incomplete_day_entries(store, [closed, day], totals, [Budget("b", 10.0)],
                                     today=day)
    assert CLOSED_DAY_WRITER not in {e["writer_id"] for e in entries}, "no sums in the store"
    assert sorted(e["writer_id"] for e in entries) == ["w1", "w2", "w3"]


def test_no_module_probes_a_store_for_a_method() -> None:
    """What a store can do is asked with isinstance against the protocols of
    stores/base.py, never with getattr/hasattr on the store."""
    import ast

    import otel_budget

    root = Path(otel_budget.__file__).parent
    probes = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                    and node.func.id in ("getattr", "hasattr") and node.args
                    and "store" in ast.unparse(node.args[0]).lower()):
                probes.append(f"{path.relative_to(root)}:{node.lineno}: {ast.unparse(node)}")
    assert probes == []
    sample = ast.parse('getattr(self._store, "replace_claim", None)').body[0]
    assert isinstance(sample, ast.Expr) and isinstance(sample.value, ast.Call)
    assert "store" in ast.unparse(sample.value.args[0]), "the check above would see it"
