"""Run `tests.bench.pgbench` against a throwaway PostgreSQL (the test
fixture's settings, fsync off; `--durable`: fsync and synchronous_commit on) and
PgBouncer in transaction mode in front of it, and print the JSON:

    python3 -m tests.bench.run_pgbench [--durable] [--start] > pgbench.json

(--start: also `run_start_bench`, start() with a budget added mid-month.)

Both servers are stopped at the end, even on failure."""

from __future__ import annotations

import json
import sys

from tests.bench.pgbench import run_postgres_bench, run_start_bench
from tests.support import pg_server
from tests.support.pgbouncer_server import PgBouncer, find_pgbouncer


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
    server = pg_server.start_server()
    try:
        url = server.create_database("otel_budget_bench", migrate=True)
        bouncer = PgBouncer(binary, server.port)
        try:
            result = run_postgres_bench(
                url, pooler_url=bouncer.url("otel_budget_bench"),
                progress=lambda key, figures: print(key, json.dumps(figures), file=sys.stderr,
                                                    flush=True))
            if "--start" in sys.argv:
                result["start_with_a_budget_added_mid_month"] = run_start_bench(url)
        finally:
            bouncer.stop()
    finally:
        server.stop()
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
