"""PostgreSQL goes away for a few seconds while a meter records and checkpoints.

The server is a private one (`private_pg_server`), so no other test sees it down.
The meter's own timer thread collects and checkpoints throughout; the test thread
keeps recording. Health must say "degraded" (with the error, and no password)
during the outage and "ok" after, and the final document must hold every dollar.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from otel_budget import BudgetConfig, BudgetMeter
from otel_budget.ledger import BUDGET_TYPE, budget_name, round_usd
from otel_budget.stores.postgres import PostgresStore
from tests.pg_server import PgServer, wait_until

PASSWORD = "s3cret-pw-never-shown"  # trust auth accepts it; it must never be echoed


def test_outage_degrades_health_then_recovers_without_losing_spend(
    private_pg_server: PgServer,
) -> None:
    server = private_pg_server
    plain_url = server.create_database("outage", migrate=True)
    url = plain_url.replace("postgres@", f"postgres:{PASSWORD}@")
    store = PostgresStore(url, pool_timeout_s=0.5, connect_timeout_s=2, reconnect_timeout_s=2.0)
    config = BudgetConfig(daily_cap_usd=1000.0, instance_id="outage-1",
                          collect_interval_s=0.1, checkpoint_every=1)
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
        assert wait_until(lambda: _status(meter, seen) == "ok"
                          and (meter.health()["last_checkpoint"]["seq"] or 0) >= 2)

        server.stop()
        assert wait_until(lambda: _status(meter, seen) == "degraded", timeout_s=10)
        degraded = meter.health()
        error = degraded["last_checkpoint"]["error"]
        assert degraded["last_checkpoint"]["ok"] is False
        assert "PostgreSQL" in error and "budget/" in error, error
        assert PASSWORD not in str(degraded) and PASSWORD not in repr(store)
        assert degraded["store_up"] is False
        time.sleep(2.0)  # a few seconds down, spending all the while
        assert _status(meter, seen) == "degraded"
        assert degraded["unflushed_usd"] > 0

        server.start()
        assert wait_until(lambda: _status(meter, seen) == "ok", timeout_s=20)
        healthy = meter.health()
        assert healthy["last_checkpoint"]["ok"] is True and healthy["store_up"] is True
    finally:
        stop.set()
        if worker.is_alive():
            worker.join()
        meter.shutdown()  # the final checkpoint, with the server up again

    try:
        doc = store.get(BUDGET_TYPE, budget_name(meter.reader.day))
    finally:
        store.close()
    assert doc is not None
    total = round_usd(sum(recorded))
    assert len(recorded) > 500
    assert doc["instances"]["outage-1"]["spend_usd"] == total
    assert doc["total_usd"] == total
    by_attributes = doc["instances"]["outage-1"]["by_attributes"]
    assert round_usd(sum(item["spend_usd"] for item in by_attributes)) == total
    assert {"degraded", "ok"} <= {h["status"] for h in seen}


def _status(meter: BudgetMeter, seen: list[dict[str, Any]]) -> str:
    health = meter.health()
    seen.append(health)
    status: str = health["status"]
    return status
