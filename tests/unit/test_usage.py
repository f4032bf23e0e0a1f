"""record_usage, guard and reserve through a real BudgetMeter (memory store) with an
InMemoryMetricReader: priced spend, GenAI token histogram, unpriced calls, the hard cap."""

from __future__ import annotations

import logging
import math
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.metrics.export import HistogramDataPoint, InMemoryMetricReader

from otel_budget import BudgetConfig, BudgetExceeded, BudgetMeter, ConfigError, read_day
from otel_budget.instruments import WRITER_ATTRIBUTE
from otel_budget.pricing import ModelPrice, PriceTable
from otel_budget.stores.memory import MemoryStore
from otel_budget.usage import TOKEN_BUCKETS
from tests.bench.bench_litellm import bench_record_usage
from tests.support.helpers import FakeClock

SONNET = "claude-sonnet-4-20250514"


class Setup:
    def __init__(self, clock: FakeClock, prices: PriceTable | None = None,
                 cap: float = 10.0) -> None:
        self.store = MemoryStore()
        self.reader = InMemoryMetricReader()
        config = BudgetConfig(daily_cap_usd=cap, instance_id="a", collect_interval_s=3600)
        self.meter = BudgetMeter(config, store=self.store, metric_readers=[self.reader],
                                 clock=clock, prices=prices)

    def points(self, name: str) -> list[Any]:
        data = self.reader.get_metrics_data()
        if data is None:
            return []
        return [
            point
            for rm in data.resource_metrics for sm in rm.scope_metrics for metric in sm.metrics
            if metric.name == name for point in metric.data.data_points
        ]

    def unit(self, name: str) -> str:
        data = self.reader.get_metrics_data()
        assert data is not None
        return next(str(m.unit) for rm in data.resource_metrics for sm in rm.scope_metrics
                    for m in sm.metrics if m.name == name)

    def tokens(self) -> dict[tuple[str, str], HistogramDataPoint]:
        return {(p.attributes["gen_ai.request.model"], p.attributes["gen_ai.token.type"]): p
                for p in self.points("gen_ai.client.token.usage")}


@pytest.fixture
def packaged() -> PriceTable:
    return PriceTable.load_default(environ={})


@pytest.fixture
def setup(clock: FakeClock, packaged: PriceTable) -> Any:
    s = Setup(clock, packaged)
    s.meter.start()
    yield s
    s.meter.shutdown()


def test_record_usage_prices_records_spend_and_token_usage(setup: Setup) -> None:
    cost = setup.meter.record_usage(SONNET, 1000, 500, cached_input_tokens=2000,
                                    cache_write_tokens=400, attributes={"agent": "cloud_lu"})
    # 1000 x $3 + 500 x $15 + 2000 x $0.30 + 400 x $3.75 per million
    assert cost == 0.0126
    assert setup.meter.daily_spend() == 0.0126

    [spend] = setup.points("llm.spend")
    assert dict(spend.attributes or {}) == {"agent": "cloud_lu", "gen_ai.request.model": SONNET,
                                      "gen_ai.provider.name": "anthropic",
                                      WRITER_ATTRIBUTE: setup.meter.writer_id}
    assert spend.value == 0.0126

    assert setup.unit("gen_ai.client.token.usage") == "{token}"
    tokens = setup.tokens()
    assert set(tokens) == {(SONNET, "input"), (SONNET, "output")}
    inp, out = tokens[(SONNET, "input")], tokens[(SONNET, "output")]
    assert dict(inp.attributes or {}) == {
        "gen_ai.operation.name": "chat", "gen_ai.provider.name": "anthropic",
        "gen_ai.request.model": SONNET, "gen_ai.token.type": "input",
    }
    # Input counts every prompt token: fresh + cache reads + cache writes.
    assert (inp.count, inp.sum, out.count, out.sum) == (1, 3400, 1, 500)
    assert tuple(inp.explicit_bounds) == TOKEN_BUCKETS
    assert TOKEN_BUCKETS[0] == 1 and TOKEN_BUCKETS[-1] == 67108864


def test_spend_reaches_the_checkpoint_exactly(setup: Setup) -> None:
    for _ in range(1000):
        # Haiku 5.5: 3 x $0.10 + 7 x $0.50 = $3.8 per million -> 0.0000038 each
        setup.meter.record_usage("claude-haiku-5-5", 3, 7, attributes={"agent": "x"})
    assert setup.meter.daily_spend() == 0.0038
    setup.meter.checkpoint()
    day = read_day(setup.store, "2026-11-25")
    assert day["total_usd"] == 0.0038
    [row] = day["by_attributes"]
    assert row["attributes"]["gen_ai.request.model"] == "claude-haiku-5-5"
    assert row["attributes"]["gen_ai.provider.name"] == "anthropic"


