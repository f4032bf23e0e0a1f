"""Replicas on one PostgreSQL (directly, through the Supabase gateway double, and
through PgBouncer in transaction mode): separate processes, each its own writer
with its own store and connections.

- 8 processes x 200 checkpoints straight through `merge_writer`;
- 16 writer processes through `BudgetMeter` (checkpoint every collection, 50 ms),
  some killed with SIGKILL at random moments: the stored total is never above what
  was recorded and never below it by more than the killed writers' unflushed tails;
- the once-only nudge under a race of processes.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import random
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

import otel_budget
from otel_budget import BudgetConfig, BudgetMeter
from otel_budget.stores.base import PatchStore, open_store
from otel_budget.stores.layout import NUDGE_TYPE
from otel_budget.stores.postgres import PostgresStore
from tests.support.apps.procs import PYTHON, ROOT, child_env, ensure_stopped
from tests.support.supabase_gateway import SupabaseGateway

pytestmark = pytest.mark.slow

DAY = "2026-11-25"
# fork: each child opens its own store after the fork (the stores are fork-aware), and
# the children skip re-importing everything (this machine has 2 cores).
FORK = multiprocessing.get_context("fork")


def _open(target: tuple[str, str, str]) -> PatchStore:
    kind, url, key = target
    if kind == "supabase":
        from otel_budget.stores.supabase import SupabaseStore

        return SupabaseStore(url=url, key=key)
    return PostgresStore(url, min_size=1, max_size=1)


def _read_day(target: tuple[str, str, str], day: str = DAY) -> tuple[dict[str, Any],
                                                                    list[dict[str, Any]]]:
    store = _open(target)
    try:
        return otel_budget.read_day(store, day), store.writer_entries([day])
    finally:
        store.close()


def _checkpointing_replica(
    target: tuple[str, str, str], index: int, checkpoints: int, barrier: Any
) -> int:
    """Checkpoint a growing cumulative spend `checkpoints` times as writer `r{index}`;
    return the final value in nano-USD."""
    store = _open(target)
    rng = random.Random(1000 + index)
    nanos = 0
    try:
        barrier.wait(timeout=60)  # start together, so the writes really interleave
        for seq in range(1, checkpoints + 1):
            nanos += rng.randrange(0, 50_000_000)
            usd = nanos / 1e9
            entry = {"date": DAY, "writer_id": f"r{index}", "instance_id": f"replica-{index}",
                     "spend_usd": usd, "seq": seq, "updated_at": f"2026-11-25T10:00:{seq % 60:02d}",
                     "by_attributes": [{"attributes": {"replica": index}, "spend_usd": usd}],
                     "by_budget": {"daily": usd}}
            result = store.merge_writer(entry)
            assert result["applied"] and result["stored_seq"] == seq
        return nanos
    finally:
        store.close()


def _run_replicas(target: tuple[str, str, str], replicas: int, checkpoints: int) -> list[int]:
    with FORK.Manager() as manager:
        barrier = manager.Barrier(replicas)
        with FORK.Pool(replicas) as pool:
            return pool.starmap(
                _checkpointing_replica,
                [(target, i, checkpoints, barrier) for i in range(replicas)],
            )


def _assert_exact(target: tuple[str, str, str], finals: list[int], checkpoints: int) -> None:
    day, entries = _read_day(target)
    assert set(day["instances"]) == {f"replica-{i}" for i in range(len(finals))}
    for i, final in enumerate(finals):
        row = day["instances"][f"replica-{i}"]
        assert row["writers"] == 1 and round(row["spend_usd"] * 1e9) == final
    assert abs(day["total_usd"] - sum(finals) / 1e9) <= 1e-9
    assert {e["seq"] for e in entries} == {checkpoints}


def _replicas_lose_nothing(url: str, replicas: int = 8, checkpoints: int = 200) -> None:
    target = ("postgresql", url, "")
    finals = _run_replicas(target, replicas=replicas, checkpoints=checkpoints)
    _assert_exact(target, finals, checkpoints)


def test_eight_processes_times_200_checkpoints_lose_nothing(pg_clean: str) -> None:
    _replicas_lose_nothing(pg_clean)


def test_eight_processes_through_pgbouncer_transaction_mode_lose_nothing(
    pgbouncer_url: str,
) -> None:
    """The same, every connection through PgBouncer with pool_mode = transaction (no
    session state survives between transactions; the `pgbouncer_url` fixture lives
    in tests/support/pgbouncer_server.py)."""
    _replicas_lose_nothing(pgbouncer_url, checkpoints=100)


def test_replicas_through_the_supabase_gateway_lose_nothing(
    supabase_gateway: SupabaseGateway, pg_clean: str
) -> None:
    target = ("supabase", supabase_gateway.url, supabase_gateway.service_key)
    finals = _run_replicas(target, replicas=4, checkpoints=40)
    _assert_exact(target, finals, 40)


# --- 16 meters, some killed ---------------------------------------------------------

WRITERS = 16
KILLED = 6
RUN_S = 3.0


def _parse_log(path: Path) -> dict[str, Any]:
    lines = [line for line in path.read_text().splitlines() if line]
    assert lines, f"{path.name} is empty: the writer never recorded"
    if lines[-1].startswith("done,"):
        return {"done": True, "recorded": int(lines[-1].split(",")[1]), "calls": len(lines) - 1}
    recorded, checkpointed = (int(x) for x in lines[-1].split(","))
    return {"done": False, "recorded": recorded, "checkpointed": checkpointed,
            "calls": len(lines)}


def test_sixteen_meters_killed_at_random_lose_at_most_their_unflushed_tails(
    pg_clean: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    rng = random.Random()
    seed = rng.randrange(1 << 30)
    rng.seed(seed)
    proc = subprocess.Popen(
        [PYTHON, str(ROOT / "tests" / "support" / "apps" / "pg_writers.py"), pg_clean,
         str(tmp_path), str(WRITERS), str(RUN_S)],
        cwd=ROOT, env=child_env(), stdout=subprocess.PIPE, text=True, start_new_session=True,
    )
    request.addfinalizer(lambda: ensure_stopped(proc, grace_s=10, group=True))
    assert proc.stdout is not None
    pids: list[int] = json.loads(proc.stdout.readline())["pids"]
    assert len(pids) == WRITERS
    logs = [tmp_path / f"w{i}.log" for i in range(WRITERS)]
    deadline = time.monotonic() + 60
    while not all(p.exists() and p.stat().st_size for p in logs):  # every writer recording
        assert time.monotonic() < deadline and proc.poll() is None, "writers did not start"
        time.sleep(0.02)
    victims = sorted(rng.sample(range(WRITERS), KILLED))
    moments = sorted((rng.uniform(0.1, RUN_S - 0.3), i) for i in victims)
    began = time.monotonic()
    for moment, index in moments:
        time.sleep(max(0.0, began + moment - time.monotonic()))
        # A writer may have finished its run already: then it is simply not killed
        # (its log ends in "done" and it is checked as a survivor).
        with contextlib.suppress(ProcessLookupError):
            os.kill(pids[index], signal.SIGKILL)
    assert proc.wait(timeout=60) == 0, "a surviving writer failed (see its traceback above)"

    parsed = [_parse_log(p) for p in logs]
    day_name = time.strftime("%Y-%m-%d", time.gmtime())
    store = PostgresStore(pg_clean)
    try:
        day = otel_budget.read_day(store, day_name)
        stored = {e["instance_id"]: round(e["spend_usd"] * 1e9)
                  for e in store.writer_entries([day_name])}
    finally:
        store.close()

    context = f"seed={seed} victims={victims}"
    tails = []
    for i, info in enumerate(parsed):
        got = stored.get(f"w{i}", 0)
        if i in victims and not info["done"]:
            assert info["checkpointed"] <= got <= info["recorded"], (i, info, got, context)
            tails.append(info["recorded"] - got)
        else:
            assert info["done"], (i, info, context)
            assert got == info["recorded"], (i, info, got, context)
    recorded = sum(info["recorded"] for info in parsed)
    stored_total = round(day["total_usd"] * 1e9)
    allowed = sum(info["recorded"] - info["checkpointed"]
                  for i, info in enumerate(parsed) if not info["done"])
    assert stored_total <= recorded, context
    assert recorded - stored_total <= allowed, (recorded, stored_total, allowed, context)
    assert sum(stored.values()) == stored_total
    assert sum(p["calls"] for p in parsed) > WRITERS * 50, "too few calls to mean anything"
    print(f"16 writers, {len(victims)} killed ({context}): recorded ${recorded / 1e9:.6f}, "
          f"stored ${stored_total / 1e9:.6f}, lost tails (USD) "
          f"{[round(t / 1e9, 6) for t in tails]}, allowed ${allowed / 1e9:.6f}")


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
    with FORK.Manager() as manager:
        barrier = manager.Barrier(8)
        with FORK.Pool(8) as pool:
            # Half the replicas claim through PostgreSQL, half through the gateway.
            results = pool.starmap(
                _claiming_replica, [(targets[i % 2], i, barrier) for i in range(8)]
            )
    assert results.count(True) == 1
    assert _count_rows(pg_clean, NUDGE_TYPE) == 1


def _meter_replica(url: str, index: int, barrier: Any, deliveries: Any,
                   spool_dir: str) -> dict[str, Any]:
    """One dispatcher replica. Each starts knowing the day's 6.0 already spent, adds
    2.0 of its own, and all collect at the same moment: each sees 8.0 = 80% of 10.0
    at once, and all race to claim the nudge."""
    delivered: list[dict[str, Any]] = []

    def notifier(nudge: dict[str, Any]) -> None:
        delivered.append(nudge)
        deliveries.put((index, nudge))

    config = BudgetConfig(daily_cap_usd=10.0, instance_id=f"replica-{index}",
                          collect_interval_s=3600.0, checkpoint_every=1000, spool_dir=spool_dir)
    store = open_store(url)
    meter = BudgetMeter(config, store=store, notifiers=[notifier])
    try:
        meter.start()
        meter.record(2.0, {"agent": f"replica-{index}"})
        assert meter.daily_spend() == 8.0
        barrier.wait(timeout=60)
        meter.collect()
        meter.shutdown()  # delivers the nudge it won, if it won it
        health = meter.health()
        return {"delivered": len(delivered), "alerts_sent": health["alerts_sent"],
                "writer_id": meter.writer_id}
    finally:
        meter.shutdown()
        store.close()


def test_four_replicas_crossing_80_percent_together_nudge_once(pg_clean: str,
                                                               tmp_path: Path) -> None:
    today = time.strftime("%Y-%m-%d", time.gmtime())
    seed = PostgresStore(pg_clean)
    try:  # an earlier process of the fleet spent 6.0 today
        seed.merge_writer({"date": today, "writer_id": "earlier", "instance_id": "earlier-process",
                           "spend_usd": 6.0, "seq": 1, "updated_at": f"{today}T00:00:00+00:00",
                           "by_budget": {"daily": 6.0}})
    finally:
        seed.close()

    with FORK.Manager() as manager:
        barrier = manager.Barrier(4)
        deliveries = manager.Queue()
        with FORK.Pool(4) as pool:
            results = pool.starmap(
                _meter_replica,
                [(pg_clean, i, barrier, deliveries, str(tmp_path / "spool")) for i in range(4)],
            )
        assert sum(r["delivered"] for r in results) == 1, results
        winner, nudge = deliveries.get(timeout=5)
        assert deliveries.empty()
    assert all(r["alerts_sent"] == [0.8] for r in results), results
    assert nudge["instance_id"] == f"replica-{winner}"
    assert nudge["ratio"] == 0.8 and nudge["daily_spend_usd"] == 8.0
    assert _count_rows(pg_clean, NUDGE_TYPE) == 1
    day, entries = _read_day(("postgresql", pg_clean, ""), today)
    # The stored claim is the delivered nudge plus the moment its delivery was recorded.
    [stored] = day["nudges"]
    assert stored.pop("delivered_at") is not None and nudge.get("delivered_at") is None
    assert stored == {k: v for k, v in nudge.items() if k != "delivered_at"}
    assert day["total_usd"] == 14.0  # the final checkpoints at shutdown
    assert set(day["instances"]) == {"earlier-process"} | {f"replica-{i}" for i in range(4)}
    assert len({e["writer_id"] for e in entries}) == 5
