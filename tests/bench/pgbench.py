"""PostgreSQL checkpoint throughput and latency for `otel-budget bench --json`
(OTEL_BUDGET_BENCH_POSTGRES_URL).

Writers are separate processes, each with its own PostgresStore (one connection),
each checkpointing its own writer row of one shared day with `merge_writer`, the
entry carrying `ATTRIBUTE_SETS` attribute sets: that is how replicas behave. Each
scenario runs at 1, 4, 16 and 64 writers into a day that holds nothing yet,
`FINISHED_WRITERS` finished writers (retired as a shutdown retires them), or
`NEVER_RETIRED` live rows nobody updates any more (killed writers): a merge reads
the day's aggregate shards minus its own row, so all of them should cost alike.
Directly, and through a transaction pooler when one is given. Then the restore
path: `day_totals` and `writer_entries` of a day of finished writers.

Every writer warms up (connects, merges WARMUP_MERGES times), then all wait at a
barrier and start together; merges/s is timed from the first timed merge of any
writer to the last one of any writer; latencies are per merge, client side.

The URL should name a database meant for benchmarking: the migration is applied
(it is idempotent) and the benchmark's own rows (dated in the year 2999) are
deleted afterwards.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import random
import statistics
import time
import uuid
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from otel_budget.stores.migrate import apply_migration
from tests.bench.stats import Spread

TOTAL_MERGES = 3200
WARMUP_MERGES = 10
WRITER_COUNTS = (1, 4, 16, 64)
ATTRIBUTE_SETS = 20
FINISHED_WRITERS = 1000
#: Writers that never retire (SIGKILL, OOM, frozen instances): live rows of the day
#: that nobody updates any more. Version 2 merges summed every one of them.
NEVER_RETIRED = (1000, 10000)
RESTORE_REPEATS = 20
#: The rows the targets name (a fresh day; the most never-retired writers; 16 and 64
#: writers) run ROUNDS times, a round being one pass over every path, interleaved:
#: on a shared 2-core host one run of 16 writers varies by +-15% from the next.
HEADLINE_WRITERS = (16, 64)
ROUNDS = 3


def run_postgres_bench(url: str, *, pooler_url: str | None = None,
                       poolers: Mapping[str, str] | None = None,
                       progress: Callable[[str, Any], None] | None = None) -> dict[str, Any]:
    """{"writers_1": {...}, ..., "writers_16_with_1000_finished": {...},
    "writers_16_with_10000_never_retired": {...}, "restore_1000_writers": {...}}
    with merges/s, median/p99 in ms. `pooler_url` (default
    OTEL_BUDGET_BENCH_PGBOUNCER_URL): the same database through a transaction
    pooler (PgBouncer); its rows are keyed "pgbouncer_writers_...". `poolers`: more
    of them, {row prefix: URL}, say one whose pool is sized to the server's cores.
    Backgrounds:
    a fresh day for each run; FINISHED_WRITERS writers retired as a shutdown retires
    them, or NEVER_RETIRED live rows nobody updates, each seeded once into its own
    day that every writer count (and path) then shares. The rows of HEADLINE_WRITERS
    on a fresh day and with the most never-retired writers run ROUNDS times (each
    round after the first a pass over every path): their figures are medians, with
    "<figure>_min", "<figure>_max" and "runs". A scenario that fails is reported as
    {"error": ...} and the others still run; `progress(key, figures)` is called after
    each run."""
    apply_migration(url)
    if pooler_url is None:
        pooler_url = os.environ.get("OTEL_BUDGET_BENCH_PGBOUNCER_URL") or None
    results: dict[str, Any] = {
        "mode": "processes, one connection each, one writer row each, one shared day",
        "merges_per_scenario": TOTAL_MERGES,
        "attribute_sets_per_entry": ATTRIBUTE_SETS,
        "host": f"{os.cpu_count()} CPUs, shared with whatever else runs: compare rows "
                "of one run, not runs",
        "rounds": f"{ROUNDS} interleaved runs of the rows of {HEADLINE_WRITERS} writers on a "
                  f"fresh day and with {max(NEVER_RETIRED)} never-retired (median, min, max); "
                  "one of the others",
    }
    context = multiprocessing.get_context("spawn")  # no inherited pools or threads
    days: list[str] = []
    backgrounds: list[tuple[str, int]] = [("", 0), ("finished", FINISHED_WRITERS)]
    backgrounds += [("never_retired", n) for n in NEVER_RETIRED]
    paths = [("", url)] + ([("pgbouncer_", pooler_url)] if pooler_url else [])
    paths += list((poolers or {}).items())
    seeded: dict[tuple[str, int], str] = {}
    runs: dict[str, list[dict[str, Any]]] = {}

    def scenario(prefix: str, target: str, kind: str, count: int, writers: int) -> None:
        key = f"{prefix}writers_{writers}" + (f"_with_{count}_{kind}" if kind else "")
        try:
            if kind and (kind, count) in seeded:
                day = seeded[(kind, count)]
            else:
                day = _bench_day(days)
                days.append(day)
                if kind == "finished":
                    _seed(url, day, count)
                elif kind == "never_retired":
                    _seed_live(url, day, count)
                if kind:
                    seeded[(kind, count)] = day
            per_writer = max(1, TOTAL_MERGES // writers)
            figures = _figures(writers, _run_writers(context, target, day, writers, per_writer))
        except Exception as exc:  # one scenario's failure is a figure too
            figures = {"writers": writers, "error": f"{exc}"[:300]}
        runs.setdefault(key, []).append(figures)
        results[key] = _median_run(runs[key])
        if progress is not None:
            progress(key, figures)

    headline = [("", 0), ("never_retired", max(NEVER_RETIRED))]
    try:
        for prefix, target in paths:
            for kind, count in backgrounds:
                for writers in WRITER_COUNTS:
                    scenario(prefix, target, kind, count, writers)
        for _ in range(ROUNDS - 1):
            for prefix, target in paths:
                for kind, count in headline:
                    for writers in HEADLINE_WRITERS:
                        scenario(prefix, target, kind, count, writers)
        day = _bench_day(days)
        days.append(day)
        _seed(url, day, FINISHED_WRITERS)
        results[f"restore_{FINISHED_WRITERS}_writers"] = _restore(url, day)
    finally:
        _delete(url, days)
    return results


def _median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One run's figures as they are; several runs' as the median of each figure
    with its min and max ("p99_ms_min", ...), and "runs": how many. A failed run is
    left out, and named under "errors"."""
    good = [run for run in runs if "error" not in run]
    if len(runs) == 1 or not good:
        return runs[-1]
    out: dict[str, Any] = {"writers": good[0]["writers"], "runs": len(good)}
    for figure in ("merges_per_s", "median_ms", "p99_ms", "max_ms"):
        spread = Spread.of([run[figure] for run in good])
        out[figure] = round(spread.median, 3)
        out[f"{figure}_min"], out[f"{figure}_max"] = spread.low, spread.high
    if len(good) < len(runs):
        out["errors"] = [run["error"] for run in runs if "error" in run]
    return out


