"""One collection at 1,000 and 2,000 attribute sets, and the memory a meter holds
for 2,000 sets, against the SDK.

- ledger path: `meter.collect()` as shipped (the budget reader keeps the ledger's
  sums, then the tracker's store round, memory store) and the read of its data
  (`reader.latest` builds llm.spend's points from those sums), so the figure holds
  the work an exporter or a scrape would cause; the timer's collection alone is
  shown too;
- observable path: the same call on a meter whose reader takes the SDK's
  observable callback for llm.spend (what every collection did before; emulated by
  reaching into the reader, bench only);
- SDK Counter: one collection of an InMemoryMetricReader whose provider holds a
  synchronous `Counter` with the same sets (what an app counting spend itself pays).
All three interleaved in one run.

RSS: each side in a subprocess of its own (python -m tests.bench.bench_collection
--rss meter|counter SETS): VmRSS after building and collecting twice, minus VmRSS
after the imports."""

from __future__ import annotations

import gc
import json
import subprocess
import sys
import time
from collections.abc import Callable
from functools import partial
from typing import Any

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from otel_budget import BudgetConfig, BudgetMeter
from otel_budget.reader import LedgerReader
from otel_budget.stores.memory import MemoryStore
from tests.bench.stats import Row, Spread, interleaved, ratios

SET_COUNTS = (1000, 2000)


def _attrs(i: int) -> dict[str, str]:
    return {"agent": f"agent-{i}", "gen_ai.request.model": "claude-sonnet-4-20250514"}


def _meter(sets: int) -> BudgetMeter:
    config = BudgetConfig(daily_cap_usd=1e12, instance_id="bench", checkpoint_every=10**9,
                          collect_interval_s=3600, max_attribute_sets=max(2000, sets))
    meter = BudgetMeter(config, store=MemoryStore()).start()
    for i in range(sets):
        meter.record(0.001, _attrs(i))
    return meter


def _observable_path(meter: BudgetMeter) -> None:
    """Make this meter's reader collect llm.spend through the SDK's observable
    callback, as before the ledger path (bench only: private reach-in)."""
    reader = meter._reader
    assert isinstance(reader, LedgerReader)
    reader._spend_source = None
    setattr(reader, "collect_spliced", reader.collect)  # noqa: B010


def _counter(sets: int) -> tuple[MeterProvider, InMemoryMetricReader]:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader], shutdown_on_exit=False)
    counter = provider.get_meter("bench").create_counter("llm.spend", unit="USD")
    for i in range(sets):
        counter.add(0.001, _attrs(i))
    return provider, reader


def _collect_and_build(meter: BudgetMeter) -> Any:
    """A collection whose data is read: what /metrics or an exporter would pay."""
    meter.collect()
    reader = meter._reader
    return reader.latest


def _timed(fn: Callable[[], Any]) -> Callable[[], float]:
    def run() -> float:
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start
    return run


def bench(rounds: int = 15, rss_runs: int = 3) -> tuple[list[Row], dict[str, Any]]:
    rows: list[Row] = []
    figures: dict[str, Any] = {}
    for sets in SET_COUNTS:
        ledger_meter = _meter(sets)
        observable_meter = _meter(sets)
        _observable_path(observable_meter)
        provider, reader = _counter(sets)
        try:
            samples = interleaved({
                "ledger": _timed(partial(_collect_and_build, ledger_meter)),
                "timer": _timed(ledger_meter.collect),
                "observable": _timed(observable_meter.collect),
                "counter": _timed(reader.get_metrics_data),
            }, rounds)
        finally:
            ledger_meter.shutdown()
            observable_meter.shutdown()
            provider.shutdown()
        ours = Spread.of(samples["ledger"])
        before = Spread.of(samples["observable"])
        counter = Spread.of(samples["counter"])
        goal = "<= 5 ms" if sets == 1000 else "<= 10 ms"
        rows.append(Row(f"one collection, {sets} sets, ms (peer: observable path)",
                        ours.text(1e3), before.text(1e3),
                        Spread.of(ratios(samples["ledger"], samples["observable"])).text(), goal))
        rows.append(Row(f"one collection, {sets} sets, ms (peer: SDK Counter)",
                        ours.text(1e3), counter.text(1e3),
                        Spread.of(ratios(samples["ledger"], samples["counter"])).text()))
        timer = Spread.of(samples["timer"])
        rows.append(Row(f"timer's collection (points built when read), {sets} sets, ms",
                        timer.text(1e3)))
        figures[f"collect_{sets}_ms"] = {"ledger": ours.as_dict(1e3),
                                         "timer_only": timer.as_dict(1e3),
                                         "observable_path": before.as_dict(1e3),
                                         "sdk_counter": counter.as_dict(1e3)}
    rows.append(_checkpoint_row(2000, rounds, figures))
    sets = 2000
    rss: dict[str, list[float]] = {"meter": [], "counter": []}
    for _ in range(rss_runs):  # interleaved, a fresh process each
        for side in rss:
            rss[side].append(_rss_in_subprocess(side, sets))
    ours = Spread.of(rss["meter"])
    peer = Spread.of(rss["counter"])
    rows.append(Row(f"RSS per meter at {sets} sets, MB (peer: SDK Counter)", ours.text(digits=3),
                    peer.text(digits=3), Spread.of(ratios(rss["meter"], rss["counter"])).text(),
                    "<= the Counter's"))
    figures[f"rss_{sets}_sets_mb"] = {"meter": ours.as_dict(), "sdk_counter": peer.as_dict()}
    return rows, figures


