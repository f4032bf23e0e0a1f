"""`llm.spend` built from the ledger's cells in the budget reader's collections, and
the same values through the SDK's observable path for every other reader on the
provider (an exporter's, the app's), whatever temporality that reader asks for."""

from __future__ import annotations

from typing import Any

import pytest
from opentelemetry.metrics import Observation
from opentelemetry.sdk.metrics import MeterProvider, ObservableCounter
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    InMemoryMetricReader,
    MetricsData,
    NumberDataPoint,
    Sum,
)

import otel_budget.instruments as instruments_module
from otel_budget import BudgetConfig, BudgetMeter, BudgetReader
from otel_budget.reader import LedgerReader
from otel_budget.stores.memory import MemoryStore
from tests.support.helpers import FakeClock

WRITER = "otel_budget.writer.id"
Points = dict[tuple[tuple[str, Any], ...], float]


def spend_sum(data: MetricsData | None) -> Sum:
    assert data is not None
    [metric] = [m for rm in data.resource_metrics for sm in rm.scope_metrics
                for m in sm.metrics if m.name == "llm.spend"]
    assert metric.unit == "USD"
    assert isinstance(metric.data, Sum)
    return metric.data


def points(data: MetricsData | None) -> Points:
    found: Points = {}
    for point in spend_sum(data).data_points:
        assert isinstance(point, NumberDataPoint)
        key = tuple(sorted((point.attributes or {}).items()))
        assert key not in found
        found[key] = float(point.value)
    return found


def config() -> BudgetConfig:
    return BudgetConfig(daily_cap_usd=1e6, instance_id="a", collect_interval_s=3600,
                        max_attribute_sets=50)


def record_many(meter: BudgetMeter, sets: int) -> None:
    for i in range(sets):
        for _ in range(i % 3 + 1):
            meter.record(0.001 * (i + 1), {"agent": f"agent-{i}", "gen_ai.request.model": "m"})


def expected(meter: BudgetMeter, sets: int) -> Points:
    want: Points = {}
    for i in range(sets):
        key = tuple(sorted({"agent": f"agent-{i}", "gen_ai.request.model": "m",
                            WRITER: meter.writer_id}.items()))
        want[key] = round((i % 3 + 1) * 0.001 * (i + 1), 9)
    return want


def test_budget_reader_and_an_exporters_reader_export_the_same_points(clock: FakeClock) -> None:
    other = InMemoryMetricReader()
    meter = BudgetMeter(config(), store=MemoryStore(), clock=clock, metric_readers=[other]).start()
    try:
        record_many(meter, 40)
        meter.collect()
        ours = spend_sum(meter._reader.latest)
        assert ours.is_monotonic
        assert ours.aggregation_temporality is AggregationTemporality.CUMULATIVE
        theirs = other.get_metrics_data()
        assert {k: round(v, 9) for k, v in points(meter._reader.latest).items()} == expected(meter, 40)
        assert points(meter._reader.latest) == points(theirs)
        meter.record(1.5, {"agent": "agent-0", "gen_ai.request.model": "m"})
        meter.collect()
        key = tuple(sorted({"agent": "agent-0", "gen_ai.request.model": "m",
                            WRITER: meter.writer_id}.items()))
        assert points(meter._reader.latest)[key] == pytest.approx(1.501)
        assert points(other.get_metrics_data()) == points(meter._reader.latest)
    finally:
        meter.shutdown()


def test_the_overflow_set_is_exported_alike(clock: FakeClock) -> None:
    other = InMemoryMetricReader()
    meter = BudgetMeter(config(), store=MemoryStore(), clock=clock, metric_readers=[other]).start()
    try:
        record_many(meter, 80)  # 30 past max_attribute_sets
        ours = points(meter._reader.collect_data())
        assert len(ours) == 51
        assert ours == points(other.get_metrics_data())
        assert sum(ours.values()) == pytest.approx(meter.daily_spend())
    finally:
        meter.shutdown()


def test_a_delta_reader_on_the_same_provider_gets_its_deltas(clock: FakeClock) -> None:
    delta = InMemoryMetricReader(
        preferred_temporality={ObservableCounter: AggregationTemporality.DELTA})
    meter = BudgetMeter(config(), store=MemoryStore(), clock=clock, metric_readers=[delta]).start()
    try:
        meter.record(0.25, {"agent": "x"})
        meter.collect()
        delta.get_metrics_data()
        meter.record(0.5, {"agent": "x"})
        meter.collect()  # the budget reader's collection must not eat the delta's share
        step = delta.get_metrics_data()
        assert spend_sum(step).aggregation_temporality is AggregationTemporality.DELTA
        assert list(points(step).values()) == [0.5]
        assert list(points(meter._reader.latest).values()) == [0.75]
    finally:
        meter.shutdown()


@pytest.mark.parametrize("bind_reader", [False, True])
def test_the_apps_readers_get_the_ledgers_values(clock: FakeClock, bind_reader: bool) -> None:
    app_reader = InMemoryMetricReader()
    readers: list[Any] = [app_reader]
    if bind_reader:
        readers.append(BudgetReader())
    app = MeterProvider(metric_readers=readers)
    meter = BudgetMeter(config(), store=MemoryStore(), clock=clock, meter_provider=app).start()
    try:
        record_many(meter, 10)
        meter.collect()
        assert isinstance(meter._reader, LedgerReader)
        want = expected(meter, 10)
        assert {k: round(v, 9) for k, v in points(app_reader.get_metrics_data()).items()} == want
        assert {k: round(v, 9) for k, v in points(meter._reader.latest).items()} == want
    finally:
        meter.shutdown()
        app.shutdown()


def test_a_budget_reader_collection_builds_no_observation_per_attribute_set(
    clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    built: list[Any] = []

    def counting(value: float, attributes: Any = None) -> Any:
        if attributes and WRITER in attributes:
            built.append(attributes)
        return Observation(value, attributes)

    monkeypatch.setattr(instruments_module, "Observation", counting)
    other = InMemoryMetricReader()
    meter = BudgetMeter(config(), store=MemoryStore(), clock=clock, metric_readers=[other]).start()
    try:
        record_many(meter, 30)
        meter.collect()
        assert len(points(meter._reader.latest)) == 30
        assert built == []  # the ledger's points, not the observable path
        other.get_metrics_data()
        assert len(built) == 30  # the exporter's reader still takes the observable path
    finally:
        meter.shutdown()