def _figures(writers: int, batches: list[tuple[float, float, list[float]]]) -> dict[str, Any]:
    latencies = sorted(x for _, _, batch in batches for x in batch)
    started = min(b[0] for b in batches)
    ended = max(b[1] for b in batches)
    return {
        "writers": writers,
        "merges": len(latencies),
        "merges_per_s": round(len(latencies) / max(ended - started, 1e-9), 1),
        "median_ms": round(statistics.median(latencies) * 1e3, 3),
        "p50_ms": round(_percentile(latencies, 0.50) * 1e3, 3),
        "p99_ms": round(_percentile(latencies, 0.99) * 1e3, 3),
        "max_ms": round(latencies[-1] * 1e3, 3),
    }


def _run_writers(
    context: Any, url: str, day: str, writers: int, per_writer: int
) -> list[tuple[float, float, list[float]]]:
    """Start the writer processes; they warm up, wait for each other at a barrier
    (so no writer is timed while others are still importing), then merge."""
    barrier = context.Barrier(writers)
    results = context.Queue()
    procs = [
        context.Process(target=_writer_process,
                        args=(url, day, i, per_writer, barrier, results))
        for i in range(writers)
    ]
    for proc in procs:
        proc.start()
    batches: list[tuple[float, float, list[float]]] = []
    try:
        for _ in procs:
            outcome = results.get(timeout=600)
            if isinstance(outcome, str):
                raise RuntimeError(f"a benchmark writer failed: {outcome}")
            batches.append(outcome)
    finally:
        for proc in procs:
            proc.join(30)
            if proc.is_alive():
                proc.kill()
    return batches


def _writer_process(url: str, day: str, index: int, merges: int, barrier: Any,
                    results: Any) -> None:
    try:
        results.put(_writer(url, day, index, merges, barrier))
    except BaseException as exc:
        barrier.abort()
        results.put(f"{type(exc).__name__}: {exc}")


