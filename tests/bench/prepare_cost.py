"""The client CPU of preparing one writer entry for PostgreSQL, no database:
prepare_writer_entry (its fast path for the usual entry) against the full path
every entry took before it (normalize_writer_entry, then dumps_content's
sorted-key JSON), on the bench's entry (tests.bench.pgbench._entry).

Interleaved rounds, each figure the median of ROUNDS rounds with its min-max
spread, in microseconds per entry (time.process_time). Run:

    python3 -m tests.bench.prepare_cost [--sets 20 200] [--rounds 9] [--number 2000]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from typing import Any

from otel_budget.stores.base import dumps_content
from otel_budget.stores.entries import normalize_writer_entry
from otel_budget.stores.sqlfunctions import prepare_writer_entry
from tests.bench import pgbench, stats


def full_path(entry: dict[str, Any]) -> str:
    """What preparing an entry cost before the fast path: the full check, then
    sorted-key JSON."""
    return dumps_content(normalize_writer_entry(entry, where="writer entry"))


def measure(sets: int, rounds: int, number: int) -> dict[str, str]:
    old_sets = pgbench.ATTRIBUTE_SETS
    pgbench.ATTRIBUTE_SETS = sets
    try:
        entry = pgbench._entry("2999-01-01", "bench-writer", 12345)
    finally:
        pgbench.ATTRIBUTE_SETS = old_sets

    def per_entry_us(way: Callable[[], Any]) -> Callable[[], float]:
        def run() -> float:
            t0 = time.process_time()
            for _ in range(number):
                way()
            return (time.process_time() - t0) / number * 1e6
        return run

    figures = stats.interleaved({
        "prepare_writer_entry_us": per_entry_us(lambda: prepare_writer_entry(entry)),
        "full_path_us": per_entry_us(lambda: full_path(entry)),
    }, rounds)
    out = {name: stats.Spread.of(values).text() for name, values in figures.items()}
    out["ratio"] = stats.Spread.of(stats.ratios(figures["prepare_writer_entry_us"],
                                                figures["full_path_us"])).text()
    return out


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sets", type=int, nargs="*", default=[20, 200])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--number", type=int, default=2000)
    args = parser.parse_args()
    result = {f"attribute_sets_{sets}": measure(sets, args.rounds, max(1, args.number * 20 // sets))
              for sets in args.sets}
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
