"""`record()` against a bare OTel `Counter.add` with the same attributes on a
MeterProvider with ONE reader (what an app that counts spend itself would run), the
physical floor (a locked integer add), and both under 1/2/4/8 threads."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from otel_budget import BudgetConfig, BudgetMeter
from otel_budget.stores.memory import MemoryStore
from tests.bench.stats import Row, Spread, interleaved, per_call, ratios

ATTRS = {"gen_ai.request.model": "claude-sonnet-4-20250514", "agent": "cloud_lu"}
THREADS = (1, 2, 4, 8)


def _config() -> BudgetConfig:
    return BudgetConfig(daily_cap_usd=1e12, instance_id="bench", checkpoint_every=10**9,
                        collect_interval_s=3600)


def _loop(fn: Callable[[float, Any], Any], calls: int) -> Callable[[], float]:
    attrs = ATTRS

    def run() -> float:
        def body() -> None:
            for _ in range(calls):
                fn(0.0123, attrs)
        return per_call(body, calls)
    return run


def _threaded(fn: Callable[[float, Any], Any], threads: int, seconds: float,
              per_cpu_second: list[float]) -> Callable[[], float]:
    """Aggregate throughput (calls/s) of `threads` threads calling for `seconds` (a
    fixed time rather than a fixed count, so thread start and uneven finishes weigh
    the same on both sides). Also appends calls per CPU-second of this process to
    `per_cpu_second`: on a machine shared with other jobs, wall-clock throughput
    swings with their load; CPU time still shows what contention costs us (a lock
    convoy's sleeping threads show in the wall-clock figure only)."""
    attrs = ATTRS

    def run() -> float:
        barrier = threading.Barrier(threads + 1)
        stop = threading.Event()
        counts = [0] * threads

        def body(i: int) -> None:
            barrier.wait()
            n = 0
            while not stop.is_set():
                for _ in range(200):
                    fn(0.0123, attrs)
                n += 200
            counts[i] = n

        workers = [threading.Thread(target=body, args=(i,)) for i in range(threads)]
        for w in workers:
            w.start()
        barrier.wait()
        start, cpu = time.perf_counter(), time.process_time()
        time.sleep(seconds)
        stop.set()
        for w in workers:
            w.join()
        per_cpu_second.append(sum(counts) / (time.process_time() - cpu))
        return sum(counts) / (time.perf_counter() - start)
    return run


def bench(calls: int = 50_000, rounds: int = 9,
          thread_seconds: float = 0.3) -> tuple[list[Row], dict[str, Any]]:
    meter = BudgetMeter(_config(), store=MemoryStore())
    provider = MeterProvider(metric_readers=[InMemoryMetricReader()], shutdown_on_exit=False)
    counter = provider.get_meter("bench").create_counter("llm.spend", unit="USD")
    lock = threading.Lock()
    total = [0]

    def floor(amount: float, attrs: Any) -> None:
        with lock:
            total[0] += 12_300_000

    try:
        single = interleaved({"record": _loop(meter.record, calls),
                              "add": _loop(counter.add, calls),
                              "floor": _loop(floor, calls)}, rounds)
        runs: dict[str, Callable[[], float]] = {}
        cpu: dict[str, list[float]] = {}
        for n in THREADS:
            for side, fn in (("record", meter.record), ("add", counter.add)):
                cpu[f"{side}_{n}"] = []
                runs[f"{side}_{n}"] = _threaded(fn, n, thread_seconds, cpu[f"{side}_{n}"])
        scaling = interleaved(runs, rounds)
        for samples in cpu.values():
            del samples[:-rounds]  # the warm-up round's
    finally:
        provider.shutdown()
        meter.shutdown()

    rec, add, flo = (Spread.of(single[k]) for k in ("record", "add", "floor"))
    ratio = Spread.of(ratios(single["record"], single["add"]))
    floor_ratio = Spread.of(ratios(single["floor"], single["add"]))
    rows = [
        Row("record() vs one-reader Counter.add, us/call", rec.text(1e6), add.text(1e6),
            ratio.text(), "<= 0.15"),
        Row("floor (locked int add) vs Counter.add, us/call", flo.text(1e6), add.text(1e6),
            floor_ratio.text()),
    ]
    figures: dict[str, Any] = {
        "record_us": rec.as_dict(1e6), "counter_add_us": add.as_dict(1e6),
        "floor_us": flo.as_dict(1e6), "record_vs_counter_add": ratio.as_dict(),
        "floor_vs_counter_add": floor_ratio.as_dict(),
    }
    for n in THREADS[1:]:
        ours = Spread.of(ratios(scaling[f"record_{n}"], scaling["record_1"]))
        peer = Spread.of(ratios(scaling[f"add_{n}"], scaling["add_1"]))
        rows.append(Row(f"{n} threads' throughput / one thread's", ours.text(), peer.text(),
                        "", ">= 0.8" if n == 8 else ""))
        ours_cpu = Spread.of(ratios(cpu[f"record_{n}"], cpu["record_1"]))
        peer_cpu = Spread.of(ratios(cpu[f"add_{n}"], cpu["add_1"]))
        rows.append(Row("  the same per CPU-second", ours_cpu.text(), peer_cpu.text()))
        figures[f"threads_{n}_vs_1"] = {"record": ours.as_dict(), "counter_add": peer.as_dict(),
                                        "record_per_cpu_s": ours_cpu.as_dict(),
                                        "counter_add_per_cpu_s": peer_cpu.as_dict()}
    one = Spread.of(scaling["record_1"])
    figures["record_1_thread_calls_per_s"] = one.as_dict()
    return rows, figures


if __name__ == "__main__":
    from tests.bench.stats import print_table

    print_table(bench()[0])