def _writer(url: str, day: str, index: int, merges: int,
            barrier: Any = None) -> tuple[float, float, list[float]]:
    from otel_budget.stores.postgres import PostgresStore

    # No reaper: the scenarios' rows are meant to stay live (never retired). With it,
    # each writer's first merge retired up to 100 rows older than 900 s, and by the
    # PgBouncer scenarios every earlier scenario's rows were: 64 writers x 100 one-row
    # retirements, serialised on each day's summary row, during the warm-up.
    store = PostgresStore(url, min_size=1, max_size=1, stale_after_s=None)
    writer = f"bench-{index}-{uuid.uuid4().hex[:8]}"
    try:
        seq = 0
        for _ in range(WARMUP_MERGES):
            seq += 1
            store.merge_writer(_entry(day, writer, seq))
        latencies: list[float] = []
        if barrier is not None:
            barrier.wait(timeout=300)
        started = time.time()
        for _ in range(merges):
            seq += 1
            entry = _entry(day, writer, seq)
            t0 = time.perf_counter()
            store.merge_writer(entry)
            latencies.append(time.perf_counter() - t0)
        return started, time.time(), latencies
    finally:
        store.close()


def _restore(url: str, day: str) -> dict[str, Any]:
    from otel_budget.stores.postgres import PostgresStore

    store = PostgresStore(url, min_size=1, max_size=1)
    try:
        store.day_totals([day])  # warm the connection
        out: dict[str, Any] = {"writers": FINISHED_WRITERS, "repeats": RESTORE_REPEATS}
        calls: dict[str, Callable[[], object]] = {
            "day_totals": lambda: store.day_totals([day]),
            "day_totals_month": lambda: store.day_totals(
                [day[:8] + f"{d:02d}" for d in range(1, 29)]),
            "writer_entries_breakdown": lambda: store.writer_entries([day]),
            "writer_entries_no_breakdown": lambda: store.writer_entries([day], breakdown=False),
        }
        for name, call in calls.items():
            times = []
            for _ in range(RESTORE_REPEATS):
                t0 = time.perf_counter()
                call()
                times.append(time.perf_counter() - t0)
            times.sort()
            out[f"{name}_median_ms"] = round(statistics.median(times) * 1e3, 3)
            out[f"{name}_max_ms"] = round(times[-1] * 1e3, 3)
        return out
    finally:
        store.close()


def _entry(day: str, writer: str, seq: int) -> dict[str, Any]:
    spend = round(seq * 0.001234, 9)
    share = round(spend / ATTRIBUTE_SETS, 9)
    return {
        "date": day, "writer_id": writer, "instance_id": "bench-host", "seq": seq,
        "spend_usd": spend, "updated_at": "2999-01-01T00:00:00+00:00", "timezone": "UTC",
        "by_budget": {"daily": spend, "team-a": share},
        "by_attributes": [
            {"attributes": {"gen_ai.request.model": "claude-sonnet-4", "agent": f"agent-{i}",
                            "team": "bench"},
             "spend_usd": share}
            for i in range(ATTRIBUTE_SETS)
        ],
    }


def _seed(url: str, day: str, writers: int) -> None:
    """`writers` finished writers of `day`: each merged, then retired by its final
    entry through otel_budget_retire_writer, as a meter's shutdown does."""
    import psycopg

    merges = [json.dumps(_entry(day, f"done-{i}", 100 + i)) for i in range(writers)]
    finals = [json.dumps(_entry(day, f"done-{i}", 101 + i) | {"final": True})
              for i in range(writers)]
    with psycopg.connect(url, autocommit=True) as conn:
        with conn.cursor() as cur:
            cur.executemany("select public.otel_budget_merge_writer(%s::jsonb)",
                            [(m,) for m in merges])
            cur.executemany("select public.otel_budget_retire_writer(%s::jsonb)",
                            [(f,) for f in finals])
        _vacuum_after_seeding(conn)


