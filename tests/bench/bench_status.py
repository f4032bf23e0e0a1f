"""How long `/api/status` (and the fleet's /metrics) take on a big day:

    python -m tests.bench.bench_status --store sqlite:////tmp/bench.db \\
        [--writers 1000] [--sets-per-writer 10] [--rounds 5]

Seeds today's rows in the store (one entry per writer, `--sets-per-writer` attribute
sets each, every set a distinct `user`, a tenth of the writers retired), then times
`StatusSource(store).status()` uncached, the JSON encoding the endpoint adds, and
the fleet's Prometheus exposition. Use a store nothing else uses: it writes rows.
"""

from __future__ import annotations

import argparse
import statistics
import time
from datetime import datetime, timezone
from typing import Any

from otel_budget.budgets import Budget
from otel_budget.stores.base import PatchStore, open_store
from otel_budget.web.app import status_json
from otel_budget.web.fleet_metrics import FleetMetrics
from otel_budget.web.status import StatusSource

MODELS = ("claude-sonnet-4-5", "claude-haiku-4-5", "gpt-4o", "gpt-4o-mini", "claude-opus-4-1")
AGENTS = ("coder", "reviewer", "planner", "triage")


def seed(store: PatchStore, day: str, writers: int, sets_per_writer: int) -> None:
    now = datetime.now(timezone.utc).isoformat()
    for w in range(writers):
        items: list[dict[str, Any]] = [{"attributes": {"gen_ai.request.model": MODELS[(w + i) % len(MODELS)],
                                 "agent": AGENTS[i % len(AGENTS)],
                                 "user": f"user-{w * sets_per_writer + i}"},
                  "spend_usd": 0.001 * (i + 1)} for i in range(sets_per_writer)]
        spend = round(sum(item["spend_usd"] for item in items), 9)
        entry = {"date": day, "writer_id": f"bench-{w:05d}", "instance_id": f"pod-{w % 50}",
                 "spend_usd": spend, "seq": 1, "updated_at": now, "started_at": now,
                 "by_attributes": items, "by_budget": {"daily": spend, "weekly": spend,
                                                       "coder": round(
                     sum(it["spend_usd"] for it in items if it["attributes"]["agent"] == "coder"),
                     9)}}
        if w % 10 == 9:
            store.retire_writer({**entry, "final": True})
        else:
            store.merge_writer(entry)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", required=True)
    parser.add_argument("--writers", type=int, default=1000)
    parser.add_argument("--sets-per-writer", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    budgets = (Budget("daily", 100.0, hard=True),
               Budget("coder", 40.0, match={"agent": "coder"}),
               Budget("weekly", 500.0, period="week"))
    with open_store(args.store) as store:
        day = datetime.now(timezone.utc).date().isoformat()
        started = time.perf_counter()
        seed(store, day, args.writers, args.sets_per_writer)
        print(f"seeded {args.writers} writers x {args.sets_per_writer} attribute sets "
              f"in {time.perf_counter() - started:.1f} s")
        source = StatusSource(store, budgets=budgets, cache_s=0)
        fleet = FleetMetrics(source, max_series=20_000, cache_s=0)
        status_s, encode_s, metrics_s = [], [], []
        size = lines = 0
        for _ in range(args.rounds):
            t0 = time.perf_counter()
            document = source.status()
            t1 = time.perf_counter()
            size = len(status_json(document))
            t2 = time.perf_counter()
            lines = fleet.render().count(b"\n")
            t3 = time.perf_counter()
            status_s.append(t1 - t0)
            encode_s.append(t2 - t1)
            metrics_s.append(t3 - t2)
        assert not document["errors"], document["errors"]
        print(f"writers {document['writers']['total']} (live {document['writers']['live']}, "
              f"retired {document['writers']['retired']}); total ${document['total_usd']:.3f}")
        for name, values in (("status()", status_s), ("JSON encoding", encode_s),
                             ("fleet /metrics", metrics_s)):
            print(f"{name:>15}: median {statistics.median(values) * 1000:8.1f} ms, "
                  f"min {min(values) * 1000:8.1f} ms over {len(values)} rounds")
        print(f"/api/status body {size / 1024:.0f} KiB; fleet exposition {lines} lines")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
