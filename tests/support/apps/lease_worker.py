"""One writer of the fleet-cap test: reserves $0.01-0.05 calls against a fleet budget
until the fleet refuses it for `stop_after_s` in a row, logging each call's actual
cost BEFORE settling it (what the provider billed, even if killed right after).

argv: store_url cap_usd ttl_s seed log_path stop_after_s collect_interval_s
Prints its lease statistics as JSON on stdout at the end."""

from __future__ import annotations

import json
import random
import sys
import time

from otel_budget import Budget, BudgetConfig, BudgetMeter
from otel_budget.errors import BudgetExceeded
from otel_budget.stores.base import open_store


def main() -> None:
    url, cap, ttl, seed, log_path, stop_after, interval = sys.argv[1:8]
    rng = random.Random(int(seed))
    config = BudgetConfig(
        budgets=(Budget("fleet", float(cap), hard=True, enforce="fleet"),),
        collect_interval_s=float(interval), checkpoint_every=1, lease_ttl_s=float(ttl),
        instance_id=f"lease-worker-{seed}",
    )
    meter = BudgetMeter(config, store=open_store(url)).start()
    refused_since: float | None = None
    calls = 0
    with open(log_path, "a", buffering=1) as log:
        print(json.dumps({"started": True}), flush=True)
        while True:
            max_usd = round(rng.uniform(0.01, 0.05), 6)
            try:
                with meter.reserve(max_usd) as r:
                    time.sleep(rng.uniform(0.0, 0.002))  # the model call
                    actual = round(rng.uniform(0.0, max_usd), 6)
                    log.write(f"{actual}\n")
                    r.settle(actual)
                calls += 1
                refused_since = None
            except BudgetExceeded:
                now = time.monotonic()
                refused_since = refused_since or now
                if now - refused_since > float(stop_after):
                    break
                time.sleep(0.01)
    stats = meter.lease_stats()
    meter.shutdown()
    print(json.dumps({**stats, "calls": calls}), flush=True)


if __name__ == "__main__":
    main()
