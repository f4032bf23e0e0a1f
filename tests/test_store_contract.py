"""The PatchStore contract, run against every store kind in tests/store_kinds.py."""

from __future__ import annotations

import math
import threading
from typing import Any

import pytest

from otel_budget import CheckpointError
from otel_budget.ledger import BUDGET_TYPE, NUDGE_TYPE
from tests.conftest import StoreFactory

META = {"date": "2026-11-25", "timezone": "UTC", "daily_cap_usd": 50.0,
        "updated_at": "2026-11-25T10:00:00+00:00"}
NAME = "budget_2026-11-25"


def entry(spend: float, seq: int, **extra: Any) -> dict[str, Any]:
    return {"spend_usd": spend, "seq": seq, "updated_at": "2026-11-25T10:00:00+00:00",
            "by_attributes": [{"attributes": {"agent": "cloud_lu"}, "spend_usd": spend}], **extra}


def test_get_absent_returns_none(store: Any) -> None:
    assert store.get(BUDGET_TYPE, "budget_1999-01-01") is None


def test_insert_if_absent_claims_once(store: Any) -> None:
    nudge = {"to": "ag_lu", "kind": "budget_alert", "ratio": 0.8}
    assert store.insert_if_absent(NUDGE_TYPE, "budget_alert_2026-11-25_80", nudge) is True
    assert store.insert_if_absent(NUDGE_TYPE, "budget_alert_2026-11-25_80", {"other": 1}) is False
    assert store.get(NUDGE_TYPE, "budget_alert_2026-11-25_80") == nudge


def test_merge_creates_document_with_day_meta(store: Any) -> None:
    doc = store.merge_budget(NAME, "host-a-1", entry(12.34, 1), day_meta=META)
    assert doc["total_usd"] == 12.34
    assert doc["date"] == "2026-11-25" and doc["timezone"] == "UTC"
    assert doc["daily_cap_usd"] == 50.0
    assert doc["instances"]["host-a-1"]["seq"] == 1
    assert doc["instances"]["host-a-1"]["by_attributes"][0]["attributes"] == {"agent": "cloud_lu"}
    assert store.get(BUDGET_TYPE, NAME) == doc


def test_newer_seq_replaces_older_is_ignored(store: Any) -> None:
    store.merge_budget(NAME, "a", entry(1.0, 5), day_meta=META)
    doc = store.merge_budget(NAME, "a", entry(0.5, 4), day_meta=META)
    assert doc["instances"]["a"]["spend_usd"] == 1.0 and doc["instances"]["a"]["seq"] == 5
    doc = store.merge_budget(NAME, "a", entry(9.0, 5), day_meta=META)
    assert doc["instances"]["a"]["spend_usd"] == 1.0, "an equal seq must not overwrite"
    doc = store.merge_budget(NAME, "a", entry(2.0, 6), day_meta=META)
    assert doc["instances"]["a"]["spend_usd"] == 2.0
    assert doc["total_usd"] == 2.0, "the total is recomputed, not accumulated"
    assert store.get(BUDGET_TYPE, NAME)["total_usd"] == 2.0


def test_instances_sum_exactly_without_float_noise(store: Any) -> None:
    store.merge_budget(NAME, "a", entry(0.1, 1), day_meta=META)
    doc = store.merge_budget(NAME, "b", entry(0.2, 1), day_meta=META)
    assert doc["total_usd"] == 0.3
    doc = store.merge_budget(NAME, "c", entry(0.363000000000000004, 1), day_meta=META)
    assert doc["total_usd"] == 0.663
    assert set(doc["instances"]) == {"a", "b", "c"}


@pytest.mark.parametrize("instance_id", [
    "it's", 'quote"d', "a.b.c", "$.instances", "x'); DROP TABLE quilt_patches; --", "ünïcødé",
])
def test_awkward_instance_ids_round_trip(store: Any, instance_id: str) -> None:
    store.merge_budget(NAME, "plain", entry(1.0, 1), day_meta=META)
    doc = store.merge_budget(NAME, instance_id, entry(2.0, 1), day_meta=META)
    assert doc["instances"][instance_id]["spend_usd"] == 2.0
    assert store.get(BUDGET_TYPE, NAME)["total_usd"] == 3.0


@pytest.mark.parametrize("bad", [
    {"spend_usd": -1.0, "seq": 1},
    {"spend_usd": math.nan, "seq": 1},
    {"spend_usd": math.inf, "seq": 1},
    {"spend_usd": "3", "seq": 1},
    {"spend_usd": 1.0, "seq": True},
    {"spend_usd": 1.0, "seq": -2},
    {"spend_usd": 1.0, "seq": 1, "by_attributes": "x"},
])
def test_malformed_entry_is_rejected_and_nothing_changes(store: Any, bad: dict[str, Any]) -> None:
    before = store.merge_budget(NAME, "a", entry(1.0, 1), day_meta=META)
    with pytest.raises(CheckpointError):
        store.merge_budget(NAME, "a", bad, day_meta=META)
    assert store.get(BUDGET_TYPE, NAME) == before


def test_concurrent_writers_lose_nothing(store_factory: StoreFactory) -> None:
    writers, rounds = 6, 40

    def write(index: int) -> None:
        handle = store_factory()
        for seq in range(1, rounds + 1):
            handle.merge_budget(NAME, f"w{index}", entry(seq * 0.01, seq), day_meta=META)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    doc = store_factory().get(BUDGET_TYPE, NAME)
    assert {k: v["seq"] for k, v in doc["instances"].items()} == {
        f"w{i}": rounds for i in range(writers)
    }
    assert doc["total_usd"] == round(writers * rounds * 0.01, 9)
