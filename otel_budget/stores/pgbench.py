"""PostgreSQL merge latency for `otel-budget bench --json` (OTEL_BUDGET_BENCH_POSTGRES_URL).

Writers are separate processes, each with its own PostgresStore (its own
connection), all merging into one budget row: that is how replicas behave, and
they contend on the row lock as real ones do. 1,000 timed merges per scenario
(1 writer: 1,000; 8 writers: 125 each), after a short warm-up per writer.

The URL should name a database meant for benchmarking: the migration is applied
(it is idempotent) and the benchmark's own rows are deleted afterwards.
"""

from __future__ import annotations

import math
import multiprocessing
import statistics
import time
import uuid
from typing import Any

from .migrate import apply_migration

TOTAL_MERGES = 1000
WARMUP_MERGES = 10
WRITER_COUNTS = (1, 8)


def run_postgres_bench(url: str) -> dict[str, Any]:
    """{"writers_1": {...}, "writers_8": {...}, "mode": ...} with median/p99 in ms."""
    apply_migration(url)
    results: dict[str, Any] = {
        "mode": "processes, one connection each, all merging into one budget row",
        "merges_per_scenario": TOTAL_MERGES,
    }
    context = multiprocessing.get_context("spawn")  # no inherited pools or threads
    for writers in WRITER_COUNTS:
        name = f"budget_bench_{uuid.uuid4().hex[:12]}"
        per_writer = TOTAL_MERGES // writers
        started = time.perf_counter()
        with context.Pool(writers) as pool:
            batches = pool.starmap(_writer, [(url, name, i, per_writer) for i in range(writers)])
        wall = time.perf_counter() - started
        latencies = sorted(x for batch in batches for x in batch)
        results[f"writers_{writers}"] = {
            "writers": writers,
            "merges": len(latencies),
            "median_ms": round(statistics.median(latencies) * 1e3, 3),
            "p99_ms": round(_percentile(latencies, 0.99) * 1e3, 3),
            "max_ms": round(latencies[-1] * 1e3, 3),
            "wall_s_incl_process_start": round(wall, 3),
        }
        _delete(url, name)
    return results


def _writer(url: str, name: str, index: int, merges: int) -> list[float]:
    from .postgres import PostgresStore

    store = PostgresStore(url, min_size=1, max_size=1)
    instance = f"bench-{index}"
    meta = {"date": "bench", "timezone": "UTC", "daily_cap_usd": 1e9}
    try:
        seq = 0
        for _ in range(WARMUP_MERGES):
            seq += 1
            store.merge_budget(name, instance, _entry(seq), day_meta=meta)
        latencies: list[float] = []
        for _ in range(merges):
            seq += 1
            entry = _entry(seq)
            t0 = time.perf_counter()
            store.merge_budget(name, instance, entry, day_meta=meta)
            latencies.append(time.perf_counter() - t0)
        return latencies
    finally:
        store.close()


def _entry(seq: int) -> dict[str, Any]:
    spend = round(seq * 0.001234, 9)
    return {
        "spend_usd": spend, "seq": seq, "updated_at": "2026-01-01T00:00:00+00:00",
        "by_attributes": [
            {"attributes": {"gen_ai.request.model": "claude-sonnet-4", "agent": "bench"},
             "spend_usd": spend},
        ],
    }


def _percentile(ordered: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def _delete(url: str, name: str) -> None:
    import psycopg

    try:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(
                "delete from public.quilt_patches where patch_type = 'budget' and name = %s::text",
                (name,),
            )
    except psycopg.Error:
        pass  # leftovers are named budget_bench_*; nothing depends on them
