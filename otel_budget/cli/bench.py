"""`otel-budget bench`: the benchmarks live in the repository (tests/bench), not in the
installed package; from a checkout this command runs them, elsewhere it says how."""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path
from typing import Any


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "bench", help="run the benchmarks (from a checkout of otel-budget)",
        description="Run tests/bench from a checkout in the current directory: the "
                    "figures of record(), collections, leases and freshness, or with "
                    "--fair the interleaved medians against the peers.")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--calls", type=int, default=100_000, help="calls per timing round")
    p.add_argument("--store", dest="postgres_url", metavar="URL",
                   help="a postgresql:// store to also measure merges on")
    p.add_argument("--postgres-url", dest="postgres_url", help=argparse.SUPPRESS)  # earlier name
    p.add_argument("--fair", action="store_true",
                   help="the fair bench (medians with spread, interleaved peers, threads, RSS)")
    p.set_defaults(func=_cmd_bench)


def _cmd_bench(args: argparse.Namespace) -> int:
    root = Path.cwd()
    if not (root / "tests" / "bench" / "run.py").is_file():
        print("otel-budget bench: the benchmarks run from a checkout of otel-budget; cd into "
              "it (then `python -m tests.bench.run` works too)", file=sys.stderr)
        return 2
    sys.path.insert(0, str(root))
    argv = ["--json"] if args.json else []
    if args.fair:
        if args.postgres_url:
            argv += ["--postgres", args.postgres_url]
        module = importlib.import_module("tests.bench.run")
    else:
        argv += ["--calls", str(args.calls)]
        if args.postgres_url:
            argv += ["--store", args.postgres_url]
        module = importlib.import_module("tests.bench.bench_cli")
    return int(module.main(argv))
