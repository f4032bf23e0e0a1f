"""Run `tests.bench.pgbench` against a throwaway PostgreSQL (the test
fixture's settings, fsync off; `--durable`: fsync and synchronous_commit on) and
PgBouncer in transaction mode in front of it, and print the JSON:

    python3 -m tests.bench.run_pgbench [--durable] [--start] > pgbench.json

Two PgBouncers: the test fixture's, with PgBouncer's default of 20 server
connections (rows "pgbouncer_..."), and one sized to this host, 2 server connections
per core (rows "pgbouncer_pool_<n>_..."), the usual sizing of a PostgreSQL pool: more
backends than that on the server's cores only queue for them, and a backend
preempted while it holds a shard's row or a page lock stalls the others behind it.

Then `tests.bench.pg_c_client`: the same merges sent by PostgreSQL's own `pgbench`
(C) instead of Python writer processes, directly and through both pools: the
server's side of a merge without the writers' CPU on the server's cores.

(--start: also `run_start_bench`, start() with a budget added mid-month.)

Every server is stopped at the end, even on failure."""

from __future__ import annotations

import json
import os
import signal
import sys

from tests.bench.pg_c_client import run_c_client_bench
from tests.bench.pgbench import run_postgres_bench, run_start_bench
from tests.support import pg_server
from tests.support.pgbouncer_server import DEFAULT_POOL_SIZE, PgBouncer, find_pgbouncer

#: Server connections per core of the host-sized pool.
POOL_PER_CORE = 2


def main() -> int:
    if "--durable" in sys.argv:  # fsync and synchronous_commit on: commits wait on the disk
        pg_server._SERVER_SETTINGS = "-c max_connections=200 -c shared_buffers=128MB"
    else:  # the test fixture's settings (fsync off), as the version 2 figures were taken
        pg_server._SERVER_SETTINGS = pg_server._SERVER_SETTINGS.replace(
            "max_connections=120", "max_connections=200")
    binary = find_pgbouncer()
    if binary is None:
        print("pgbouncer not found", file=sys.stderr)
        return 2
    # SIGTERM (kill, a CI timeout) ends the run through the finally below, servers stopped.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    sized = POOL_PER_CORE * (os.cpu_count() or 1)
    server = pg_server.start_server()
    bouncers: list[PgBouncer] = []
    try:
        db = "otel_budget_bench"
        url = server.create_database(db, migrate=True)
        bouncers.append(PgBouncer(binary, server.port))
        bouncers.append(PgBouncer(binary, server.port, pool_size=sized))
        fixture, host_sized = bouncers

        def progress(key: str, figures: object) -> None:
            print(key, json.dumps(figures), file=sys.stderr, flush=True)

        result = run_postgres_bench(
            url, pooler_url=fixture.url(db), poolers={f"pgbouncer_pool_{sized}_": host_sized.url(db)},
            progress=progress)
        bindir = pg_server.find_bindir()
        assert bindir is not None  # start_server found it
        result["c_client"] = run_c_client_bench(
            url, bindir / "pgbench",
            poolers={DEFAULT_POOL_SIZE: fixture.url(db), sized: host_sized.url(db)})
        progress("c_client", result["c_client"])
        if "--start" in sys.argv:
            result["start_with_a_budget_added_mid_month"] = run_start_bench(url)
    finally:
        for bouncer in bouncers:
            bouncer.stop()
        server.stop()
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
