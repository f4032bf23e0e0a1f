"""The figures `otel-budget bench` prints (from a checkout), measured in one run.

Ratios, not absolute times, are the result, against the fair baselines: a bare
OTel `Counter.add` with the same attributes on a MeterProvider with ONE reader,
the physical floor (a locked integer add), and LiteLLM's own pricing functions
when LiteLLM is installed."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from otel_budget.config import BudgetConfig
from otel_budget.errors import BudgetExceeded
from otel_budget.meter import BudgetMeter
from otel_budget.stores.memory import MemoryStore
from otel_budget.stores.sqlite import SQLiteStore

_ATTRS = {"gen_ai.request.model": "claude-sonnet-4-20250514", "agent": "cloud_lu"}


def _best_per_call(fn: Callable[[], None], calls: int, rounds: int) -> list[float]:
    samples = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) / calls)
    return samples


def run_bench(calls: int = 100_000, rounds: int = 7,
              postgres_url: str | None = None) -> dict[str, Any]:
    results: dict[str, Any] = {"calls_per_round": calls, "rounds": rounds}
    config = BudgetConfig(daily_cap_usd=1e9, instance_id="bench", checkpoint_every=10**9)

    meter = BudgetMeter(config, store=MemoryStore())
    record = meter.record
    # The fair baseline: a bare Counter.add on a provider with ONE reader.
    provider = MeterProvider(metric_readers=[InMemoryMetricReader()], shutdown_on_exit=False)
    counter = provider.get_meter("bench").create_counter("llm.spend", unit="USD")
    add = counter.add
    attrs = _ATTRS
    lock = threading.Lock()
    floor_total = [0]

    def run_record() -> None:
        for _ in range(calls):
            record(0.0123, attrs)

    def run_add() -> None:
        for _ in range(calls):
            add(0.0123, attrs)

    def run_floor() -> None:  # the physical floor: a locked integer add
        for _ in range(calls):
            with lock:
                floor_total[0] += 12_300_000

    samples: dict[str, list[float]] = {"record": [], "add": [], "floor": []}
    for _ in range(rounds):  # interleaved so drift on a shared machine hits all alike
        samples["add"] += _best_per_call(run_add, calls, 1)
        samples["record"] += _best_per_call(run_record, calls, 1)
        samples["floor"] += _best_per_call(run_floor, calls, 1)
    results["counter_add_one_reader_us"] = round(min(samples["add"]) * 1e6, 3)
    results["record_us"] = round(min(samples["record"]) * 1e6, 3)
    results["floor_locked_int_add_us"] = round(min(samples["floor"]) * 1e6, 3)
    results["record_vs_counter_add"] = round(min(samples["record"]) / min(samples["add"]), 3)
    results["record_vs_counter_add_median"] = round(
        statistics.median(samples["record"]) / statistics.median(samples["add"]), 3
    )
    results["record_vs_floor"] = round(min(samples["record"]) / min(samples["floor"]), 3)
    provider.shutdown()
    meter.shutdown()

    # One collection with 1,000 attribute sets.
    meter = BudgetMeter(config, store=MemoryStore()).start()
    for i in range(1000):
        meter.record(0.001, {"agent": f"agent-{i}", "gen_ai.request.model": "m"})
    meter.collect()
    collect_samples = []
    for _ in range(5):
        start = time.perf_counter()
        meter.collect()
        collect_samples.append(time.perf_counter() - start)
    results["collect_1000_attribute_sets_ms"] = round(min(collect_samples) * 1e3, 3)
    meter.shutdown()

    # One SQLite checkpoint and one restore (20 attribute sets: a realistic day).
    with tempfile.TemporaryDirectory() as tmp:
        store = SQLiteStore(os.path.join(tmp, "bench.db"))
        meter = BudgetMeter(config, store=store).start()
        for i in range(20):
            meter.record(0.5, {"agent": f"agent-{i % 4}", "gen_ai.request.model": f"m{i % 5}"})
        checkpoint_samples = []
        for _ in range(20):
            start = time.perf_counter()
            meter.checkpoint()
            checkpoint_samples.append(time.perf_counter() - start)
        results["sqlite_checkpoint_ms"] = round(statistics.median(checkpoint_samples) * 1e3, 3)
        meter.shutdown()
        restore_samples = []
        for _ in range(10):
            restarted = BudgetMeter(config, store=store)
            start = time.perf_counter()
            restarted.start()
            restore_samples.append(time.perf_counter() - start)
            restarted.shutdown()
        results["restore_ms"] = round(statistics.median(restore_samples) * 1e3, 3)
        store.close()

    from tests.bench.bench_litellm import bench_record_usage

    usage = bench_record_usage(n=max(2000, calls // 5))
    results["record_usage_us"] = usage["record_usage_us"]
    results["record_usage_vs_record"] = usage["record_usage_vs_record"]
    results["asyncio"] = bench_areserve_loop_lag()
    results["asyncio_fleet"] = bench_fleet_areserve_loop_lag()
    results["fleet_leases"] = {f"cap_{cap:g}_usd": bench_lease_round_trips(cap_usd=cap)
                               for cap in (100.0, 1.0)}
    results["lease_round_trips_per_reservation"] = (
        results["fleet_leases"]["cap_100_usd"]["round_trips_per_reservation"])
    results["fleet_first_refusal"] = bench_first_refusal()
    results["freshness_defaults"] = bench_freshness()
    results.update(_optional_benches(postgres_url))
    litellm = results.get("litellm")
    if isinstance(litellm, dict) and litellm.get("cost_per_token_us"):
        # The recorder figures above run on a provider without readers; through a
        # default meter the token histogram is aggregated by its one reader too.
        litellm["meter_record_usage_vs_cost_per_token_hist"] = round(
            results["record_usage_us"] / litellm["cost_per_token_us"], 4)
    return results


async def _areserve_under_load(meter: BudgetMeter, tasks: int, settle_usd: float
                               ) -> dict[str, Any]:
    """`tasks` tasks arriving over 0.25 s, each reserving $0.05 through `areserve`,
    awaiting a 2-10 ms "model call" and settling `settle_usd`: how late the event loop
    runs a 1 ms ticker meanwhile (p50/p99), how many were refused, and how fast."""
    lags: list[float] = []
    refusal_s: list[float] = []
    done = asyncio.Event()

    async def ticker() -> None:
        while not done.is_set():
            start = time.perf_counter()
            await asyncio.sleep(0.001)
            lags.append(time.perf_counter() - start - 0.001)

    async def call(i: int) -> None:
        await asyncio.sleep(0.25 * i / tasks)
        start = time.perf_counter()
        try:
            async with meter.areserve(0.05, {"agent": f"a{i % 8}"}) as r:
                await asyncio.sleep(0.002 + 0.008 * ((i * 7919) % 100) / 100)
                r.settle(settle_usd)
        except BudgetExceeded:
            refusal_s.append(time.perf_counter() - start)

    tick = asyncio.create_task(ticker())
    await asyncio.gather(*(call(i) for i in range(tasks)))
    done.set()
    await tick
    lags.sort()
    refusal_s.sort()
    return {
        "tasks": tasks, "refused": len(refusal_s), "ticks": len(lags),
        "loop_lag_p50_ms": round(lags[len(lags) // 2] * 1e3, 3),
        "loop_lag_p99_ms": round(lags[min(len(lags) - 1, int(len(lags) * 0.99))] * 1e3, 3),
        "refusal_p50_ms": (round(refusal_s[len(refusal_s) // 2] * 1e3, 3)
                           if refusal_s else None),
        "spend_usd": meter.budgets()[0]["spend_usd"],
    }


def bench_areserve_loop_lag(tasks: int = 500) -> dict[str, Any]:
    """500 tasks through `areserve` against a process budget (in memory)."""
    config = BudgetConfig(daily_cap_usd=10.0, instance_id="bench", checkpoint_every=10**9)

    async def main() -> dict[str, Any]:
        async with BudgetMeter(config, store=MemoryStore()) as meter:
            return await _areserve_under_load(meter, tasks, settle_usd=0.01)

    return asyncio.run(main())


def _fleet_config(cap_usd: float, instance_id: str) -> BudgetConfig:
    from otel_budget.budgets import Budget

    return BudgetConfig(budgets=(Budget("fleet", cap_usd, hard=True, enforce="fleet"),),
                        instance_id=instance_id, checkpoint_every=10**9)


def bench_fleet_areserve_loop_lag(tasks: int = 500, cap_usd: float = 10.0) -> dict[str, Any]:
    """The same against a fleet budget on a SQLite store: lease chunks come from the
    store (in a thread, prefetched when a lease runs low), so this shows what the
    lease round trips cost the event loop."""

    async def main(store: SQLiteStore) -> dict[str, Any]:
        async with BudgetMeter(_fleet_config(cap_usd, "bench-fleet"), store=store) as meter:
            result = await _areserve_under_load(meter, tasks, settle_usd=0.03)
            return {**result, "cap_usd": cap_usd, **meter.lease_stats()}

    with tempfile.TemporaryDirectory() as tmp:
        store = SQLiteStore(os.path.join(tmp, "fleet.db"))
        try:
            return asyncio.run(main(store))
        finally:
            store.close()


def bench_lease_round_trips(cap_usd: float = 100.0, writers: int = 4,
                            seed: int = 7) -> dict[str, Any]:
    """`writers` meters (threads, one SQLite file, each its own store handle and
    lease) reserving $0.01-0.05 calls and settling a random actual <= the maximum
    until the fleet cap refuses them: store round trips per reservation, and how
    much of the cap was used."""
    import random

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "fleet.db")
        stores = [SQLiteStore(path) for _ in range(writers)]
        meters = [BudgetMeter(_fleet_config(cap_usd, f"w{i}"), store=stores[i]).start()
                  for i in range(writers)]
        spent = [0.0] * writers

        def run(i: int) -> None:
            rng = random.Random(seed + i)
            misses = 0
            while misses < 20:
                max_usd = round(rng.uniform(0.01, 0.05), 6)
                try:
                    with meters[i].reserve(max_usd) as r:
                        actual = round(rng.uniform(0.0, max_usd), 6)
                        r.settle(actual)
                        spent[i] += actual
                    misses = 0
                except BudgetExceeded:
                    misses += 1

        start = time.perf_counter()
        threads = [threading.Thread(target=run, args=(i,)) for i in range(writers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - start
        stats = [m.lease_stats() for m in meters]
        for meter in meters:
            meter.shutdown()
        for store in stores:
            store.close()
    trips = sum(s["round_trips"] for s in stats)
    reservations = sum(s["reservations"] for s in stats)
    return {"cap_usd": cap_usd, "writers": writers, "reservations": reservations,
            "round_trips": trips,
            "round_trips_per_reservation": round(trips / max(1, reservations), 4),
            "spent_usd": round(sum(spent), 6),
            "left_usd": round(cap_usd - sum(spent), 6), "seconds": round(elapsed, 3)}


def bench_first_refusal(cap_usd: float = 100.0, writers: int = 4, idle_writers: int = 2,
                        idle_after_usd: float = 12.0, seed: int = 11) -> dict[str, Any]:
    """The burst of issue 16: `writers` meters with the DEFAULT settings and a
    `Budget(hard=True)` (fleet-wide) on one SQLite file, each its own store handle
    (threads standing for workers); `idle_writers` of them stop reserving after
    `idle_after_usd` (their meters stay up, holding their leases), the others
    reserve $0.01-0.05 calls until refused. The share of the cap the fleet had spent
    (counted in settled spend, in the order things happened) at the first refusal."""
    import random

    from otel_budget.budgets import Budget

    lock = threading.Lock()
    events: list[tuple[str, float]] = []  # ("spend" | "refused", usd), in order
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "burst.db")
        stores = [SQLiteStore(path) for _ in range(writers)]
        meters = [BudgetMeter(BudgetConfig(budgets=(Budget("fleet", cap_usd, hard=True),),
                                           instance_id=f"burst-{i}",
                                           spool_dir=os.path.join(tmp, "spool")),
                              store=stores[i]).start() for i in range(writers)]
        idle_done = threading.Event()

        def run(i: int) -> None:
            rng = random.Random(seed + i)
            spent = 0.0
            while True:
                if i < idle_writers and spent >= idle_after_usd:
                    idle_done.wait(600)
                    return
                max_usd = round(rng.uniform(0.01, 0.05), 6)
                try:
                    with meters[i].reserve(max_usd) as r:
                        time.sleep(rng.uniform(0.0, 0.002))  # the model call
                        actual = round(rng.uniform(0.0, max_usd), 6)
                        with lock:  # logged before it settles: the fleet's spend, first
                            events.append(("spend", actual))
                        r.settle(actual)
                    spent += actual
                except BudgetExceeded:
                    with lock:
                        events.append(("refused", max_usd))
                    if i >= idle_writers:
                        return

        threads = [threading.Thread(target=run, args=(i,)) for i in range(writers)]
        for t in threads:
            t.start()
        for t in threads[idle_writers:]:
            t.join()
        stats = [m.lease_stats() for m in meters]
        idle_done.set()
        for t in threads[:idle_writers]:
            t.join()
        for meter in meters:
            meter.shutdown()
        for store in stores:
            store.close()
    spent_before = 0.0
    for kind, usd in events:
        if kind == "refused":
            break
        spent_before += usd
    trips = sum(s["round_trips"] for s in stats)
    reservations = sum(s["reservations"] for s in stats)
    return {"cap_usd": cap_usd, "writers": writers, "idle_writers": idle_writers,
            "first_refusal_usd": round(spent_before, 6),
            "first_refusal_share": round(spent_before / cap_usd, 4),
            "round_trips_per_reservation": round(trips / max(1, reservations), 4)}


class _CountingStore:
    """A store that counts its calls by name (the cost of freshness to the store)."""

    #: The calls that only read; every other store call writes a row.
    READS = frozenset({"get", "day_totals", "writer_entries", "nudges_on", "identity",
                       "system_identity"})

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.calls: dict[str, int] = {}
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        target = getattr(self._inner, name)
        if name.startswith("_") or name == "close" or not callable(target):
            return target

        def call(*args: Any, **kwargs: Any) -> Any:
            with self._lock:
                self.calls[name] = self.calls.get(name, 0) + 1
            return target(*args, **kwargs)
        return call


def bench_freshness(writers: int = 4, cap_usd: float = 20.0, seconds: float = 27.0,
                    seed: int = 3) -> dict[str, Any]:
    """`writers` meters with the DEFAULT collect interval and checkpoint period on one
    SQLite file (threads standing for workers, each its own meter, timer and store
    handle), each reserving and settling a $0.01 call every ~50 ms against the
    default fleet-wide "daily" budget, plus a soft budget alerting at 20/40/60/80%.
    Measured: how old each writer's view of the OTHER writers' spend is (the time
    since the fleet had spent what the view shows; sampled between calls), how long
    after the fleet crossed each alert ratio the nudge was delivered, and how many
    store writes each writer made per minute."""
    import bisect
    import random

    from otel_budget.budgets import Budget

    ratios = (0.2, 0.4, 0.6, 0.8)
    lock = threading.Lock()
    spends: list[tuple[float, int, float]] = []  # (monotonic, writer, usd), in order
    delivered: dict[float, float] = {}
    samples: list[tuple[int, float, float]] = []  # (writer, monotonic, others in view)

    def notifier(nudge: dict[str, Any]) -> None:
        if nudge.get("budget") == "alerts":
            with lock:
                delivered.setdefault(float(nudge["ratio"]), time.monotonic())

    defaults = BudgetConfig(daily_cap_usd=1.0)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "fresh.db")
        stores = [_CountingStore(SQLiteStore(path)) for _ in range(writers)]
        config = BudgetConfig(daily_cap_usd=1000.0, instance_id="fresh",
                              budgets=(Budget("alerts", cap_usd, alert_ratios=ratios),),
                              spool_dir=os.path.join(tmp, "spool"))
        meters = [BudgetMeter(config, store=stores[i], notifiers=[notifier])
                  for i in range(writers)]
        for meter in meters:
            meter.start()
        stop = time.monotonic() + seconds
        start = time.monotonic()

        def run(i: int) -> None:
            rng = random.Random(seed + i)
            own = 0.0
            time.sleep(rng.uniform(0.0, 0.05))
            while time.monotonic() < stop:
                with meters[i].reserve(0.02) as r:
                    with lock:
                        spends.append((time.monotonic(), i, 0.01))
                    r.settle(0.01)
                own += 0.01
                view = next(b["spend_usd"] for b in meters[i].budgets()
                            if b["name"] == "alerts")
                samples.append((i, time.monotonic(), view - own))
                time.sleep(rng.uniform(0.03, 0.07))

        threads = [threading.Thread(target=run, args=(i,)) for i in range(writers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        deadline = time.monotonic() + 20.0
        while len(delivered) < len(ratios) and time.monotonic() < deadline:
            time.sleep(0.05)  # a crossing at the very end: wait for its delivery
        elapsed = time.monotonic() - start
        calls: dict[str, int] = {}
        for counted in stores:
            for name, n in counted.calls.items():
                calls[name] = calls.get(name, 0) + n
        for meter in meters:
            meter.shutdown()
        for counted in stores:
            counted._inner.close()
    # the fleet's cumulative spend, and every writer's "others" cumulative spend
    times = [t for t, _, _ in spends]
    total: list[float] = []
    others: dict[int, list[float]] = {i: [] for i in range(writers)}
    run_total, per = 0.0, [0.0] * writers
    for _, i, usd in spends:
        run_total += usd
        per[i] += usd
        total.append(run_total)
        for j in range(writers):
            others[j].append(run_total - per[j])
    ages = []
    for i, now, view in samples:
        k = bisect.bisect_left(others[i], view - 1e-9)  # first moment the others had it
        ages.append(0.0 if k >= len(times) else max(0.0, now - times[k]))
    ages.sort()

    def per_minute(n: int) -> float:
        return round(n / writers / (elapsed / 60.0), 1)

    delays: dict[str, float | None] = {}
    for ratio in ratios:
        k = bisect.bisect_left(total, ratio * cap_usd - 1e-9)
        if k < len(times) and ratio in delivered:
            delays[f"{ratio:g}"] = round(delivered[ratio] - times[k], 3)
        else:
            delays[f"{ratio:g}"] = None
    return {
        "writers": writers, "collect_interval_s": defaults.collect_interval_s,
        "checkpoint_every": defaults.checkpoint_every, "seconds": round(elapsed, 1),
        "fleet_view_age_p50_s": round(ages[len(ages) // 2], 3) if ages else None,
        "fleet_view_age_p99_s": round(ages[int(len(ages) * 0.99)], 3) if ages else None,
        "fleet_view_age_max_s": round(ages[-1], 3) if ages else None,
        "alert_delay_s": delays,
        "alert_delay_max_s": max((d for d in delays.values() if d is not None), default=None),
        "store_writes_per_writer_per_minute": per_minute(
            sum(n for name, n in calls.items() if name not in _CountingStore.READS)),
        "store_calls_per_writer_per_minute": {name: per_minute(n)
                                              for name, n in sorted(calls.items())},
    }


def _optional_benches(postgres_url: str | None) -> dict[str, Any]:
    extra: dict[str, Any] = {}
    try:
        from tests.bench.bench_litellm import bench_vs_litellm

        extra["litellm"] = bench_vs_litellm()
    except ImportError:
        extra["litellm"] = "not installed"
    pg_url = postgres_url or os.environ.get("OTEL_BUDGET_BENCH_POSTGRES_URL")
    if pg_url:
        from tests.bench.pgbench import run_postgres_bench

        extra["postgres"] = run_postgres_bench(pg_url)
    return extra


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.bench_cli")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--calls", type=int, default=100_000)
    parser.add_argument("--store", dest="postgres_url", metavar="URL")
    args = parser.parse_args(argv)
    results = run_bench(calls=max(1000, args.calls), postgres_url=args.postgres_url)
    if args.json:
        print(json.dumps(results, indent=2, sort_keys=True))
    else:
        for key, value in results.items():
            print(f"{key:<40} {value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
