"""Replicas on one PostgreSQL (and through the Supabase gateway double): separate
processes, each with its own store and connections, writing into one day's row."""

from __future__ import annotations

import multiprocessing
import random
from typing import Any

import psycopg

from otel_budget import BudgetConfig, BudgetMeter
from otel_budget.ledger import BUDGET_TYPE, NUDGE_TYPE, round_usd
from otel_budget.stores.base import PatchStore, open_store
from otel_budget.stores.postgres import PostgresStore
from tests.supabase_gateway import SupabaseGateway

DAY = "budget_2026-11-25"
META = {"date": "2026-11-25", "timezone": "UTC", "daily_cap_usd": 1000.0}
SPAWN = multiprocessing.get_context("spawn")  # no inherited pools, sockets or threads


def _open(target: tuple[str, str, str]) -> PatchStore:
    kind, url, key = target
    if kind == "supabase":
        from otel_budget.stores.supabase import SupabaseStore

        return SupabaseStore(url=url, key=key)
    return PostgresStore(url, min_size=1, max_size=1)


def _read_day(target: tuple[str, str, str]) -> dict[str, Any]:
    store = _open(target)
    try:
        doc = store.get(BUDGET_TYPE, DAY)
    finally:
        store.close()
    assert doc is not None
    return doc


def _checkpointing_replica(
    target: tuple[str, str, str], index: int, checkpoints: int, barrier: Any
) -> float:
    """Checkpoint a growing cumulative spend `checkpoints` times; return the final
    value this replica holds for itself."""
    store = _open(target)
    rng = random.Random(1000 + index)
    cumulative = 0.0
    try:
        barrier.wait(timeout=60)  # start together, so the writes really interleave
        for seq in range(1, checkpoints + 1):
            cumulative += rng.uniform(0.0, 0.05)
            entry = {"spend_usd": cumulative, "seq": seq, "updated_at": f"t{seq}",
                     "by_attributes": [{"attributes": {"replica": index}, "spend_usd": cumulative}]}
            doc = store.merge_budget(DAY, f"replica-{index}", entry, day_meta=META)
            assert doc["instances"][f"replica-{index}"]["seq"] == seq
        return cumulative
    finally:
        store.close()


def _run_replicas(target: tuple[str, str, str], replicas: int, checkpoints: int) -> list[float]:
    with SPAWN.Manager() as manager:
        barrier = manager.Barrier(replicas)
        with SPAWN.Pool(replicas) as pool:
            return pool.starmap(
                _checkpointing_replica,
                [(target, i, checkpoints, barrier) for i in range(replicas)],
            )


def _assert_exact_total(doc: dict[str, Any], finals: list[float]) -> None:
    assert set(doc["instances"]) == {f"replica-{i}" for i in range(len(finals))}
    for i, final in enumerate(finals):
        assert doc["instances"][f"replica-{i}"]["spend_usd"] == round_usd(final)
    assert abs(doc["total_usd"] - sum(finals)) <= 1e-9
    assert doc["total_usd"] == round_usd(sum(round_usd(f) for f in finals))


def test_eight_processes_times_200_checkpoints_lose_nothing(pg_clean: str) -> None:
    target = ("postgresql", pg_clean, "")
    finals = _run_replicas(target, replicas=8, checkpoints=200)
    doc = _read_day(target)
    _assert_exact_total(doc, finals)
    assert {e["seq"] for e in doc["instances"].values()} == {200}


def test_replicas_through_the_supabase_gateway_lose_nothing(
    supabase_gateway: SupabaseGateway, pg_clean: str
) -> None:
    target = ("supabase", supabase_gateway.url, supabase_gateway.service_key)
    finals = _run_replicas(target, replicas=4, checkpoints=40)
    doc = _read_day(target)
    _assert_exact_total(doc, finals)


# --- the once-only nudge ------------------------------------------------------------

