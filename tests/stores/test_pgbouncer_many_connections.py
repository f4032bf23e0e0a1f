"""The PgBouncer the tests and benchmarks start keeps answering after many
connections. It logs every login and disconnection to stderr as well as to its log
file; when stderr was a pipe nobody read, the pipe filled after ~64 KB (a few
hundred connections) and PgBouncer blocked writing to it: every later client timed
out (the benchmark's 64-writer scenarios through the pooler)."""

from __future__ import annotations

import psycopg

from tests.support.pgbouncer_server import PgBouncer

CONNECTIONS = 700  # ~2 log lines of ~120 bytes each: well past a 64 KB pipe


def test_pgbouncer_answers_after_hundreds_of_connections(
    pgbouncer: PgBouncer, pgbouncer_url: str,
) -> None:
    for i in range(CONNECTIONS):
        with psycopg.connect(pgbouncer_url, prepare_threshold=None, connect_timeout=10) as conn:
            row = conn.execute("select %s::int", (i,)).fetchone()
            assert row == (i,)
    logged = pgbouncer.log.read_text(errors="replace").count("login attempt")
    assert logged >= CONNECTIONS, "the log shows every connection"
    assert pgbouncer.process.poll() is None