def test_caller_attributes_choose_operation_and_provider(setup: Setup) -> None:
    setup.meter.record_usage(
        "gemini-4-neon", 100, 10,
        attributes={"gen_ai.operation.name": "generate_content",
                    "gen_ai.provider.name": "gcp.vertex_ai", "tenant": "t1",
                    "gen_ai.response.model": "gemini-4-neon-001"},
    )
    [inp] = [p for p in setup.points("gen_ai.client.token.usage")
             if p.attributes["gen_ai.token.type"] == "input"]
    assert dict(inp.attributes or {}) == {
        "gen_ai.operation.name": "generate_content", "gen_ai.provider.name": "gcp.vertex_ai",
        "gen_ai.request.model": "gemini-4-neon", "gen_ai.token.type": "input",
        "gen_ai.response.model": "gemini-4-neon-001",
    }  # the tenant stays on the spend counter only (bounded histogram series)
    [spend] = setup.points("llm.spend")
    assert spend.attributes["tenant"] == "t1"


def test_unknown_model_is_priced_by_the_conservative_default_and_marked(
    setup: Setup, packaged: PriceTable,
) -> None:
    # The call has been paid for: no exception, never a silent $0: the most expensive
    # entry of the table (no line or provider is known for this id), marked estimated,
    # tokens recorded, counted as unpriced.
    top = max(packaged, key=lambda p: (p.rates.input + p.rates.output, p.model))
    expected = float(1000 * (top.rates.input + top.rates.output) / 1_000_000)
    assert expected > 0
    assert setup.meter.record_usage("my-finetune", 1000, 1000) == expected
    assert setup.meter.daily_spend() == expected
    [spend] = setup.points("llm.spend")
    assert spend.attributes["gen_ai.request.model"] == "my-finetune"
    assert spend.attributes["otel_budget.settlement"] == "estimated"
    assert {k[1] for k in setup.tokens() if k[0] == "my-finetune"} == {"input", "output"}
    [unpriced] = setup.points("llm.spend.unpriced")
    assert unpriced.value == 1
    assert setup.meter.unpriced_calls() == 1
    # Before a call, the same rule: no UnknownModelError for an unknown id.
    price = setup.meter.price_for("my-finetune")
    assert price.is_fallback and price.estimated_from == top.model
    assert setup.meter.estimate_usd("my-finetune", 1000, 1000) == expected


def test_fallback_price_records_and_counts_unpriced_calls(
    clock: FakeClock, packaged: PriceTable, caplog: pytest.LogCaptureFixture
) -> None:
    table = packaged.with_fallback(ModelPrice.flat(1, 2))
    s = Setup(clock, table)
    with caplog.at_level(logging.WARNING, logger="otel_budget"):
        assert s.meter.record_usage("local-llama", 1000, 1000) == 0.003
        assert s.meter.record_usage("local-llama", 1000, 1000) == 0.003
        assert s.meter.record_usage("other-local", 0, 1_000_000) == 2.0
        assert s.meter.record_usage(SONNET, 1000, 0) == 0.003  # priced: not counted
    assert s.meter.daily_spend() == 2.009
    unpriced = {p.attributes["gen_ai.request.model"]: p.value
                for p in s.points("llm.spend.unpriced")}
    assert unpriced == {"local-llama": 2, "other-local": 1}
    assert s.unit("llm.spend.unpriced") == "{call}"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2  # once per model
    assert "local-llama" in warnings[0] and "other-local" in warnings[1]
    s.meter.shutdown()


@pytest.mark.parametrize("position", range(4))
@pytest.mark.parametrize("bad", [-1, 1.5, "7", True, None])
def test_bad_token_counts_change_nothing(setup: Setup, position: int, bad: object) -> None:
    counts: list[object] = [100, 100, 0, 0]
    counts[position] = bad
    untyped: Any = setup.meter.record_usage  # the wrong types are the point
    with pytest.raises((TypeError, ValueError)):
        untyped(SONNET, counts[0], counts[1], cached_input_tokens=counts[2],
                cache_write_tokens=counts[3])
    assert setup.meter.daily_spend() == 0.0
    assert setup.points("llm.spend") == []
    assert setup.points("gen_ai.client.token.usage") == []


def test_bad_model_or_attributes_change_nothing(setup: Setup) -> None:
    with pytest.raises(ValueError):
        setup.meter.record_usage("", 1, 1)
    untyped: Any = setup.meter.record_usage
    with pytest.raises(TypeError):
        untyped(SONNET, 1, 1, attributes=[("a", 1)])
    assert setup.meter.daily_spend() == 0.0


