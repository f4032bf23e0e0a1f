"""The local spool: checkpoints the store did not take survive an outage, a midnight
and a shutdown, and the next meter on the host (same store, same spool_dir) replays
them, so both days' totals are exact once the store is back.

PostgreSQL is a private server stopped with `pg_ctl stop -m immediate` (a crash: no
shutdown checkpoint, clients cut); SQLite loses the directory holding its file.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from collections.abc import Iterator
from contextlib import closing
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any, NamedTuple

import pytest

import otel_budget
from otel_budget import BudgetConfig, BudgetMeter
from otel_budget.errors import StoreError
from otel_budget.spool import Spool
from otel_budget.stores.base import PatchStore
from otel_budget.stores.postgres import PostgresStore
from otel_budget.stores.sqlite import SQLiteStore
from tests.support.helpers import FakeClock
from tests.support.pg_server import PgServer

DAY1 = date(2026, 11, 25)
DAY2 = date(2026, 11, 26)


def _config(tmp_path: Path) -> BudgetConfig:
    return BudgetConfig(daily_cap_usd=1000.0, instance_id="spooly", checkpoint_every=1,
                        collect_interval_s=3600.0, spool_dir=str(tmp_path / "spool"))


def _spooled(meter: BudgetMeter) -> dict[str, Any]:
    spool: dict[str, Any] = meter.health()["spool"]
    return spool


def _pg_store(url: str) -> PostgresStore:
    return PostgresStore(url, pool_timeout_s=0.5, connect_timeout_s=1, reconnect_timeout_s=1.0)


def test_postgres_crash_across_midnight_and_shutdown_is_replayed(
    private_pg_server: PgServer, tmp_path: Path
) -> None:
    server = private_pg_server
    url = server.create_database("spool", migrate=True)
    # The fixture's cluster commits asynchronously (fast tests); a crash would then lose
    # the last ~600 ms of acknowledged commits, the migration included. Here a commit
    # must survive the crash, as on a production server.
    server.admin('alter database "spool" set synchronous_commit = on')
    server.admin("checkpoint")
    clock = FakeClock(datetime(2026, 11, 25, 23, 59, 0, tzinfo=timezone.utc))
    config = _config(tmp_path)
    stores: list[PatchStore] = []
    meters: list[BudgetMeter] = []

    def open_meter() -> BudgetMeter:
        store = _pg_store(url)
        stores.append(store)
        meter = BudgetMeter(config, store=store, clock=clock)
        meters.append(meter)
        return meter.start()

    try:
        first = open_meter()
        first.record(1.0, {"agent": "a"})
        assert first.checkpoint()
        assert first.health()["status"] == "ok"

        server.stop("immediate")
        first.record(2.0, {"agent": "a"})
        first.collect()  # the checkpoint fails: spooled
        health = first.health()
        assert health["last_checkpoint"]["ok"] is False
        assert health["last_checkpoint"]["spooled"] is True
        assert health["status"] == "degraded"
        assert _spooled(first)["entries"] == 1 and _spooled(first)["days"] == [DAY1.isoformat()]
        assert _spooled(first)["spend_usd"] == 3.0

        clock.set(datetime(2026, 11, 26, 0, 0, 30, tzinfo=timezone.utc))  # midnight, still down
        first.record(4.0, {"agent": "a"})
        first.collect()  # day 1's final entry and day 2's checkpoint: both spooled
        assert first.daily_spend() == 4.0
        spool = _spooled(first)
        assert spool["days"] == [DAY1.isoformat(), DAY2.isoformat()], spool
        assert spool["entries"] == 2 and spool["spend_usd"] == 7.0
        assert first.health()["status"] == "degraded"

        first.record(0.5, {"agent": "a"})
        first.shutdown(timeout=3)  # the store is down: the final entries stay spooled
        spool_dir = tmp_path / "spool"
        assert len(list(spool_dir.glob("*/*.json"))) == 2  # one directory per store
        # The process ends here, its store with it. In this one test process the
        # shutdown's round, still retrying past its deadline, would otherwise reach
        # the restarted server and take the spool before the next meter starts
        # (CI saw the next meter load the day first, then 0.0 instead of 4.5).
        stores[0].close()

        server.start()
        second = open_meter()  # a new process on this host, same store and spool_dir
        assert _spooled(second)["entries"] == 0, second.health()
        assert second.daily_spend() == 4.5, "the replayed entries count in the restored day"
        second.record(0.25, {"agent": "b"})
        assert second.checkpoint()
        assert second.health()["status"] == "ok", second.health()["reasons"]
        second.shutdown(timeout=5)
        reader = _pg_store(url)
        stores.append(reader)
        day1 = otel_budget.read_day(reader, DAY1)
        day2 = otel_budget.read_day(reader, DAY2)
    finally:
        for meter in meters:
            meter.shutdown(timeout=1)
        for store in stores:
            store.close()
    assert day1["total_usd"] == 3.0 and day1["instances"]["spooly"]["writers"] == 1
    assert day2["total_usd"] == 4.75 and day2["instances"]["spooly"]["writers"] == 2


def test_sqlite_directory_deleted_checkpoint_is_spooled_then_replayed(tmp_path: Path) -> None:
    folder = tmp_path / "db"
    folder.mkdir()
    path = folder / "budget.db"
    clock = FakeClock(datetime(2026, 11, 25, 12, 0, tzinfo=timezone.utc))
    config = _config(tmp_path)
    store = SQLiteStore(path)
    meter = BudgetMeter(config, store=store, clock=clock).start()
    try:
        meter.record(1.5, {"agent": "a"})
        assert meter.checkpoint()
        shutil.rmtree(folder)
        with pytest.raises(StoreError):
            store.merge_writer({"date": DAY1.isoformat(), "writer_id": "probe",
                                "instance_id": "probe", "spend_usd": 0.0, "seq": 1,
                                "updated_at": "x"})
        meter.record(2.25, {"agent": "a"})
        assert meter.checkpoint() is False
        health = meter.health()
        assert health["last_checkpoint"]["spooled"] is True and health["status"] == "degraded"
        assert health["spool"]["entries"] == 1 and health["spool"]["spend_usd"] == 3.75
        meter.shutdown(timeout=3)
    finally:
        meter.shutdown(timeout=1)
        store.close()

    folder.mkdir()  # the operator restores the directory; the old file is gone for good
    store = SQLiteStore(path)
    try:
        with BudgetMeter(config, store=store, clock=clock) as again:
            assert again.health()["spool"]["entries"] == 0
            assert again.daily_spend() == 3.75
        day = otel_budget.read_day(store, DAY1)
    finally:
        store.close()
    assert day["total_usd"] == 3.75  # the spooled entry is cumulative: nothing was lost


class SQLiteMeter(NamedTuple):
    path: Path
    store: SQLiteStore
    meter: BudgetMeter


@pytest.fixture
def sqlite_meter(tmp_path: Path) -> Iterator[SQLiteMeter]:
    path = tmp_path / "budget.db"
    clock = FakeClock(datetime(2026, 11, 25, 12, 0, tzinfo=timezone.utc))
    store = SQLiteStore(path)
    meter = BudgetMeter(_config(tmp_path), store=store, clock=clock).start()
    try:
        yield SQLiteMeter(path, store, meter)
    finally:
        meter.shutdown(timeout=2)
        store.close()


def _put_raw_writer_row(path: Path, name: str, content: dict[str, Any]) -> None:
    with closing(sqlite3.connect(path)) as conn, conn:
        conn.execute("INSERT OR REPLACE INTO quilt_patches (patch_type, name, content) "
                     "VALUES ('budget_writer', ?, ?)", (name, json.dumps(content)))


def test_another_writers_malformed_row_is_quarantined_and_our_entry_still_lands(
    sqlite_meter: SQLiteMeter,
) -> None:
    # A hand-edited row of another writer no longer blocks the day (issue 17.2): it is
    # left out and named, our well-formed entry is merged, nothing waits in the spool.
    path, store, meter = sqlite_meter
    bad_name = f"budget_{DAY1.isoformat()}/hand-edited"
    meter.record(1.0, {"agent": "a"})
    assert meter.checkpoint()
    _put_raw_writer_row(path, bad_name, {
        "date": DAY1.isoformat(), "writer_id": "hand-edited", "instance_id": "x",
        "spend_usd": "lots", "seq": 1, "updated_at": "x"})
    meter.record(0.5, {"agent": "a"})
    assert meter.checkpoint() is True
    assert _spooled(meter)["entries"] == 0
    health = meter.health()
    assert health["quarantined_rows"] == [bad_name] and health["status"] == "degraded"
    day = otel_budget.read_day(store, DAY1)
    assert day["total_usd"] == 1.5 and day["quarantined"] == [bad_name]


def test_a_malformed_spooled_entry_is_set_aside_and_the_others_replayed(
    sqlite_meter: SQLiteMeter, tmp_path: Path,
) -> None:
    # Another process on this host spooled both (with a valid integrity check); the
    # one no store would take is set aside, listed in health, never replayed.
    _, store, meter = sqlite_meter
    other = Spool(str(tmp_path / "spool"), store=SQLiteStore(tmp_path / "budget.db"))
    good = {"date": DAY1.isoformat(), "writer_id": "gone-writer", "instance_id": "old",
            "spend_usd": 2.0, "seq": 3, "updated_at": "x"}
    spool_dir = other.put(good).parent
    other.put({**good, "writer_id": "broken", "spend_usd": -5})
    meter.collect()
    assert [p.name for p in spool_dir.glob("*.bad")] == [
        f"broken_{DAY1.isoformat()}_000000000003.bad"]
    health = meter.health()
    assert health["spool"]["entries"] == 0
    assert [(Path(i["file"]).name, i["spend_usd"]) for i in health["spool"]["set_aside"]] == [
        (f"broken_{DAY1.isoformat()}_000000000003.bad", -5.0)]
    assert health["status"] == "degraded"
    assert otel_budget.read_day(store, DAY1)["total_usd"] == 2.0
