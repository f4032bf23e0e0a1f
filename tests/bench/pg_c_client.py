"""The server's side of a merge, without the writers' Python on the server's cores.

`tests.bench.pgbench` runs each writer as a Python process on the same host as
PostgreSQL: on a 2-core machine, 16 writers put 16 Python processes and 16 backends
on the 2 cores, and about a third of the CPU a merge costs there is the client's
(checking and serialising the entry, libpq, the loopback socket). In a deployment the
writers run on the app's hosts. Here PostgreSQL's own load generator, `pgbench` (C,
two threads, each multiplexing its connections), sends the very statement the store
sends, `select public.otel_budget_merge_writer('<entry>'::jsonb)` as one simple-query
message, with an entry of the same shape and size as `pgbench._entry` (20 attribute
sets, two budgets) and a seq one higher at every merge, so that every merge applies.

Afterwards each writer row's stored seq is checked against the merges pgbench logged
for its connection: a merge that failed, or applied nothing, would show there.

Rows: `c_client_writers_<n>` directly, `c_client_pgbouncer_pool_<size>_writers_<n>`
through a transaction pooler with that many server connections. Every scenario runs
`repeats` times, the scenarios interleaved round by round (drift on a shared host
hits all alike); each figure is the median of the runs with its min and max.
"""

from __future__ import annotations

import statistics
import subprocess
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

from tests.bench.pgbench import ATTRIBUTE_SETS, _bench_day, _delete, _percentile
from tests.bench.stats import Spread

WRITER_COUNTS = (1, 16, 64)
SECONDS = 6
REPEATS = 3
#: pgbench's own threads: one per core of this host's usual 2.
THREADS = 2


def merge_script(day: str) -> str:
    """The pgbench script of one merge: `pgbench._entry`'s document, its amounts
    computed by pgbench from the seq it keeps per connection (`-D seq=...`)."""
    items = ", ".join(
        '{"attributes": {"gen_ai.request.model": "claude-sonnet-4", '
        f'"agent": "agent-{i}", "team": "bench"}}, "spend_usd": :share}}'
        for i in range(ATTRIBUTE_SETS)
    )
    # pgbench writes a double with 15 significant digits: these stay rounded to 9
    # decimals, as the store's entries are (no server-side re-rounding).
    return (
        "\\set seq :seq + 1\n"
        "\\set spend :seq * 0.001234\n"
        f"\\set share :seq * {0.001234 / ATTRIBUTE_SETS!r}\n"
        "select public.otel_budget_merge_writer('{"
        f'"date": "{day}", "writer_id": "c-client-:client_id", "instance_id": "bench-host", '
        '"seq": :seq, "spend_usd": :spend, "updated_at": "2999-01-01T00:00:00+00:00", '
        '"timezone": "UTC", "by_budget": {"daily": :spend, "team-a": :share}, '
        f'"by_attributes": [{items}]'
        "}'::jsonb);\n"
    )


def run_c_client_bench(
    url: str, pgbench_binary: Path, *, poolers: dict[int, str] | None = None,
    writer_counts: tuple[int, ...] = WRITER_COUNTS, seconds: int = SECONDS,
    repeats: int = REPEATS,
) -> dict[str, Any]:
    """{"c_client_writers_16": {"merges_per_s": Spread dict, "p99_ms": ..., ...}, ...}.
    `url`: the database, migrated; `poolers`: {server connections: URL of the same
    database through a transaction pooler with that pool size}."""
    paths = [("c_client_", url)] + [
        (f"c_client_pgbouncer_pool_{size}_", target) for size, target in (poolers or {}).items()]
    samples: dict[str, list[dict[str, float]]] = {}
    days: list[str] = []
    try:
        for _ in range(repeats):
            for prefix, target in paths:
                for writers in writer_counts:
                    day = _bench_day(days)
                    days.append(day)
                    samples.setdefault(f"{prefix}writers_{writers}", []).append(
                        _one_run(url, target, pgbench_binary, day, writers, seconds))
    finally:
        _delete(url, days)
    out: dict[str, Any] = {
        "client": f"pgbench (C), {THREADS} threads, simple query protocol, {seconds} s a run",
        "repeats": repeats,
    }
    for key, runs in samples.items():
        out[key] = {"writers": int(key.rsplit("_", 1)[1])} | {
            figure: _rounded(Spread.of([run[figure] for run in runs]).as_dict())
            for figure in ("merges_per_s", "median_ms", "p99_ms", "max_ms")}
    return out


def _one_run(url: str, target: str, binary: Path, day: str, writers: int,
             seconds: int) -> dict[str, float]:
    seq0 = 1000
    with tempfile.TemporaryDirectory(prefix="otel-budget-c-client-") as folder:
        script = Path(folder) / "merge.sql"
        script.write_text(merge_script(day))
        done = subprocess.run(
            [str(binary), "--no-vacuum", "--protocol=simple", f"--client={writers}",
             f"--jobs={min(THREADS, writers)}", f"--time={seconds}", f"--define=seq={seq0}",
             f"--file={script}", "--log", f"--log-prefix={Path(folder) / 'log'}", target],
            capture_output=True, text=True, timeout=seconds * 10 + 60, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"pgbench failed ({done.returncode}): {done.stderr[-1000:]}")
        # A log line: client_id transaction_no time_us script_no epoch_s epoch_us.
        lines = [line.split() for log in Path(folder).glob("log*") for line in log.open()]
    merges = Counter(int(fields[0]) for fields in lines)
    _check_every_merge_applied(url, day, {f"c-client-{c}": seq0 + n for c, n in merges.items()})
    latencies = sorted(int(fields[2]) / 1e3 for fields in lines)
    ends = [int(fields[4]) + int(fields[5]) / 1e6 for fields in lines]
    starts = [end - int(fields[2]) / 1e6 for end, fields in zip(ends, lines, strict=True)]
    return {
        "merges_per_s": len(latencies) / max(max(ends) - min(starts), 1e-9),
        "median_ms": statistics.median(latencies),
        "p99_ms": _percentile(latencies, 0.99),
        "max_ms": latencies[-1],
    }


def _check_every_merge_applied(url: str, day: str, expected: dict[str, int]) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        stored: dict[str, int] = dict(conn.execute(
            "select content ->> 'writer_id', (content ->> 'seq')::bigint "
            "from public.quilt_patches where patch_type = 'budget_writer' "
            "and (content ->> 'date') = %s", (day,)).fetchall())
    if stored != expected:
        raise RuntimeError(f"the writer rows of {day} hold seqs {stored}, not the {expected} "
                           "pgbench's merges should have left")


def _rounded(figures: dict[str, float | int]) -> dict[str, float | int]:
    return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in figures.items()}

