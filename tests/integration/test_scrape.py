"""/metrics is rendered at scrape time from the budget reader's collection: no
Prometheus reader on the provider aggregating every token point a second time."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from prometheus_client.parser import text_string_to_metric_families

from otel_budget import BudgetConfig, BudgetMeter, BudgetReader, __version__
from otel_budget.pricing import PriceTable
from otel_budget.stores.memory import MemoryStore
from tests.support.helpers import FakeClock

SONNET = "claude-sonnet-4-20250514"


def samples(meter: BudgetMeter) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = meter.render_metrics()[0].decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text) for sample in family.samples
    }


def token_sample(found: dict[tuple[str, tuple[tuple[str, str], ...]], float],
                 name: str, token_type: str) -> float:
    [value] = [v for (n, labels), v in found.items()
               if n == name and ("gen_ai_token_type", token_type) in labels]
    return value


def make(clock: FakeClock, **kwargs: Any) -> BudgetMeter:
    config = BudgetConfig(daily_cap_usd=10.0, instance_id="a", collect_interval_s=3600)
    return BudgetMeter(config, store=MemoryStore(), clock=clock,
                       prices=PriceTable.load_default(environ={}), **kwargs)


def test_each_scrape_renders_what_was_recorded_up_to_it(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    meter = make(clock).start()
    try:
        with caplog.at_level(logging.WARNING):
            meter.record_usage(SONNET, 163, 3025, attributes={"agent": "a"})
            first = samples(meter)
            assert first[("llm_spend_USD_total",
                          (("agent", "a"), ("gen_ai_provider_name", "anthropic"),
                           ("gen_ai_request_model", SONNET),
                           ("otel_budget_writer_id", meter.writer_id),
                           ("otel_scope_name", "otel_budget"),
                           ("otel_scope_schema_url", ""),
                           ("otel_scope_version", __version__)))] == 0.045864
            assert token_sample(first, "gen_ai_client_token_usage_sum", "input") == 163
            assert token_sample(first, "gen_ai_client_token_usage_sum", "output") == 3025
            assert token_sample(first, "gen_ai_client_token_usage_count", "output") == 1

            meter.record_usage(SONNET, 37, 975, attributes={"agent": "a"})
            second = samples(meter)
            assert token_sample(second, "gen_ai_client_token_usage_sum", "input") == 200
            assert token_sample(second, "gen_ai_client_token_usage_sum", "output") == 4000
            assert token_sample(second, "gen_ai_client_token_usage_count", "output") == 2
        # The SDK warns when a reader no provider drives is asked to collect.
        assert [r.getMessage() for r in caplog.records if r.name.startswith("opentelemetry")] == []
    finally:
        meter.shutdown()


def test_the_meters_own_provider_has_the_budget_reader_and_the_callers_readers_only(
    clock: FakeClock,
) -> None:
    extra = InMemoryMetricReader()
    meter = make(clock, metric_readers=[extra]).start()
    try:
        provider = meter.meter_provider
        assert isinstance(provider, MeterProvider)
        # No Prometheus reader: each reader on a provider aggregates every token point.
        readers = provider._metric_readers  # what provider.find_budget_reader reads too
        assert [type(r) for r in readers] == [BudgetReader, InMemoryMetricReader]
        meter.record_usage(SONNET, 10, 20)
        assert token_sample(samples(meter), "gen_ai_client_token_usage_sum", "output") == 20
        data = extra.get_metrics_data()
        assert data is not None
        assert "gen_ai.client.token.usage" in {
            m.name for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics}
    finally:
        meter.shutdown()


@pytest.mark.parametrize("bind_reader", [False, True])
def test_metrics_on_the_apps_provider_are_rendered_too(clock: FakeClock, bind_reader: bool
                                                       ) -> None:
    app_readers: list[Any] = [InMemoryMetricReader()]
    if bind_reader:
        app_readers.append(BudgetReader())
    app = MeterProvider(metric_readers=app_readers)
    meter = make(clock, meter_provider=app).start()
    try:
        meter.record(0.25, {"agent": "b"})
        found = samples(meter)
        assert [v for (n, labels), v in found.items()
                if n == "llm_spend_USD_total" and ("agent", "b") in labels] == [0.25]
        meter.record(0.5, {"agent": "b"})
        assert [v for (n, labels), v in samples(meter).items()
                if n == "llm_spend_USD_total" and ("agent", "b") in labels] == [0.75]
    finally:
        meter.shutdown()
        app.shutdown()