def _checkpoint_row(sets: int, rounds: int, figures: dict[str, Any]) -> Row:
    """`meter.checkpoint()` (a collection and this writer's entry merged into a SQLite
    file) at `sets` attribute sets, the ledger path against the observable path."""
    import tempfile
    from pathlib import Path

    from otel_budget.stores.sqlite import SQLiteStore

    with tempfile.TemporaryDirectory() as tmp:
        meters = {}
        for side in ("ledger", "observable"):
            config = BudgetConfig(daily_cap_usd=1e12, instance_id=f"bench-{side}",
                                  checkpoint_every=10**9, collect_interval_s=3600,
                                  max_attribute_sets=sets)
            store = SQLiteStore(Path(tmp) / f"{side}.db")
            meter = BudgetMeter(config, store=store).start()
            for i in range(sets):
                meter.record(0.001, _attrs(i))
            if side == "observable":
                _observable_path(meter)
            meters[side] = (meter, store)
        try:
            samples = interleaved({side: _timed(partial(m.checkpoint, 30.0))
                                   for side, (m, _) in meters.items()}, rounds)
        finally:
            for meter, store in meters.values():
                meter.shutdown()
                store.close()
    ours, before = Spread.of(samples["ledger"]), Spread.of(samples["observable"])
    figures[f"checkpoint_{sets}_sets_sqlite_ms"] = {"ledger": ours.as_dict(1e3),
                                                    "observable_path": before.as_dict(1e3)}
    return Row(f"meter.checkpoint(), {sets} sets, SQLite, ms (peer: observable path)",
               ours.text(1e3), before.text(1e3),
               Spread.of(ratios(samples["ledger"], samples["observable"])).text())


def _rss_in_subprocess(side: str, sets: int) -> float:
    out = subprocess.run([sys.executable, "-m", "tests.bench.bench_collection", "--rss", side,
                          str(sets)], check=True, capture_output=True, text=True, timeout=300)
    return float(json.loads(out.stdout.strip().splitlines()[-1])["rss_mb"])


def _vm_rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def _measure_rss(side: str, sets: int) -> float:
    # Whatever each side would import or lazily build, built before the baseline.
    warm_meter = _meter(1)
    warm_meter.collect()
    warm_meter.shutdown()
    warm_provider, warm_reader = _counter(1)
    warm_reader.get_metrics_data()
    warm_provider.shutdown()
    del warm_meter, warm_provider, warm_reader
    gc.collect()
    base = _vm_rss_mb()
    keep: Any
    if side == "meter":
        meter = _meter(sets)
        _collect_and_build(meter)
        _collect_and_build(meter)
        keep = meter
    else:
        provider, reader = _counter(sets)
        reader.get_metrics_data()
        reader.get_metrics_data()
        keep = (provider, reader)
    gc.collect()
    used = _vm_rss_mb() - base
    del keep
    return used


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--rss":
        print(json.dumps({"rss_mb": _measure_rss(sys.argv[2], int(sys.argv[3]))}))
    else:
        from tests.bench.stats import print_table

        print_table(bench()[0])
