"""The fair bench, one table: `python -m tests.bench.run [--quick] [--json]
[--only hotpath,collection,pricing] [--postgres URL [--pgbouncer URL]]` from the
repository root.

Every figure is a median with its spread (min-max) over interleaved rounds: both
sides of a comparison run once per round, in turn, and a ratio is the median of the
per-round ratios. The same call on both sides (see each bench_*.py). The machine's
load average is printed before and after: on a shared machine absolute figures
swing, the ratios much less."""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from collections.abc import Callable
from importlib.metadata import version
from typing import Any

from tests.bench import bench_collection, bench_hotpath, bench_pricing
from tests.bench.stats import Row, print_table

SECTIONS: dict[str, Callable[[bool], tuple[list[Row], dict[str, Any]]]] = {
    "hotpath": lambda quick: bench_hotpath.bench(calls=20_000 if quick else 50_000,
                                                 rounds=5 if quick else 11,
                                                 thread_seconds=0.15 if quick else 0.3),
    "collection": lambda quick: bench_collection.bench(rounds=5 if quick else 15,
                                                       rss_runs=1 if quick else 3),
    "pricing": lambda quick: bench_pricing.bench(calls=500 if quick else 2000,
                                                 rounds=5 if quick else 9),
}


def _postgres(url: str, pooler_url: str | None) -> tuple[list[Row], dict[str, Any]]:
    from tests.bench.pgbench import run_postgres_bench

    result = run_postgres_bench(url, pooler_url=pooler_url)
    rows = [Row(f"postgres {key}", json.dumps(value, sort_keys=True)[:120])
            for key, value in result.items()]
    return rows, result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.run", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer rounds (a smoke run)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--only", default=",".join(SECTIONS),
                        help=f"comma-separated sections among {', '.join(SECTIONS)}")
    parser.add_argument("--postgres", metavar="URL",
                        help="also the PostgreSQL merge bench (tests.bench.pgbench)")
    parser.add_argument("--pgbouncer", metavar="URL",
                        help="with --postgres: the same database through PgBouncer too")
    args = parser.parse_args(argv)
    wanted = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = [s for s in wanted if s not in SECTIONS]
    if unknown:
        parser.error(f"unknown section {unknown[0]!r}; choose among {', '.join(SECTIONS)}")
    load_before = os.getloadavg()
    machine: dict[str, Any] = {
        "python": platform.python_version(), "opentelemetry-sdk": version("opentelemetry-sdk"),
        "cpus": os.cpu_count(), "load_before": load_before,
    }
    rows: list[Row] = []
    figures: dict[str, Any] = {"machine": machine}
    for name in wanted:
        section_rows, section_figures = SECTIONS[name](args.quick)
        rows += section_rows
        figures[name] = section_figures
    if args.postgres:
        section_rows, figures["postgres"] = _postgres(args.postgres, args.pgbouncer)
        rows += section_rows
    load_after = os.getloadavg()
    machine["load_after"] = load_after
    if args.json:
        print(json.dumps(figures, indent=2, sort_keys=True, default=str))
    else:
        print(f"python {machine['python']}, opentelemetry-sdk {machine['opentelemetry-sdk']}, "
              f"{machine['cpus']} CPUs, load average {load_before[0]:.1f} before, "
              f"{load_after[0]:.1f} after")
        print_table(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
