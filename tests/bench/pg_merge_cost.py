"""Where a PostgreSQL merge's CPU goes: server side and client side, per merge.

On a shared 2-core host the multi-writer throughput of `tests.bench.pgbench` is
bounded by the total CPU a merge costs (16-64 writer processes and the server
share the cores), so this measures that CPU directly, one writer at a time:

- server: the backend process's CPU (utime + stime from /proc) per merge, and
  the statement's mean execution time from pg_stat_statements, with each SQL
  function's own time (pg_stat_user_functions, track_functions = all);
- client: the writer process's CPU per merge (time.process_time), with apart
  the CPU of preparing the entry (checks + JSON text; and the full path, which
  the fast one replaces for the usual entry, on the same entries) and of reading
  an answer.

Scenarios: a fresh day, and a day with NEVER_RETIRED live rows nobody updates.
Rounds are interleaved and each figure is the median of ROUNDS rounds with its
min-max spread. Run:

    python3 -m tests.bench.pg_merge_cost [--merges 400] [--rounds 5] [--sets 20]

A throwaway server is started (the test fixture's settings plus
pg_stat_statements) and stopped at the end, even on failure.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import uuid
from typing import Any

import psycopg

from tests.bench import pgbench
from tests.support import pg_server

_CLK = os.sysconf("SC_CLK_TCK")


def _proc_cpu_s(pid: int) -> float:
    """utime + stime of a process, in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLK


def _loadavg() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def _spread(values: list[float], digits: int = 3) -> str:
    """'median [min-max]'."""
    ordered = sorted(values)
    return (f"{statistics.median(ordered):.{digits}f} "
            f"[{ordered[0]:.{digits}f}-{ordered[-1]:.{digits}f}]")


def _one_round(url: str, day: str, merges: int, sets: int) -> dict[str, float]:
    """One writer, `merges` merges into `day`: per-merge CPU and time, in ms."""
    from otel_budget.stores import postgres as pgmod
    from otel_budget.stores.sqlfunctions import merge_result, prepare_writer_entry
    from tests.bench.prepare_cost import full_path

    store = pgmod.PostgresStore(url, min_size=1, max_size=1, stale_after_s=None)
    writer = f"cost-{uuid.uuid4().hex[:8]}"
    old_sets = pgbench.ATTRIBUTE_SETS
    pgbench.ATTRIBUTE_SETS = sets
    try:
        entries = [pgbench._entry(day, writer, seq) for seq in range(1, merges + 21)]
        for entry in entries[:20]:  # warm: connection, plans, the row exists
            store.merge_writer(entry)
        with store._pool.connection() as conn:
            backend = int(conn.execute("select pg_backend_pid()").fetchone()[0])
            conn.execute("select pg_stat_statements_reset()")
            conn.execute("select pg_stat_reset()")
        timed = entries[20:]
        # The whole call, as a writer makes it.
        server0, client0, wall0 = _proc_cpu_s(backend), time.process_time(), time.perf_counter()
        for entry in timed:
            store.merge_writer(entry)
        wall = time.perf_counter() - wall0
        client = time.process_time() - client0
        server = _proc_cpu_s(backend) - server0
        # The client's parts apart: preparing (and the full path every entry took
        # before the fast one: normalize_writer_entry, then sorted-key JSON), and
        # reading an answer.
        t0 = time.process_time()
        prepared = [prepare_writer_entry(e) for e in timed]
        prepare = time.process_time() - t0
        t0 = time.process_time()
        full = [full_path(e) for e in timed]
        prepare_full = time.process_time() - t0
        del full
        answer = {"applied": True, "stored_seq": 5, "others": {
            "date": day, "total_usd": 1.5, "writers": 3, "updated_at": None,
            "by_budget": {"daily": 1.5, "team-a": 0.1},
            "budget_writers": {"daily": 3, "team-a": 3}, "quarantined": []}}
        text = json.dumps(answer)
        t0 = time.process_time()
        for _ in timed:
            merge_result(json.loads(text), day)
        decode = time.process_time() - t0
        del prepared
        with store._pool.connection() as conn:
            stmt = conn.execute(
                "select coalesce(sum(total_exec_time), 0), coalesce(sum(calls), 0) "
                "from pg_stat_statements where query like '%otel_budget_merge_writer%'"
            ).fetchone()
            funcs = conn.execute(
                "select funcname, calls, self_time from pg_stat_user_functions "
                "where funcname like 'otel_budget%' order by self_time desc").fetchall()
    finally:
        pgbench.ATTRIBUTE_SETS = old_sets
        store.close()
    n = len(timed)
    out = {
        "wall_ms": wall / n * 1e3,
        "client_cpu_ms": client / n * 1e3,
        "client_prepare_ms": prepare / n * 1e3,
        "client_prepare_full_path_ms": prepare_full / n * 1e3,
        "client_decode_ms": decode / n * 1e3,
        "server_cpu_ms": server / n * 1e3,
        "server_exec_ms": float(stmt[0]) / max(1, int(stmt[1])),
    }
    # Function statistics reach the view late (flushed at most once a second):
    # per call of the merge function, not per timed merge.
    per = max(1, next((int(c) for f, c, _ in funcs if f == "otel_budget_merge_writer"), 0))
    for name, calls, self_time in funcs:
        out[f"fn_self_ms.{name}"] = float(self_time) / per
        out[f"fn_calls.{name}"] = int(calls) / per
    return out


