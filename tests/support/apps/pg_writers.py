"""Launcher for tests/stores/test_postgres_replicas.py: imports otel_budget once, then forks
N writer processes, each building its own BudgetMeter on PostgreSQL after the fork
(checkpoint_every=1, collect_interval_s=0.05) and recording for `seconds`.

Usage: pg_writers.py URL OUTDIR N SECONDS
Prints one JSON line {"pids": [...]} once every child is forked, then waits for them.

Each writer appends to OUTDIR/w{i}.log, with fsync, one line per call BEFORE the call
is recorded: "{recorded_nanos_after_this_call},{checkpointed_nanos_known}", where the
checkpointed amount is what its last successful checkpoint held (as health() told it
after the previous call). A writer that shuts down gracefully ends with
"done,{recorded_nanos}". So for a writer killed at any moment:
    checkpointed (last line) <= stored <= recorded (last line).
"""

from __future__ import annotations

import json
import os
import random
import sys
import time

from otel_budget import BudgetConfig, BudgetMeter
from otel_budget.stores.postgres import PostgresStore


def _line(handle: int, text: str) -> None:
    os.write(handle, text.encode() + b"\n")
    os.fsync(handle)


def writer(url: str, outdir: str, index: int, seconds: float) -> None:
    rng = random.Random(index)
    store = PostgresStore(url, min_size=1, max_size=2)
    config = BudgetConfig(daily_cap_usd=1e6, instance_id=f"w{index}", checkpoint_every=1,
                          collect_interval_s=0.05, spool_dir=os.path.join(outdir, f"spool{index}"))
    meter = BudgetMeter(config, store=store).start()
    handle = os.open(os.path.join(outdir, f"w{index}.log"),
                     os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    recorded = checkpointed = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        usd = round(rng.uniform(0.0001, 0.02), 6)
        recorded += round(usd * 1e9)
        _line(handle, f"{recorded},{checkpointed}")
        meter.record(usd, {"writer": index % 4})
        health = meter.health()
        if health["last_checkpoint"]["ok"]:
            checkpointed = round((health["instance_spend_usd"] - health["unflushed_usd"]) * 1e9)
        time.sleep(rng.uniform(0.002, 0.008))
    meter.shutdown(timeout=10)
    store.close()
    _line(handle, f"done,{recorded}")
    os.close(handle)


def main() -> None:
    url, outdir, count, seconds = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    pids = []
    for index in range(count):
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                writer(url, outdir, index, seconds)
            except BaseException:
                import traceback

                traceback.print_exc()
                code = 1
            finally:
                os._exit(code)
        pids.append(pid)
    print(json.dumps({"pids": pids}), flush=True)
    failed = 0
    for pid in pids:
        _, status = os.waitpid(pid, 0)
        if os.WIFEXITED(status) and os.WEXITSTATUS(status) != 0:
            failed += 1
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
