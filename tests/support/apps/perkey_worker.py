"""One writer of the per-key fleet test: a hard per-customer budget
(`Budget("per-customer", cap, hard=True, per="customer")`), reserving $0.01-0.05
calls for customer "hot" until the fleet refuses it `refusals_wanted` times, and one
small call for customer "cold" after each of hot's (cold's cap is never near).

Every line goes to ONE log shared by the writers (O_APPEND, one write per line):
"spend CUSTOMER X" before the call settles, "refused CUSTOMER X KEY" when refused
(KEY: the exception's key as JSON).

argv: store_url cap_usd seed log_path lease_ttl_s
Prints its counts as JSON on stdout at the end."""

from __future__ import annotations

import json
import os
import random
import sys
import time

from otel_budget import Budget, BudgetConfig, BudgetMeter
from otel_budget.errors import BudgetExceeded
from otel_budget.stores.base import open_store

REFUSALS_WANTED = 3


def main() -> None:
    url, cap, seed, log_path, ttl = sys.argv[1:6]
    rng = random.Random(int(seed))
    config = BudgetConfig(
        budgets=(Budget("per-customer", float(cap), hard=True, per="customer"),),
        instance_id=f"perkey-{seed}", lease_ttl_s=float(ttl))
    meter = BudgetMeter(config, store=open_store(url)).start()
    log = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    counts = {"hot_calls": 0, "hot_refused": 0, "cold_calls": 0, "cold_refused": 0}
    print(json.dumps({"started": True}), flush=True)
    while counts["hot_refused"] < REFUSALS_WANTED:
        for customer in ("hot", "cold"):
            max_usd = round(rng.uniform(0.01, 0.05), 6) if customer == "hot" else 0.001
            try:
                with meter.reserve(max_usd, {"customer": customer}) as r:
                    time.sleep(rng.uniform(0.0, 0.002))  # the model call
                    actual = round(rng.uniform(max_usd / 2, max_usd), 6)
                    os.write(log, f"spend {customer} {actual}\n".encode())
                    r.settle(actual)
                counts[f"{customer}_calls"] += 1
            except BudgetExceeded as exc:
                os.write(log, f"refused {customer} {max_usd} {json.dumps(exc.key)}\n".encode())
                counts[f"{customer}_refused"] += 1
                if customer == "hot":
                    time.sleep(0.01)
    meter.shutdown()
    os.close(log)
    print(json.dumps(counts), flush=True)


if __name__ == "__main__":
    main()