def _claiming_replica(target: tuple[str, str, str], index: int, barrier: Any) -> bool:
    store = _open(target)
    try:
        nudge = {"to": "ag_lu", "kind": "budget_alert", "instance_id": f"r{index}"}
        barrier.wait(timeout=60)
        return store.insert_if_absent(NUDGE_TYPE, "budget_alert_2026-11-25_80", nudge)
    finally:
        store.close()


def _count_rows(url: str, patch_type: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "select count(*) from public.quilt_patches where patch_type = %s", (patch_type,)
        ).fetchone()
    assert row is not None
    return int(row[0])


def test_claim_races_across_processes_have_one_winner(
    supabase_gateway: SupabaseGateway, pg_clean: str
) -> None:
    targets = [("postgresql", pg_clean, ""),
               ("supabase", supabase_gateway.url, supabase_gateway.service_key)]
    with SPAWN.Manager() as manager:
        barrier = manager.Barrier(8)
        with SPAWN.Pool(8) as pool:
            # Half the replicas claim through PostgreSQL, half through the gateway.
            results = pool.starmap(
                _claiming_replica, [(targets[i % 2], i, barrier) for i in range(8)]
            )
    assert results.count(True) == 1
    assert _count_rows(pg_clean, NUDGE_TYPE) == 1


def _meter_replica(url: str, index: int, barrier: Any, deliveries: Any) -> dict[str, Any]:
    """One dispatcher replica. Each starts knowing the day's 6.0 already spent, adds
    2.0 of its own, and all collect at the same moment: each sees 8.0 = 80% of 10.0
    at once, and all race to claim the nudge."""
    delivered: list[dict[str, Any]] = []

    def notifier(nudge: dict[str, Any]) -> None:
        delivered.append(nudge)
        deliveries.put((index, nudge))

    config = BudgetConfig(daily_cap_usd=10.0, instance_id=f"replica-{index}",
                          collect_interval_s=3600.0, checkpoint_every=1000)
    store = open_store(url)
    meter = BudgetMeter(config, store=store, notifiers=[notifier])
    try:
        meter.start()
        meter.record(2.0, {"agent": f"replica-{index}"})
        assert meter.daily_spend() == 8.0
        barrier.wait(timeout=60)
        meter.collect()
        health = meter.health()
        return {"delivered": len(delivered), "alerts_sent": health["alerts_sent"],
                "status": health["status"]}
    finally:
        meter.shutdown()
        store.close()


def test_four_replicas_crossing_80_percent_together_nudge_once(pg_clean: str) -> None:
    today = BudgetMeter(BudgetConfig(daily_cap_usd=10.0), store=open_store("memory://"))
    day = today.reader.day.isoformat()
    today.shutdown()
    seed = PostgresStore(pg_clean)
    try:  # an earlier process of the fleet spent 6.0 today
        seed.merge_budget(f"budget_{day}", "earlier-process", {"spend_usd": 6.0, "seq": 1},
                          day_meta={"date": day, "timezone": "UTC", "daily_cap_usd": 10.0})
    finally:
        seed.close()

    with SPAWN.Manager() as manager:
        barrier = manager.Barrier(4)
        deliveries = manager.Queue()
        with SPAWN.Pool(4) as pool:
            results = pool.starmap(
                _meter_replica, [(pg_clean, i, barrier, deliveries) for i in range(4)]
            )
        assert sum(r["delivered"] for r in results) == 1, results
        winner, nudge = deliveries.get(timeout=5)
        assert deliveries.empty()
    assert all(r["alerts_sent"] == [0.8] and r["status"] == "ok" for r in results), results
    assert nudge["instance_id"] == f"replica-{winner}"
    assert nudge["ratio"] == 0.8 and nudge["daily_spend_usd"] == 8.0
    assert _count_rows(pg_clean, NUDGE_TYPE) == 1
    store = PostgresStore(pg_clean)
    try:
        assert store.get(NUDGE_TYPE, f"budget_alert_{nudge['date']}_80") == nudge
        doc = store.get(BUDGET_TYPE, f"budget_{nudge['date']}")
    finally:
        store.close()
    assert doc is not None and doc["total_usd"] == 14.0  # the final checkpoints at shutdown