def run(url: str, *, merges: int, rounds: int, sets: int,
        never_retired: tuple[int, ...]) -> dict[str, Any]:
    scenarios: list[tuple[str, str]] = []
    days: list[str] = []
    fresh = pgbench._bench_day(days)
    days.append(fresh)
    scenarios.append(("fresh_day", fresh))
    for count in never_retired:
        day = pgbench._bench_day(days)
        days.append(day)
        pgbench._seed_live(url, day, count)
        scenarios.append((f"with_{count}_never_retired", day))
    collected: dict[str, dict[str, list[float]]] = {name: {} for name, _ in scenarios}
    out: dict[str, Any] = {"merges_per_round": merges, "rounds": rounds,
                           "attribute_sets": sets, "load_average_before": _loadavg()}
    try:
        for _ in range(rounds):
            for name, day in scenarios:  # interleaved
                for key, value in _one_round(url, day, merges, sets).items():
                    collected[name].setdefault(key, []).append(value)
    finally:
        pgbench._delete(url, days)
    for name, figures in collected.items():
        out[name] = {k: _spread(v) for k, v in sorted(figures.items())}
    out["load_average_after"] = _loadavg()
    return out


def _concurrent_writer(url: str, day: str, index: int, merges: int, barrier: Any,
                       results: Any) -> None:
    """One writer process of `concurrent`: its timed merges' latencies, its own CPU
    and its backend's CPU over them."""
    try:
        from otel_budget.stores.postgres import PostgresStore

        store = PostgresStore(url, min_size=1, max_size=1, stale_after_s=None)
        writer = f"conc-{index}-{uuid.uuid4().hex[:8]}"
        entries = [pgbench._entry(day, writer, seq) for seq in range(1, merges + 11)]
        for entry in entries[:10]:
            store.merge_writer(entry)
        with store._pool.connection() as conn:
            backend = int(conn.execute("select pg_backend_pid()").fetchone()[0])
        barrier.wait(timeout=300)
        latencies = []
        server0, client0, start = _proc_cpu_s(backend), time.process_time(), time.time()
        for entry in entries[10:]:
            t0 = time.perf_counter()
            store.merge_writer(entry)
            latencies.append(time.perf_counter() - t0)
        results.put((start, time.time(), latencies, time.process_time() - client0,
                     _proc_cpu_s(backend) - server0))
        store.close()
    except BaseException as exc:
        barrier.abort()
        results.put(f"{type(exc).__name__}: {exc}")


def concurrent(url: str, day: str, writers: int, total: int) -> dict[str, Any]:
    """`writers` processes merging `total` merges into `day` together: merges/s,
    latency, and CPU per merge (writer processes, their backends)."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(writers)
    results = context.Queue()
    per = max(1, total // writers)
    procs = [context.Process(target=_concurrent_writer,
                             args=(url, day, i, per, barrier, results)) for i in range(writers)]
    for proc in procs:
        proc.start()
    got = []
    try:
        for _ in procs:
            outcome = results.get(timeout=600)
            if isinstance(outcome, str):
                raise RuntimeError(outcome)
            got.append(outcome)
    finally:
        for proc in procs:
            proc.join(30)
            if proc.is_alive():
                proc.kill()
    latencies = sorted(x for g in got for x in g[2])
    n = len(latencies)
    elapsed = max(g[1] for g in got) - min(g[0] for g in got)
    return {
        "writers": writers, "merges_per_s": round(n / elapsed, 1),
        "median_ms": round(statistics.median(latencies) * 1e3, 2),
        "p99_ms": round(pgbench._percentile(latencies, 0.99) * 1e3, 2),
        "client_cpu_ms_per_merge": round(sum(g[3] for g in got) / n * 1e3, 3),
        "server_cpu_ms_per_merge": round(sum(g[4] for g in got) / n * 1e3, 3),
        "load_average": _loadavg(),
    }


def _all(url: str, args: Any) -> dict[str, Any]:
    out = run(url, merges=args.merges, rounds=args.rounds, sets=args.sets,
              never_retired=tuple(args.never_retired))
    for writers in args.writers:
        figures = []
        for _ in range(args.rounds):
            days: list[str] = []
            day = pgbench._bench_day(days)
            try:
                figures.append(concurrent(url, day, writers, 3200))
            finally:
                pgbench._delete(url, [day])
        out[f"concurrent_{writers}_writers"] = {
            k: _spread([float(f[k]) for f in figures], 2) if k != "load_average"
            else [f[k] for f in figures] for k in figures[0]}
    return out


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--merges", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--sets", type=int, default=20)
    parser.add_argument("--never-retired", type=int, nargs="*", default=[10000])
    parser.add_argument("--url", help="an existing database (pg_stat_statements loaded)")
    parser.add_argument("--writers", type=int, nargs="*", default=[],
                        help="also run these writer counts together on a fresh day")
    args = parser.parse_args()
    if args.url:
        url = args.url
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("create extension if not exists pg_stat_statements")
        print(json.dumps(_all(url, args), indent=1))
        return 0
    pg_server._SERVER_SETTINGS += (
        " -c shared_preload_libraries=pg_stat_statements -c track_functions=all"
        " -c pg_stat_statements.track=top")
    server = pg_server.start_server()
    try:
        url = server.create_database("otel_budget_cost", migrate=True)
        server.admin("create extension if not exists pg_stat_statements", "otel_budget_cost")
        result = _all(url, args)
    finally:
        server.destroy()
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
