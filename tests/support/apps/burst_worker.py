"""One writer of the first-refusal test: a fleet budget with the DEFAULT settings
(`Budget(hard=True)`, default intervals and lease lengths), reserving $0.01-0.05
calls and settling a random actual <= the maximum.

role "idle": stops reserving once it has spent `idle_after_usd` (the process, its
meter and its timer stay up, holding whatever lease it has) until `stop_file`
exists. role "busy": reserves until the fleet refuses it once, then stops.

Every line goes to ONE log shared by the writers (O_APPEND, one write per line, so
lines never interleave and their order is the order they happened in): "spend X"
is written BEFORE the call settles (what the provider billed, even if the process
died right after), "refused X" when a reservation is refused.

argv: store_url cap_usd seed log_path role idle_after_usd stop_file
Prints its lease statistics as JSON on stdout at the end."""

from __future__ import annotations

import json
import os
import random
import sys
import time

from otel_budget import Budget, BudgetConfig, BudgetMeter
from otel_budget.errors import BudgetExceeded
from otel_budget.stores.base import open_store


def main() -> None:
    url, cap, seed, log_path, role, idle_after, stop_file = sys.argv[1:8]
    rng = random.Random(int(seed))
    config = BudgetConfig(budgets=(Budget("fleet", float(cap), hard=True),),
                          instance_id=f"burst-{role}-{seed}")
    meter = BudgetMeter(config, store=open_store(url)).start()
    log = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    spent = 0.0
    calls = refusals = 0
    print(json.dumps({"started": True}), flush=True)
    while True:
        if role == "idle" and spent >= float(idle_after):
            while not os.path.exists(stop_file):
                time.sleep(0.05)
            break
        max_usd = round(rng.uniform(0.01, 0.05), 6)
        try:
            with meter.reserve(max_usd) as r:
                time.sleep(rng.uniform(0.0, 0.002))  # the model call
                actual = round(rng.uniform(0.0, max_usd), 6)
                os.write(log, f"spend {actual}\n".encode())
                r.settle(actual)
            spent += actual
            calls += 1
        except BudgetExceeded:
            os.write(log, f"refused {max_usd}\n".encode())
            refusals += 1
            if role == "busy":
                break
    stats = meter.lease_stats()
    meter.shutdown()
    os.close(log)
    print(json.dumps({**stats, "calls": calls, "spent_usd": round(spent, 6), "role": role}),
          flush=True)


if __name__ == "__main__":
    main()
