"""Run `otel_budget.stores.pgbench` against a throwaway PostgreSQL (durable settings:
fsync and synchronous_commit on, unlike the test fixture) and PgBouncer in
transaction mode in front of it, and print the JSON:

    python3 -m tests.run_pgbench > pgbench.json

Both servers are stopped at the end, even on failure."""

from __future__ import annotations

import json
import sys

from otel_budget.stores.pgbench import run_postgres_bench
from tests import pg_server
from tests.pgbouncer_server import PgBouncer, find_pgbouncer


def main() -> int:
    pg_server._SERVER_SETTINGS = "-c max_connections=200 -c shared_buffers=128MB"
    binary = find_pgbouncer()
    if binary is None:
        print("pgbouncer not found", file=sys.stderr)
        return 2
    server = pg_server.start_server()
    try:
        url = server.create_database("otel_budget_bench", migrate=True)
        bouncer = PgBouncer(binary, server.port)
        try:
            result = run_postgres_bench(url, pooler_url=bouncer.url("otel_budget_bench"))
        finally:
            bouncer.stop()
    finally:
        server.stop()
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
