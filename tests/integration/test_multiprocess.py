"""Real processes on one SQLite file: several at once, one killed with SIGKILL, 300
restarts under one instance id; and a notifier that hangs forever, which must not
stall anything else."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import random
import signal
import sqlite3
import subprocess
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

import otel_budget
from otel_budget import BudgetConfig, BudgetMeter
from otel_budget.stores.sqlite import SQLiteStore
from tests.support.apps.procs import PYTHON, ROOT, child_env, ensure_stopped

pytestmark = pytest.mark.slow


def _today() -> str:
    return datetime.now(timezone.utc).date().isoformat()


def _read(url_or_path: str) -> dict[str, Any]:
    store = SQLiteStore(url_or_path)
    try:
        return otel_budget.read_day(store, _today())
    finally:
        store.close()


def _worker(db: str, instance_id: str, seed: int, calls: int, results: Any) -> None:
    rng = random.Random(seed)
    config = BudgetConfig(daily_cap_usd=1e6, instance_id=instance_id, checkpoint_every=3,
                          collect_interval_s=3600, store_url=f"sqlite:///{db}")
    nanos = 0
    with BudgetMeter(config) as meter:
        for _ in range(calls):
            amount = round(rng.uniform(0.0001, 0.05), 6)
            meter.record(amount, {"agent": instance_id})
            nanos += round(amount * 1e9)
            meter.collect()
        own = meter.health()["instance_spend_usd"]
    results.put((instance_id, nanos, own))


def test_four_processes_share_one_sqlite_file_losing_nothing(tmp_path: Path) -> None:
    db = str(tmp_path / "shared.db")
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(db, f"proc-{i}", i, 150, results))
             for i in range(4)]
    try:
        for p in procs:
            p.start()
        own = {}
        for _ in procs:
            instance_id, nanos, reported = results.get(timeout=120)
            assert reported == nanos / 1e9
            own[instance_id] = nanos
        for p in procs:
            p.join(timeout=60)
            assert p.exitcode == 0
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join(5)
    day = _read(db)
    assert {k: round(v["spend_usd"] * 1e9) for k, v in day["instances"].items()} == own
    assert all(v["writers"] == 1 for v in day["instances"].values())
    assert abs(day["total_usd"] - sum(own.values()) / 1e9) <= 1e-9


_VICTIM = r"""
import json, sys, time
from otel_budget import BudgetConfig, BudgetMeter
config = BudgetConfig(daily_cap_usd=1000, instance_id="victim", checkpoint_every=5,
                      collect_interval_s=3600, store_url=sys.argv[1], spool_dir=sys.argv[2])
meter = BudgetMeter(config).start()
for _ in range(23):
    meter.record(1.0, {"agent": "victim"})
    meter.collect()
print(json.dumps(meter.health()), flush=True)
time.sleep(60)
"""


def test_kill_9_loses_only_the_unflushed_tail(tmp_path: Path,
                                               request: pytest.FixtureRequest) -> None:
    url = f"sqlite:///{tmp_path / 'killed.db'}"
    spool = str(tmp_path / "spool")
    proc = subprocess.Popen([PYTHON, "-c", _VICTIM, url, spool], stdout=subprocess.PIPE,
                            text=True, cwd=ROOT, env=child_env())
    request.addfinalizer(lambda: ensure_stopped(proc))
    assert proc.stdout is not None
    line = proc.stdout.readline()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    health = json.loads(line)
    assert proc.returncode == -signal.SIGKILL
    assert health["daily_spend_usd"] == 23.0
    assert health["unflushed_usd"] == 3.0  # recorded after the 20th collection's checkpoint

    config = BudgetConfig(daily_cap_usd=1000, instance_id="victim", store_url=url,
                          spool_dir=spool, collect_interval_s=3600)
    with BudgetMeter(config) as restarted:
        assert restarted.writer_id != health["writer_id"]
        assert restarted.daily_spend() == 20.0, "only the 3 unflushed dollars were lost"
        restarted.record(1.0)
        assert restarted.checkpoint()
    day = _read(str(tmp_path / "killed.db"))
    assert day["total_usd"] == 21.0
    assert day["instances"]["victim"]["writers"] == 2


# --- restarts -----------------------------------------------------------------------

RESTARTS = 300


def _restart_amount(i: int) -> float:
    return 0.0105 * (i % 7 + 1)


def _fastest(call: Callable[[], object], times: int = 5) -> float:
    best = float("inf")
    for _ in range(times):
        began = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - began)
    return best


def test_300_restarts_under_one_instance_id(tmp_path: Path) -> None:
    """Each restart is a new writer (a new row for the day). The total stays exact,
    each start restores everything before it, and a checkpoint after 300 restarts
    costs at most 3x one after the first (plus 1 ms of timer noise): each shutdown
    retires its writer into the day's summary row, so a merge sums the summary and
    the writers still live, not the 300 finished ones. The day still counts every
    writer, and read_day still lists them."""
    store = SQLiteStore(tmp_path / "restarts.db")
    config = BudgetConfig(daily_cap_usd=1e6, instance_id="restarty", collect_interval_s=3600,
                          spool_dir=str(tmp_path / "spool"))
    expected_nanos = 0
    timings: dict[str, float] = {}
    writers: set[str] = set()
    try:
        for i in range(RESTARTS):
            meter = BudgetMeter(config, store=store).start()
            try:
                assert round(meter.daily_spend() * 1e9) == expected_nanos, i
                writers.add(meter.writer_id)
                meter.record(_restart_amount(i), {"restart": i % 5})
                expected_nanos += round(_restart_amount(i) * 1e9)
                if i in (0, RESTARTS - 1):
                    assert meter.checkpoint()
                    timings["first" if i == 0 else "last"] = _fastest(meter.checkpoint)
            finally:
                meter.shutdown()
        day = otel_budget.read_day(store, _today())
    finally:
        store.close()
    assert len(writers) == RESTARTS
    assert abs(day["total_usd"] - expected_nanos / 1e9) <= 1e-9
    assert day["instances"]["restarty"]["writers"] == RESTARTS
    print(f"checkpoint after the first restart {timings['first'] * 1e3:.2f} ms, "
          f"after the {RESTARTS}th {timings['last'] * 1e3:.2f} ms")
    assert timings["last"] <= 3 * timings["first"] + 0.001, timings
    # The finished writers really are retired (not merely fast to sum).
    with sqlite3.connect(tmp_path / "restarts.db") as conn:
        live, summary = conn.execute(
            "SELECT (SELECT count(*) FROM quilt_patches WHERE patch_type = 'budget_writer' "
            "AND json_extract(content, '$.retired') IS NULL), "
            "(SELECT json_extract(content, '$.writers') FROM quilt_patches "
            "WHERE patch_type = 'budget_summary')").fetchone()
    assert (live, summary) == (0, RESTARTS)


_RESTART_SCRIPT = r"""
import sys
from otel_budget import BudgetConfig, BudgetMeter
config = BudgetConfig(daily_cap_usd=1000, instance_id="restarty", store_url=sys.argv[1],
                      spool_dir=sys.argv[2], collect_interval_s=3600)
