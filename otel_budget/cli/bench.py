"""`otel-budget bench`: the speed figures, measured in one run on this machine.

Ratios, not absolute times, are the result: `record()` is compared with a bare
OTel `Counter.add` on a MeterProvider with the same number of readers (the SDK
fans every measurement out to each reader, so that cost is not ours)."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from ..config import BudgetConfig
from ..meter import BudgetMeter
from ..stores.memory import MemoryStore
from ..stores.sqlite import SQLiteStore

_ATTRS = {"gen_ai.request.model": "claude-sonnet-4-20250514", "agent": "cloud_lu"}


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("bench", help="measure record(), collection, checkpoint and restore")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--calls", type=int, default=100_000, help="calls per timing round")
    p.set_defaults(func=_cmd_bench)


def _cmd_bench(args: argparse.Namespace) -> int:
    results = run_bench(calls=max(1000, args.calls))
    if args.json:
        print(json.dumps(results, indent=2, sort_keys=True))
    else:
        for key, value in results.items():
            print(f"{key:<40} {value}")
    return 0


def _best_per_call(fn: Callable[[], None], calls: int, rounds: int) -> list[float]:
    samples = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) / calls)
    return samples


def run_bench(calls: int = 100_000, rounds: int = 7) -> dict[str, Any]:
    results: dict[str, Any] = {"calls_per_round": calls, "rounds": rounds}
    config = BudgetConfig(daily_cap_usd=1e9, instance_id="bench", checkpoint_every=10**9)

    meter = BudgetMeter(config, store=MemoryStore())
    record = meter.record
    # Baseline: the same two readers' worth of SDK fan-out, no budget logic.
    provider = MeterProvider(
        metric_readers=[InMemoryMetricReader(), InMemoryMetricReader()], shutdown_on_exit=False
    )
    counter = provider.get_meter("bench").create_counter("llm.spend", unit="USD")
    add = counter.add
    attrs = _ATTRS

    def run_record() -> None:
        for _ in range(calls):
            record(0.0123, attrs)

    def run_add() -> None:
        for _ in range(calls):
            add(0.0123, attrs)

    record_samples: list[float] = []
    add_samples: list[float] = []
    for _ in range(rounds):  # interleaved so drift on a shared machine hits both alike
        add_samples += _best_per_call(run_add, calls, 1)
        record_samples += _best_per_call(run_record, calls, 1)
    results["counter_add_us"] = round(min(add_samples) * 1e6, 3)
    results["record_us"] = round(min(record_samples) * 1e6, 3)
    results["record_vs_counter_add"] = round(min(record_samples) / min(add_samples), 3)
    results["record_vs_counter_add_median"] = round(
        statistics.median(record_samples) / statistics.median(add_samples), 3
    )
    provider.shutdown()
    meter.shutdown()

    # One collection with 1,000 attribute sets.
    meter = BudgetMeter(config, store=MemoryStore()).start()
    for i in range(1000):
        meter.record(0.001, {"agent": f"agent-{i}", "gen_ai.request.model": "m"})
    meter.collect()
    samples = []
    for _ in range(5):
        start = time.perf_counter()
        meter.collect()
        samples.append(time.perf_counter() - start)
    results["collect_1000_attribute_sets_ms"] = round(min(samples) * 1e3, 3)
    meter.shutdown()

    # One SQLite checkpoint and one restore (20 attribute sets: a realistic day).
    with tempfile.TemporaryDirectory() as tmp:
        store = SQLiteStore(os.path.join(tmp, "bench.db"))
        meter = BudgetMeter(config, store=store).start()
        for i in range(20):
            meter.record(0.5, {"agent": f"agent-{i % 4}", "gen_ai.request.model": f"m{i % 5}"})
        samples = []
        for _ in range(20):
            start = time.perf_counter()
            meter.checkpoint()
            samples.append(time.perf_counter() - start)
        results["sqlite_checkpoint_ms"] = round(statistics.median(samples) * 1e3, 3)
        meter.shutdown()
        samples = []
        for _ in range(10):
            restarted = BudgetMeter(config, store=store)
            start = time.perf_counter()
            restarted.start()
            samples.append(time.perf_counter() - start)
            restarted._closed = True  # measured only; no final checkpoint wanted
            restarted.reader._closed = True
            restarted.meter_provider.shutdown()
        results["restore_ms"] = round(statistics.median(samples) * 1e3, 3)
        store.close()

    from .bench_pricing import bench_record_usage

    usage = bench_record_usage(n=max(2000, calls // 5))
    results["record_usage_us"] = usage["record_usage_us"]
    results["record_usage_vs_record"] = usage["record_usage_vs_record"]
    results.update(_optional_benches())
    return results


def _optional_benches() -> dict[str, Any]:
    extra: dict[str, Any] = {}
    pg_url = os.environ.get("OTEL_BUDGET_BENCH_POSTGRES_URL")
    if pg_url:
        from ..stores.pgbench import run_postgres_bench

        extra["postgres"] = run_postgres_bench(pg_url)
    return extra
