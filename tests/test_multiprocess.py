"""Several real processes on one SQLite file, and a process killed with SIGKILL."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from otel_budget import BudgetConfig, BudgetMeter
from otel_budget.ledger import BUDGET_TYPE, budget_name, day_of
from otel_budget.stores.sqlite import SQLiteStore

pytestmark = pytest.mark.slow


def _worker(db: str, instance_id: str, seed: int, calls: int, results: mp.Queue) -> None:
    rng = random.Random(seed)
    config = BudgetConfig(daily_cap_usd=1e6, instance_id=instance_id, checkpoint_every=3,
                          collect_interval_s=3600, store_url=f"sqlite:///{db}")
    total = 0.0
    with BudgetMeter(config) as meter:
        for _ in range(calls):
            amount = round(rng.uniform(0.0001, 0.05), 6)
            meter.record(amount, {"agent": instance_id})
            total += amount
            meter.collect()
        own = meter.health()["instance_spend_usd"]
    results.put((instance_id, round(total, 9), own))


def test_four_processes_share_one_sqlite_file_losing_nothing(tmp_path: Path) -> None:
    db = str(tmp_path / "shared.db")
    ctx = mp.get_context("spawn")
    results: mp.Queue = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(db, f"proc-{i}", i, 150, results))
             for i in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    own = {}
    for _ in procs:
        instance_id, total, reported = results.get(timeout=5)
        assert reported == total
        own[instance_id] = total
    store = SQLiteStore(db)
    from datetime import datetime, timezone
    from zoneinfo import ZoneInfo
    doc = store.get(BUDGET_TYPE, budget_name(day_of(datetime.now(timezone.utc), ZoneInfo("UTC"))))
    store.close()
    assert doc is not None
    assert {k: v["spend_usd"] for k, v in doc["instances"].items()} == own
    assert doc["total_usd"] == round(sum(own.values()), 9)


_VICTIM = r"""
import json, sys, time
from otel_budget import BudgetConfig, BudgetMeter
config = BudgetConfig(daily_cap_usd=1000, instance_id="victim", checkpoint_every=5,
                      collect_interval_s=3600, store_url=sys.argv[1])
meter = BudgetMeter(config).start()
for _ in range(23):
    meter.record(1.0, {"agent": "victim"})
    meter.collect()
print(json.dumps(meter.health()), flush=True)
time.sleep(60)
"""


def test_kill_9_loses_only_the_unflushed_tail(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'killed.db'}"
    proc = subprocess.Popen([sys.executable, "-c", _VICTIM, url], stdout=subprocess.PIPE,
                            text=True, cwd=tmp_path)
    try:
        assert proc.stdout is not None
        health = json.loads(proc.stdout.readline())
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    assert proc.returncode == -signal.SIGKILL
    assert health["daily_spend_usd"] == 23.0
    assert health["unflushed_usd"] == 3.0  # recorded after the 20th collection's checkpoint

    config = BudgetConfig(daily_cap_usd=1000, instance_id="victim", store_url=url)
    with BudgetMeter(config) as restarted:
        assert restarted.daily_spend() == 20.0, "only the 3 unflushed dollars were lost"
        assert restarted.health()["restore"]["continued_entry"] is True
        restarted.record(1.0)
        restarted.checkpoint()
        date_name = "budget_" + restarted.health()["date"]
        entry = restarted.store.get(BUDGET_TYPE, date_name)["instances"]["victim"]
        assert entry["spend_usd"] == 21.0 and entry["seq"] == 5