meter = BudgetMeter(config).start()
print(repr(meter.daily_spend()), flush=True)
meter.record(float(sys.argv[3]), {"restart": "process"})
# no shutdown(): the atexit hook writes the final entry at a normal exit
"""


def test_restarts_as_real_processes_exit_via_atexit(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'procs.db'}"
    spool = str(tmp_path / "spool")
    nanos = 0
    for i in range(5):
        amount = _restart_amount(i)
        out = subprocess.run([PYTHON, "-c", _RESTART_SCRIPT, url, spool, repr(amount)],
                             cwd=ROOT, env=child_env(), capture_output=True, text=True,
                             timeout=60, check=False)
        assert out.returncode == 0, out.stderr[-2000:]
        assert round(float(out.stdout.strip()) * 1e9) == nanos, (i, out.stdout)
        nanos += round(amount * 1e9)
    day = _read(str(tmp_path / "procs.db"))
    assert abs(day["total_usd"] - nanos / 1e9) <= 1e-9
    assert day["instances"]["restarty"]["writers"] == 5


# --- a notifier that never returns ----------------------------------------------------

def test_a_hung_notifier_stalls_nothing(tmp_path: Path) -> None:
    entered = threading.Event()
    never = threading.Event()

    def hangs(nudge: dict[str, Any]) -> None:
        entered.set()
        never.wait()  # forever (released at the very end only so the thread can go)

    store = SQLiteStore(tmp_path / "hang.db")
    config = BudgetConfig(daily_cap_usd=10.0, alert_ratios=(0.5,), instance_id="hung",
                          collect_interval_s=0.05, checkpoint_every=1,
                          spool_dir=str(tmp_path / "spool"))
    meter = BudgetMeter(config, store=store, notifiers=[hangs]).start()
    try:
        meter.record(6.0)
        meter.collect()
        assert entered.wait(5), "the nudge never reached the notifier"

        def timed(call: Callable[[], object]) -> float:
            began = time.monotonic()
            call()
            return time.monotonic() - began

        for _ in range(20):
            assert timed(lambda: meter.record(0.01)) < 1.0
            assert timed(meter.daily_spend) < 1.0
            assert timed(meter.health) < 1.0
            assert timed(meter.collect) < 1.0
        assert abs(meter.daily_spend() - 6.2) <= 1e-9
        health = meter.health()
        assert health["alerts_sent"] == [0.5] and health["collections"] >= 21
        assert health["pending_nudges"] == 1  # still not taken by the hung notifier
        began = time.monotonic()
        meter.shutdown(timeout=2)
        took = time.monotonic() - began
        assert took <= 2.5, took
    finally:
        meter.shutdown(timeout=1)
        never.set()
    try:
        day = otel_budget.read_day(store, _today())
    finally:
        store.close()
    assert abs(day["total_usd"] - 6.2) <= 1e-9
    assert [n["ratio"] for n in day["nudges"]] == [0.5]
