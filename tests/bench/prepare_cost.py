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
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

from otel_budget.stores.base import dumps_content
from otel_budget.stores.entries import normalize_writer_entry
from otel_budget.stores.sqlfunctions import prepare_writer_entry
from tests.bench import pgbench


def _full_path(entry: dict[str, Any]) -> str:
    return dumps_content(normalize_writer_entry(entry, where="writer entry"))


def measure(sets: int, rounds: int, number: int) -> dict[str, str]:
    old_sets = pgbench.ATTRIBUTE_SETS
    pgbench.ATTRIBUTE_SETS = sets
    try:
        entry = pgbench._entry("2999-01-01", "bench-writer", 12345)
    finally:
        pgbench.ATTRIBUTE_SETS = old_sets
    ways: dict[str, Callable[[], Any]] = {
        "prepare_writer_entry_us": lambda: prepare_writer_entry(entry),
        "full_path_us": lambda: _full_path(entry),
    }
    figures: dict[str, list[float]] = {name: [] for name in ways}
    for _ in range(rounds):
        for name, way in ways.items():  # interleaved
            t0 = time.process_time()
            for _ in range(number):
                way()
            figures[name].append((time.process_time() - t0) / number * 1e6)
    ratios = sorted(a / b for a, b in zip(figures["prepare_writer_entry_us"],
                                          figures["full_path_us"], strict=True))
    out = {name: _spread(values) for name, values in figures.items()}
    out["ratio"] = _spread(ratios, 3)
    return out


def _spread(values: list[float], digits: int = 1) -> str:
    ordered = sorted(values)
    return (f"{statistics.median(ordered):.{digits}f} "
            f"[{ordered[0]:.{digits}f}-{ordered[-1]:.{digits}f}]")


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