def run_start_bench(url: str, *, days: int = 31, writers: int = 100, sets: int = 200,
                    repeats: int = 5) -> dict[str, Any]:
    """start() of a meter with a budget added mid-month: `days` days of a month (the
    last one today) with `writers` writers each, every entry `sets` attribute sets
    and no figure of its own for the new budget. Times start() (store connection
    warmed) with and without that budget: the first start with it computes the
    closed days' shares in the store and keeps them, the later ones read them."""
    import psycopg

    from otel_budget.budgets import Budget
    from otel_budget.config import BudgetConfig
    from otel_budget.meter import BudgetMeter
    from otel_budget.stores.postgres import PostgresStore

    apply_migration(url)
    month = "2998-03"
    names = [f"{month}-{d:02d}" for d in range(1, days + 1)]
    with psycopg.connect(url, autocommit=True) as conn, conn.cursor() as cur:
        for day in names:
            rows = []
            for w in range(writers):
                items = [{"attributes": {"agent": f"agent-{i}", "team": f"team-{i % 7}"},
                          "spend_usd": 0.001} for i in range(sets)]
                rows.append((json.dumps({
                    "date": day, "writer_id": f"start-{w}", "instance_id": "bench-host",
                    "seq": 1, "spend_usd": round(0.001 * sets, 9),
                    "updated_at": f"{day}T12:00:00+00:00", "timezone": "UTC",
                    "by_budget": {"daily": round(0.001 * sets, 9)}, "by_attributes": items}),))
            cur.executemany("select public.otel_budget_merge_writer(%s::jsonb)", rows)
        _vacuum_after_seeding(conn)
    today = datetime.fromisoformat(f"{names[-1]}T18:00:00+00:00")
    base = [Budget("daily", 1e6)]
    added = [*base, Budget("team-3", 1e6, period="month", match={"team": "team-3"})]
    out: dict[str, Any] = {"days": days, "writers_per_day": writers, "sets_per_entry": sets,
                           "repeats": repeats}
    try:
        for label, budgets in (("without_added_budget", base), ("with_added_budget", added)):
            times: list[float] = []
            spend = None
            for run in range(repeats + (1 if label == "with_added_budget" else 0)):
                store = PostgresStore(url, min_size=1, max_size=2)
                store.day_totals([names[-1]])  # the connection warmed, as a running app's
                config = BudgetConfig(budgets=budgets, collect_interval_s=3600,
                                      instance_id=f"start-bench-{run}")
                meter = BudgetMeter(config, store=store, clock=lambda: today)
                t0 = time.perf_counter()
                meter.start()
                elapsed = time.perf_counter() - t0
                spend = next(b["spend_usd"] for b in meter.budgets() if b["name"] == budgets[-1].name)
                meter.shutdown(timeout=5)
                if label == "with_added_budget" and run == 0:
                    out["with_added_budget_first_start_ms"] = round(elapsed * 1e3, 1)
                    continue
                times.append(elapsed)
            times.sort()
            out[f"{label}_median_ms"] = round(statistics.median(times) * 1e3, 1)
            out[f"{label}_min_ms"] = round(times[0] * 1e3, 1)
            out[f"{label}_max_ms"] = round(times[-1] * 1e3, 1)
            out[f"{label}_window_spend_usd"] = spend
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("delete from public.quilt_patches where (patch_type in "
                         "('budget_writer', 'budget_summary', 'budget_share', 'budget_figures') and "
                         "(content ->> 'date') like %s) or patch_type = 'sibling_nudge'",
                         (f"{month}-%",))
            conn.execute("delete from public.otel_budget_day_shards where day like %s",
                         (f"{month}-%",))
    return out


def _seed_live(url: str, day: str, writers: int) -> None:
    """`writers` live rows of `day` that are never updated again (their writers
    were killed): merged once each, never retired."""
    import psycopg

    merges = [json.dumps(_entry(day, f"killed-{i}", 1 + i)) for i in range(writers)]
    with psycopg.connect(url, autocommit=True) as conn:
        with conn.cursor() as cur:
            cur.executemany("select public.otel_budget_merge_writer(%s::jsonb)",
                            [(m,) for m in merges])
        _vacuum_after_seeding(conn)


def _vacuum_after_seeding(conn: Any) -> None:
    """What autovacuum does on a live server after a burst of writes, done before
    measuring: the seeding left thousands of dead versions of the day's 32 shard rows
    and their budget rows (every merge moves them), and the writer rows' index entries
    as they were before retiring point at dead tuples. Measured before autovacuum's
    next visit, each merge read through them (2.5 ms of server CPU a merge instead of
    1.0 ms with the shards alone)."""
    for table in ("quilt_patches", "otel_budget_day_shards", "otel_budget_day_budgets"):
        conn.execute(f"vacuum analyze public.{table}")


def _bench_day(taken: list[str]) -> str:
    rng = random.Random(uuid.uuid4().int)
    while True:
        day = f"2999-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
        if day not in taken:
            return day


def _percentile(ordered: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def _delete(url: str, days: list[str]) -> None:
    import psycopg

    try:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(
                "delete from public.quilt_patches "
                "where patch_type in ('budget_writer', 'budget_summary') "
                "and (content ->> 'date') = any(%s::text[])",
                (days,),
            )
            conn.execute("delete from public.otel_budget_day_shards where day = any(%s::text[])",
                         (days,))
    except psycopg.Error:
        pass  # leftovers are dated 2999; nothing depends on them
