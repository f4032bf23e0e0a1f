"""multiprocessing with the `fork` start method and a started meter.

The parent records $1.00, then forks 4 children that use the very same (inherited)
meter object. Each child must be a new writer that counts only what it records
after the fork and runs its own collection timer; the parent's $1.00 must be
stored once, by the parent.
"""

from __future__ import annotations

import multiprocessing as mp
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.metrics import Observation

import otel_budget
from otel_budget import BudgetConfig, BudgetMeter
from otel_budget.stores.sqlite import SQLiteStore

pytestmark = pytest.mark.slow

CHILDREN = 4
FORK = mp.get_context("fork")
_meter: BudgetMeter | None = None  # the parent's meter, inherited by the children


def _child_amounts(index: int) -> list[float]:
    return [0.0105 * (index + 1)] * (3 + index) + [0.333333333]


def _child(index: int, results: Any) -> None:
    meter = _meter
    assert meter is not None
    try:
        start_health = meter.health()
        for usd in _child_amounts(index):
            meter.record(usd, {"child": index})
        # Its own timer (interval 0.05 s) collects with no call from here.
        deadline = time.monotonic() + 10
        while meter.health()["collections"] < 4 and time.monotonic() < deadline:
            time.sleep(0.02)
        health = meter.health()
        results.put({
            "index": index, "writer_id": meter.writer_id,
            "start_collections": start_health["collections"],
            "collections": health["collections"], "timer_running": health["timer_running"],
            "instance_spend_usd": health["instance_spend_usd"],
        })
        meter.shutdown(timeout=10)
    except BaseException as exc:  # report, so the parent fails with the reason
        results.put({"index": index, "error": repr(exc)})
        raise


def test_forked_children_are_writers_of_their_own(tmp_path: Path) -> None:
    global _meter
    store = SQLiteStore(tmp_path / "budget.db")
    config = BudgetConfig(daily_cap_usd=1000.0, instance_id="forky", collect_interval_s=0.05,
                          checkpoint_every=2, spool_dir=str(tmp_path / "spool"))
    meter = BudgetMeter(config, store=store).start()
    _meter = meter
    processes: list[Any] = []
    try:
        meter.record(1.0, {"who": "parent"})
        parent_writer = meter.writer_id
        results = FORK.Queue()
        processes = [FORK.Process(target=_child, args=(i, results)) for i in range(CHILDREN)]
        for process in processes:
            process.start()
        reports = [results.get(timeout=30) for _ in processes]
        for process in processes:
            process.join(timeout=30)
            assert process.exitcode == 0, reports
        meter.record(0.25, {"who": "parent"})
        assert meter.health()["instance_spend_usd"] == 1.25  # the children's spend is theirs
        meter.shutdown(timeout=10)
    finally:
        _meter = None
        for process in processes:
            if process.is_alive():
                process.kill()
                process.join(5)
        meter.shutdown(timeout=2)

    assert all("error" not in r for r in reports), reports
    by_index = {r["index"]: r for r in reports}
    writers = {r["writer_id"] for r in reports}
    assert len(writers) == CHILDREN and parent_writer not in writers
    for index, report in by_index.items():
        assert report["timer_running"] is True, report
        assert report["start_collections"] == 0 and report["collections"] >= 4, report
        expected = round(sum(round(a * 1e9) for a in _child_amounts(index)) / 1e9, 9)
        assert report["instance_spend_usd"] == expected, report

    today = datetime.now(timezone.utc).date()
    try:
        day = otel_budget.read_day(store, today)
        entries = {e["writer_id"]: e for e in store.writer_entries([today.isoformat()])}
    finally:
        store.close()
    children_nanos = sum(round(a * 1e9) for i in range(CHILDREN) for a in _child_amounts(i))
    assert abs(day["total_usd"] - (1.25 + children_nanos / 1e9)) <= 1e-9, day
    assert day["instances"]["forky"]["writers"] == CHILDREN + 1
    assert entries[parent_writer]["spend_usd"] == 1.25  # the pre-fork 1.0 once, here
    for report in reports:
        assert entries[report["writer_id"]]["spend_usd"] == report["instance_spend_usd"]


_slow_meter: BudgetMeter | None = None


def _child_after_slow_collection(results: Any) -> None:
    meter = _slow_meter
    assert meter is not None
    before = meter.health()["collections"]
    deadline = time.monotonic() + 10
    while meter.health()["collections"] < before + 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    results.put(meter.health()["collections"] - before)
    meter.shutdown(timeout=5)


def test_a_fork_during_the_sdks_collection_leaves_the_child_collecting(tmp_path: Path) -> None:
    """The timer is inside the SDK's collection (a slow callback on the same provider)
    when the process forks: the child must not inherit the SDK's locks held."""
    global _slow_meter
    inside = threading.Event()

    def slow(options: Any) -> list[Observation]:
        if threading.current_thread().name == "OtelBudgetReader":
            inside.set()
            time.sleep(0.3)
        return [Observation(1.0)]

    config = BudgetConfig(daily_cap_usd=1000.0, collect_interval_s=0.05,
                          spool_dir=str(tmp_path / "spool"))
    with SQLiteStore(tmp_path / "budget.db") as store:
        meter = BudgetMeter(config, store=store).start()
        meter.meter_provider.get_meter("slow").create_observable_gauge(
            "slow.gauge", callbacks=[slow])
        _slow_meter = meter
        try:
            assert inside.wait(10)
            inside.clear()
            assert inside.wait(10)  # the timer is in the slow callback right now
            results = FORK.Queue()
            child = FORK.Process(target=_child_after_slow_collection, args=(results,))
            child.start()
            try:
                grown = results.get(timeout=30)
                child.join(timeout=30)
            finally:
                if child.is_alive():
                    child.kill()
                    child.join(5)
            assert grown >= 2, "the child's timer collected after the fork"
        finally:
            _slow_meter = None
            meter.shutdown(timeout=5)