def test_scheduled_price_change_follows_the_meters_day(packaged: PriceTable) -> None:
    clock = FakeClock(datetime(2026, 11, 30, 23, 59, tzinfo=timezone.utc))
    s = Setup(clock, packaged)
    s.meter.start()
    assert s.meter.record_usage("gemini-4-argon", 1_000_000, 0) == 2.0
    clock.advance(minutes=2)
    s.meter.collect()  # the day boundary
    assert s.meter.record_usage("gemini-4-argon", 1_000_000, 0) == 4.0
    s.meter.shutdown()


def test_price_table_is_loaded_lazily_from_the_environment(
    clock: FakeClock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "prices.toml"
    path.write_text(
        '[models."acme-chat"]\nprovider = "acme"\ninput = 1\noutput = 1\n'
        'cached_input = 1\ncache_write = 1\nsource = "https://acme.example"\n'
        "checked = 2026-11-01\n", encoding="utf-8")
    monkeypatch.setenv("OTEL_BUDGET_PRICES", str(path))
    s = Setup(clock)  # no prices= : the default table, read on first use
    assert s.meter.record_usage("acme-chat", 500_000, 500_000) == 1.0
    assert s.meter.prices.version == "2026.11.25+user"
    s.meter.shutdown()


def test_prices_keyword_must_be_a_price_table(clock: FakeClock) -> None:
    with pytest.raises(TypeError, match="PriceTable"):
        Setup(clock, prices={"x": 1})  # type: ignore[arg-type]


# --- the hard cap through the meter ---------------------------------------------------

def test_guard_uses_fleet_spend_and_the_configured_cap(setup: Setup) -> None:
    setup.meter.record(9.5)
    setup.meter.guard(0.5)
    with pytest.raises(BudgetExceeded) as info:
        setup.meter.guard(0.6)
    assert info.value.date == "2026-11-25"
    assert (info.value.daily_spend_usd, info.value.daily_cap_usd) == (9.5, 10.0)
    setup.meter.guard(0.0)


def test_reservation_settled_by_record_usage_is_recorded_once(setup: Setup) -> None:
    setup.meter.record(9.0)
    with setup.meter.reserve(0.5) as r:
        assert setup.meter.reserved_usd() == 0.5
        with pytest.raises(BudgetExceeded):
            setup.meter.guard(0.6)
        cost = setup.meter.record_usage(SONNET, 10_000, 1_000, reservation=r)
    assert cost == 0.045  # 10000 x $3 + 1000 x $15
    assert setup.meter.reserved_usd() == 0.0
    assert setup.meter.daily_spend() == 9.045
    assert setup.tokens()[(SONNET, "input")].sum == 10_000


def test_unsettled_reservation_records_max_through_the_meter(setup: Setup) -> None:
    with setup.meter.reserve(0.25, {"agent": "cloud_lu"}):
        pass
    assert setup.meter.daily_spend() == 0.25
    [spend] = setup.points("llm.spend")
    assert dict(spend.attributes or {}) == {"agent": "cloud_lu",
                                            WRITER_ATTRIBUTE: setup.meter.writer_id}


def test_reservation_of_another_meter_is_refused(setup: Setup, clock: FakeClock,
                                                 packaged: PriceTable) -> None:
    other = Setup(clock, packaged)
    with other.meter.reserve(1.0) as r:
        with pytest.raises(ValueError, match="another BudgetMeter"):
            setup.meter.record_usage(SONNET, 1, 1, reservation=r)
        r.cancel()
    assert setup.meter.daily_spend() == 0.0
    other.meter.shutdown()


def test_bench_record_usage_reports_a_ratio() -> None:
    result = bench_record_usage(n=2000, rounds=2)
    assert set(result) == {"record_us", "record_usage_us", "record_usage_vs_record"}
    assert result["record_usage_us"] > 0 and math.isfinite(result["record_usage_vs_record"])
    # record_usage does everything record does and more.
    assert result["record_usage_vs_record"] > 1.0


def test_a_scheduled_price_applies_from_its_day_through_record_usage(clock: FakeClock) -> None:
    from otel_budget.pricing.table import PriceChange, Rates

    price = ModelPrice.flat(1, 10, model="m-1", provider="acme")
    price = ModelPrice(model="m-1", provider="acme", rates=price.rates, changes=(
        PriceChange(datetime(2026, 11, 26).date(), Rates.of(2, 20)),))
    table = PriceTable.build({"m-1": price}, version="test")
    s = Setup(clock, table)
    s.meter.start()
    try:
        clock.set(datetime(2026, 11, 25, 23, 59, 59, tzinfo=timezone.utc))
        assert s.meter.record_usage("m-1", 1_000_000, 0) == 1.0
        clock.set(datetime(2026, 11, 26, 0, 0, 0, tzinfo=timezone.utc))
        assert s.meter.record_usage("m-1", 1_000_000, 0) == 2.0, "the new day's price"
        assert s.meter.daily_spend() == 2.0
    finally:
        s.meter.shutdown()


def test_token_series_keep_operation_provider_and_passthrough_apart(setup: Setup) -> None:
    calls = [
        {},
        {"gen_ai.operation.name": "text_completion"},
        {"gen_ai.provider.name": "aws.bedrock"},
        {"server.address": "eu.api.example"},
        {},
        {"server.address": "eu.api.example"},
    ]
    for attributes in calls:
        setup.meter.record_usage(SONNET, 10, 1, attributes=attributes)
    series = {
        tuple(sorted((k, v) for k, v in (p.attributes or {}).items()
                     if k != "gen_ai.token.type")): p.count
        for p in setup.points("gen_ai.client.token.usage")
        if p.attributes and p.attributes["gen_ai.token.type"] == "input"
    }
    base = {"gen_ai.operation.name": "chat", "gen_ai.provider.name": "anthropic",
            "gen_ai.request.model": SONNET}
    assert series == {
        tuple(sorted(base.items())): 2,
        tuple(sorted({**base, "gen_ai.operation.name": "text_completion"}.items())): 1,
        tuple(sorted({**base, "gen_ai.provider.name": "aws.bedrock"}.items())): 1,
        tuple(sorted({**base, "server.address": "eu.api.example"}.items())): 2,
    }


# --- model aliases (deployment names) -----------------------------------------------------------

def test_model_aliases_price_deployment_names(clock: FakeClock, packaged: PriceTable) -> None:
    config = BudgetConfig(daily_cap_usd=10.0, instance_id="a", collect_interval_s=3600,
                          model_aliases={"My-GPT4o-Deployment": "gpt-4o",
                                         "prod-sonnet": "claude-sonnet-4-20250514"})
    reader = InMemoryMetricReader()
    meter = BudgetMeter(config, store=MemoryStore(), metric_readers=[reader], clock=clock,
                        prices=packaged)
    gpt4o = packaged.price("gpt-4o")
    expected = float(1000 * (gpt4o.rates.input + gpt4o.rates.output) / 1_000_000)
    assert meter.record_usage("azure/my-gpt4o-deployment", 1000, 1000) == expected
    assert meter.record_usage("my-gpt4o-deployment", 1000, 1000) == expected
    assert meter.estimate_usd("MY-GPT4O-DEPLOYMENT", 1000, 1000) == expected
    assert meter.record_usage("prod-sonnet", 1000, 0) == 0.003
    assert meter.unpriced_calls() == 0
    data = reader.get_metrics_data()
    assert data is not None
    points = [dict(p.attributes or {}) for rm in data.resource_metrics
              for sm in rm.scope_metrics for m in sm.metrics if m.name == "llm.spend"
              for p in m.data.data_points]
    models = {a["gen_ai.request.model"]: a.get("otel_budget.settlement") for a in points}
    # The caller's id is what the spend carries; nothing is marked estimated.
    assert models == {"azure/my-gpt4o-deployment": None, "my-gpt4o-deployment": None,
                      "prod-sonnet": None}
    meter.shutdown()


def test_model_aliases_from_the_environment() -> None:
    config = BudgetConfig.from_env({
        "OTEL_BUDGET_DAILY_CAP_USD": "5",
        "OTEL_BUDGET_MODEL_ALIASES": " my-gpt4o=gpt-4o , prod-sonnet=claude-sonnet-4-5,"})
    assert config.model_aliases == {"my-gpt4o": "gpt-4o", "prod-sonnet": "claude-sonnet-4-5"}
    assert hash(config) == hash(config.replace())  # the config stays frozen and hashable
    with pytest.raises(TypeError):
        config.model_aliases["x"] = "gpt-4o"  # type: ignore[index]
    for bad in ("my-gpt4o", "=gpt-4o", "my-gpt4o=", "a=b=c", "a=b,a=c", "gpt-4o=GPT-4o"):
        with pytest.raises(ConfigError, match="OTEL_BUDGET_MODEL_ALIASES"):
            BudgetConfig.from_env({"OTEL_BUDGET_DAILY_CAP_USD": "5",
                                   "OTEL_BUDGET_MODEL_ALIASES": bad})


@pytest.mark.parametrize("bad", [
    ["a", "b"], {"a": ""}, {"": "gpt-4o"}, {"a": 1}, {"a\x00": "gpt-4o"}, {"x" * 201: "gpt-4o"},
    {"A": "gpt-4o", "a": "gpt-4o"},
])
def test_bad_model_aliases_are_a_config_error(bad: Any) -> None:
    with pytest.raises(ConfigError, match="model_aliases"):
        BudgetConfig(daily_cap_usd=5.0, model_aliases=bad)
