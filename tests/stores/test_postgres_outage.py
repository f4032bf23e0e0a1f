"""PostgreSQL goes away for a few seconds while a meter records and checkpoints.

The server is a private one (`private_pg_server`), so no other test sees it down.
The meter's own timer thread collects and checkpoints throughout; the test thread
keeps recording. Health must say "degraded" (with the error, and no password)
during the outage and "ok" after (the spool drained), and the writer's stored row
(read with `read_day` and `writer_entries`) must hold every dollar.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import otel_budget
from otel_budget import BudgetConfig, BudgetMeter
from otel_budget.money import round_usd
from otel_budget.stores.postgres import PostgresStore
from tests.support.helpers import wait_for
from tests.support.pg_server import PgServer

PASSWORD = "s3cret-pw-never-shown"  # trust auth accepts it; it must never be echoed


def test_outage_degrades_health_then_recovers_without_losing_spend(
    private_pg_server: PgServer, tmp_path: Path,
) -> None:
    server = private_pg_server
    plain_url = server.create_database("outage", migrate=True)
    url = plain_url.replace("postgres@", f"postgres:{PASSWORD}@")
    store = PostgresStore(url, pool_timeout_s=0.5, connect_timeout_s=2, reconnect_timeout_s=2.0)
    config = BudgetConfig(daily_cap_usd=1000.0, instance_id="outage-1",
                          collect_interval_s=0.1, checkpoint_every=1,
                          spool_dir=str(tmp_path / "spool"))
    meter = BudgetMeter(config, store=store)
    recorded: list[float] = []
    stop = threading.Event()

    def dispatcher() -> None:  # keeps spending whatever the store is doing
        i = 0
        while not stop.is_set():
            cost = 0.001 + (i % 7) * 0.0003
            meter.record(cost, {"agent": "cloud_lu", "model": f"m{i % 3}"})
            recorded.append(cost)
            i += 1
            time.sleep(0.002)

    seen: list[dict[str, Any]] = []
    worker = threading.Thread(target=dispatcher)
    try:
        meter.start()
        worker.start()
        assert wait_for(lambda: _status(meter, seen) == "ok"
                          and (meter.health()["last_checkpoint"]["seq"] or 0) >= 2)

        server.stop()
        # Degraded as soon as a checkpoint is overdue (0.3 s here), and by the failure.
        assert wait_for(lambda: _status(meter, seen) == "degraded"
                          and meter.health()["last_checkpoint"]["ok"] is False, timeout=10)
        degraded = meter.health()
        error = degraded["last_checkpoint"]["error"]
        assert degraded["last_checkpoint"]["ok"] is False
        assert "PostgreSQL" in error and "budget_writer/" in error, error
        assert PASSWORD not in str(degraded) and PASSWORD not in repr(store)
        assert degraded["store_up"] is False
        time.sleep(2.0)  # a few seconds down, spending all the while
        assert _status(meter, seen) == "degraded"
        assert degraded["unflushed_usd"] > 0
        assert (meter.health()["spool"]["entries"] or 0) >= 1  # the failed checkpoints wait there

        server.start()
        assert wait_for(lambda: _status(meter, seen) == "ok", timeout=20)
        healthy = meter.health()
        assert healthy["last_checkpoint"]["ok"] is True and healthy["store_up"] is True
        assert healthy["spool"]["entries"] == 0
    finally:
        stop.set()
        if worker.is_alive():
            worker.join()
        meter.shutdown()  # the final checkpoint, with the server up again

    try:
        day = otel_budget.read_day(store, meter.day)
        entries = store.writer_entries([meter.day.isoformat()])
    finally:
        store.close()
    total = round_usd(sum(recorded))
    assert len(recorded) > 500
    assert day["total_usd"] == total
    assert day["instances"] == {"outage-1": {"spend_usd": total, "writers": 1,
                                             "updated_at": entries[0]["updated_at"]}}
    (entry,) = entries
    assert entry["writer_id"] == meter.writer_id and entry["spend_usd"] == total
    assert round_usd(sum(item["spend_usd"] for item in entry["by_attributes"])) == total
    assert {"degraded", "ok"} <= {h["status"] for h in seen}


def _status(meter: BudgetMeter, seen: list[dict[str, Any]]) -> str:
    health = meter.health()
    seen.append(health)
    status: str = health["status"]
    return status
