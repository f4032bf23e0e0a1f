"""record_response / TokenUsage.from_* on the providers' own SDK classes (built offline) and
their dict forms. Expected values are computed from the providers' published rates here,
not from the code under test."""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from datetime import date
from decimal import Decimal
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from otel_budget.errors import ConfigError
from otel_budget.pricing import PriceTable, TokenUsage
from otel_budget.usage import UsageRecorder

anthropic_types = pytest.importorskip("anthropic.types")
chat = pytest.importorskip("openai.types.chat")
responses_types = pytest.importorskip("openai.types.responses")
genai_types = pytest.importorskip("google.genai.types")

DAY = date(2026, 11, 25)
M = Decimal(1_000_000)


def usd(*terms: tuple[int, str]) -> float:
    """Sum of tokens x USD-per-million rate, rounded to 1e-9 like a bill."""
    total = sum((Decimal(n) * Decimal(rate) for n, rate in terms), Decimal(0)) / M
    return float(total.quantize(Decimal("0.000000001")))


class Rig:
    def __init__(self, prices: PriceTable | None = None, token_metrics: bool = True) -> None:
        self.reader = InMemoryMetricReader()
        self.provider = MeterProvider(metric_readers=[self.reader])
        self.recorded: list[tuple[float, dict[str, Any]]] = []
        self.day = DAY
        self.usage = UsageRecorder(
            record=self.record, otel_meter=self.provider.get_meter("t"),
            prices=prices if prices is not None else PriceTable.load_default(environ={}),
            token_metrics=token_metrics, day=lambda: self.day)

    def record(self, cost: float, attributes: Mapping[str, Any] | None) -> None:
        if not isinstance(cost, float) or cost < 0:
            raise ValueError(f"bad cost {cost!r}")
        self.recorded.append((cost, dict(attributes or {})))

    def points(self, name: str) -> list[Any]:
        data = self.reader.get_metrics_data()
        if data is None:
            return []
        return [p for rm in data.resource_metrics for sm in rm.scope_metrics
                for m in sm.metrics if m.name == name for p in m.data.data_points]


@pytest.fixture
def rig() -> Rig:
    return Rig()


def anthropic_message(model: str = "claude-sonnet-4-20250514", **usage: Any) -> Any:
    return anthropic_types.Message.model_validate({
        "id": "msg_1", "type": "message", "role": "assistant", "model": model,
        "content": [{"type": "text", "text": "hi"}], "stop_reason": "end_turn",
        "stop_sequence": None, "usage": usage,
    })


# --- Anthropic -----------------------------------------------------------------------------

def test_seed_call_through_record_response(rig: Rig) -> None:
    msg = anthropic_message(input_tokens=163, output_tokens=3025)
    # Sonnet 4: $3 input, $15 output per MTok
    assert usd((163, "3"), (3025, "15")) == 0.045864
    assert rig.usage.record_response(msg, {"agent": "cloud_lu"}) == 0.045864
    [(cost, attrs)] = rig.recorded
    assert cost == 0.045864
    assert attrs == {"agent": "cloud_lu", "gen_ai.request.model": "claude-sonnet-4-20250514",
                     "gen_ai.response.model": "claude-sonnet-4-20250514",
                     "gen_ai.provider.name": "anthropic"}
    # Dict form (model_dump) gives the same
    assert rig.usage.record_response(msg.model_dump()) == 0.045864


def test_anthropic_one_hour_cache_writes_at_the_one_hour_rate(rig: Rig) -> None:
    msg = anthropic_message(
        input_tokens=100, output_tokens=1000, cache_read_input_tokens=2000,
        cache_creation_input_tokens=5000,
        cache_creation={"ephemeral_5m_input_tokens": 1000, "ephemeral_1h_input_tokens": 4000})
    # Sonnet 4: 5-minute write 1.25x input = $3.75, 1-hour write 2x input = $6, read $0.30
    expected = usd((100, "3"), (1000, "15"), (2000, "0.30"), (1000, "3.75"), (4000, "6"))
    assert rig.usage.record_response(msg) == expected
    usage = TokenUsage.from_anthropic(msg.usage)
    assert (usage.cache_write_tokens, usage.cache_write_long_tokens) == (1000, 4000)


def test_anthropic_batch_tier_and_web_search(rig: Rig) -> None:
    msg = anthropic_message(input_tokens=1000, output_tokens=1000, service_tier="batch",
                            server_tool_use={"web_search_requests": 3,
                                                             "web_fetch_requests": 1})
    # Batch: 50% of token rates; web search $10 per 1,000 searches (not discounted)
    expected = usd((1000, "1.5"), (1000, "7.5")) + 3 * 10 / 1000
    assert rig.usage.record_response(msg) == pytest.approx(expected, abs=1e-12)
    assert rig.recorded[-1][1]["llm.service_tier"] == "batch"
    # The tier can come from the caller (e.g. results of a batch job)
    plain = anthropic_message(input_tokens=1000, output_tokens=1000)
    assert rig.usage.record_response(plain, {"llm.service_tier": "batch"}) == \
        usd((1000, "1.5"), (1000, "7.5"))


def test_anthropic_none_fields_count_as_zero() -> None:
    usage = TokenUsage.from_anthropic({"input_tokens": 10, "output_tokens": 5,
                                       "cache_read_input_tokens": None,
                                       "cache_creation_input_tokens": None,
                                       "cache_creation": None, "server_tool_use": None})
    assert usage == TokenUsage(10, 5)


# --- OpenAI ------------------------------------------------------------------------------------

def chat_completion(model: str, usage: dict[str, Any], **extra: Any) -> Any:
    return chat.ChatCompletion.model_validate({
        "id": "c1", "object": "chat.completion", "created": 1, "model": model,
        "choices": [{"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": "hi"}}],
        "usage": usage, **extra,
    })


def test_openai_chat_cached_and_reasoning_tokens(rig: Rig) -> None:
    resp = chat_completion("o3-2025-04-16", {
        "prompt_tokens": 12_000, "completion_tokens": 3_000, "total_tokens": 15_000,
        "prompt_tokens_details": {"cached_tokens": 10_000},
        "completion_tokens_details": {"reasoning_tokens": 2_500}})
    # o3: $2 input, $0.50 cached, $8 output (reasoning inside completion_tokens)
    assert rig.usage.record_response(resp) == usd((2000, "2"), (10_000, "0.5"), (3000, "8"))


def test_openai_cache_writes_at_the_cache_write_rate(rig: Rig) -> None:
    resp = chat_completion("gpt-6.2-sol", {
        "prompt_tokens": 10_000, "completion_tokens": 100, "total_tokens": 10_100,
        "prompt_tokens_details": {"cached_tokens": 2_000, "cache_write_tokens": 6_000}})
    # gpt-6.2-sol: $2 input, $0.10 cached, $2.50 30-minute cache write, $10 output
    expected = usd((2000, "2"), (2000, "0.10"), (6000, "2.50"), (100, "10"))
    assert rig.usage.record_response(resp) == expected


def test_openai_flex_and_priority_tiers(rig: Rig) -> None:
    u = {"prompt_tokens": 1000, "completion_tokens": 1000, "total_tokens": 2000}
    flex = chat_completion("o3", u, service_tier="flex")
    # o3 flex: $1 / $4 (half of $2 / $8); priority $3.50 / $14
    assert rig.usage.record_response(flex) == usd((1000, "1"), (1000, "4"))
    prio = chat_completion("o3", u, service_tier="priority")
    assert rig.usage.record_response(prio) == usd((1000, "3.5"), (1000, "14"))
    default = chat_completion("o3", u, service_tier="default")
    assert rig.usage.record_response(default) == usd((1000, "2"), (1000, "8"))


def test_openai_stream_final_chunk_with_usage(rig: Rig) -> None:
    chunk = chat.ChatCompletionChunk.model_validate({
        "id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o",
        "choices": [], "usage": {"prompt_tokens": 100, "completion_tokens": 10,
                                 "total_tokens": 110}})
    assert rig.usage.record_response(chunk) == usd((100, "2.5"), (10, "10"))
    assert rig.usage.unpriced_calls() == 0


def responses_response(model: str, usage: dict[str, Any], **extra: Any) -> Any:
    return responses_types.Response.model_validate({
        "id": "r1", "object": "response", "created_at": 1, "model": model, "output": [],
        "parallel_tool_calls": True, "tool_choice": "auto", "tools": [], "usage": usage,
        **extra,
    })


def test_openai_responses_api_with_12h_cache_writes_and_web_search(rig: Rig) -> None:
    resp = responses_response("gpt-6.2-sol", {
        "input_tokens": 10_000, "output_tokens": 500, "total_tokens": 10_500,
        "input_tokens_details": {"cached_tokens": 1000, "cache_write_tokens": 4000,
                                 "cache_write_tokens_details": {"ttl_30m_tokens": 1000,
                                                                "ttl_12h_tokens": 3000}},
        "output_tokens_details": {"reasoning_tokens": 200}},
        tool_usage={"web_search": {"num_requests": 2},
                    "image_gen": {"input_tokens": 0, "output_tokens": 0, "total_tokens": 0,
                                  "input_tokens_details": {"image_tokens": 0,
                                                           "text_tokens": 0}}})
    # gpt-6.2-sol: input $2, cached $0.10, 30-min write $2.50, 12-hour write $5, output $10;
    # web search $10 / 1,000 calls
    expected = usd((5000, "2"), (1000, "0.10"), (1000, "2.50"), (3000, "5"), (500, "10")) \
        + 2 * 10 / 1000
    assert rig.usage.record_response(resp) == pytest.approx(expected, abs=1e-12)
    event = {"type": "response.completed", "response": resp}
    assert rig.usage.record_response(event) == pytest.approx(expected, abs=1e-12)


# --- Gemini -------------------------------------------------------------------------------------

def gemini_response(model: str | None, **usage: Any) -> Any:
    return genai_types.GenerateContentResponse.model_validate({
        "candidates": [{"content": {"role": "model", "parts": [{"text": "hi"}]}}],
        "model_version": model, "usage_metadata": usage})


def test_gemini_thoughts_and_tool_use_tokens(rig: Rig) -> None:
    resp = gemini_response("gemini-2.5-flash", prompt_token_count=5000,
                           cached_content_token_count=4000, candidates_token_count=300,
                           thoughts_token_count=700, tool_use_prompt_token_count=250)
    # 2.5 Flash: input $0.30, cached $0.03, output (thinking included) $2.50
    expected = usd((1000 + 250, "0.30"), (4000, "0.03"), (300 + 700, "2.50"))
    assert rig.usage.record_response(resp) == expected
    assert rig.usage.record_response(resp.model_dump(by_alias=True)) == expected


def test_gemini_none_fields_and_model_from_attributes(rig: Rig) -> None:
    resp = gemini_response(None, prompt_token_count=1000, candidates_token_count=100,
                           cached_content_token_count=None, thoughts_token_count=None)
    cost = rig.usage.record_response(resp, {"gen_ai.request.model": "models/gemini-2.5-pro"})
    assert cost == usd((1000, "1.25"), (100, "10"))


def test_gemini_long_context_and_batch(rig: Rig) -> None:
    resp = gemini_response("gemini-2.5-pro", prompt_token_count=300_000,
                           candidates_token_count=1000)
    # above 200K prompt tokens: $2.50 input, $15 output
    assert rig.usage.record_response(resp) == usd((300_000, "2.5"), (1000, "15"))
    assert rig.usage.record_response(resp, {"llm.service_tier": "batch"}) == \
        usd((300_000, "1.25"), (1000, "7.5"))


# --- Bedrock ---------------------------------------------------------------------------------

def test_bedrock_converse_dict(rig: Rig) -> None:
    response = {"output": {"message": {"role": "assistant", "content": [{"text": "hi"}]}},
                "stopReason": "end_turn",
                "usage": {"inputTokens": 163, "outputTokens": 3025, "totalTokens": 3188,
                          "cacheReadInputTokens": 0, "cacheWriteInputTokens": 0}}
    attrs = {"gen_ai.request.model": "us.anthropic.claude-sonnet-4-20250514-v1:0"}
    assert rig.usage.record_response(response, attrs) == 0.045864
    assert rig.recorded[-1][1]["gen_ai.provider.name"] == "aws.bedrock"
    assert rig.usage.record_response({**response, "modelId":
                                      "eu.anthropic.claude-sonnet-4-20250514-v1:0"}) == 0.045864
    # No model anywhere: the usage is still billed, at the conservative default.
    table = PriceTable.load_default(environ={})
    top = max(table, key=lambda p: (p.rates.input + p.rates.output, p.model))
    assert rig.usage.record_response(response) == usd(
        (163, str(top.rates.input)), (3025, str(top.rates.output)))
    assert rig.recorded[-1][1]["otel_budget.settlement"] == "estimated"
    assert rig.recorded[-1][1]["gen_ai.provider.name"] == "aws.bedrock"


# --- ids ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("model,entry", [
    ("gpt-4o", "gpt-4o"), ("gpt-4.1", "gpt-4.1"), ("o3", "o3"),
    ("gemini-2.5-pro", "gemini-2.5-pro"), ("claude-3-5-sonnet-latest", "claude-3-5-sonnet"),
    ("us.anthropic.claude-sonnet-4-20250514-v1:0", "claude-sonnet-4"),
    ("apac.anthropic.claude-haiku-4-5-20251001-v1:0", "claude-haiku-4-5"),
    ("anthropic.claude-3-haiku-20240307-v1:0", "claude-3-haiku"),
    ("publishers/google/models/gemini-2.5-pro", "gemini-2.5-pro"),
    ("projects/p/locations/us-central1/publishers/google/models/gemini-2.5-flash",
     "gemini-2.5-flash"),
    ("models/gemini-2.5-flash-lite", "gemini-2.5-flash-lite"),
    ("claude-sonnet-4-5@20250929", "claude-sonnet-4-5"),
    ("openai/gpt-4o-mini", "gpt-4o-mini"), ("azure/gpt-4.1-mini", "gpt-4.1-mini"),
    ("anthropic/claude-opus-4-1", "claude-opus-4-1"), ("gpt-4o-2024-08-06", "gpt-4o"),
    ("gpt-4o-2024-05-13", "gpt-4o-2024-05-13"),
])
def test_provider_style_ids_resolve(model: str, entry: str) -> None:
    table = PriceTable.load_default(environ={})
    assert table.resolve(model, on=DAY).model == entry


# --- never drop a paid call ------------------------------------------------------------------

def test_unknown_model_priced_conservatively_counted_warned_once(
        rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    msg = anthropic_message("claude-imaginary-9", input_tokens=10, output_tokens=10)
    # The most expensive Anthropic entry of the table: Opus 4 at $15 / $75 per MTok.
    expected = usd((10, "15"), (10, "75"))
    with caplog.at_level(logging.WARNING, logger="otel_budget"):
        assert rig.usage.record_response(msg) == expected
        assert rig.usage.record_response(msg) == expected
    assert [r for r in caplog.records if "claude-imaginary-9" in r.getMessage()].__len__() == 1
    assert [c for c, _ in rig.recorded] == [expected, expected]
    assert rig.recorded[0][1]["otel_budget.settlement"] == "estimated"
    [point] = rig.points("llm.spend.unpriced")
    assert point.value == 2
    assert dict(point.attributes) == {"gen_ai.request.model": "claude-imaginary-9",
                                      "gen_ai.provider.name": "anthropic"}
    assert rig.usage.unpriced_calls() == 2
    rig.day = date(2026, 11, 26)
    assert rig.usage.unpriced_calls() == 0
    # Before the call, the same price (no UnknownModelError).
    assert rig.usage.estimate_usd("claude-imaginary-9", 10, 10) == expected


def test_fallback_price_from_environment() -> None:
    table = PriceTable.load_default({"OTEL_BUDGET_FALLBACK_PRICE": "3,15"})
    r = Rig(table)
    assert r.usage.record_usage("my-finetune", 1000, 1000) == usd((1000, "3"), (1000, "15"))
    assert r.usage.unpriced_calls() == 1
    assert r.usage.estimate_usd("my-finetune", 1000, 1000) == usd((1000, "3"), (1000, "15"))
    for bad in ("3", "a,b", "-1,2", "1,2,3"):
        with pytest.raises(ConfigError, match="OTEL_BUDGET_FALLBACK_PRICE"):
            PriceTable.load_default({"OTEL_BUDGET_FALLBACK_PRICE": bad})


def test_bad_input_records_nothing(rig: Rig) -> None:
    with pytest.raises(TypeError):
        rig.usage.record_usage("gpt-4o", 1.5, 1)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        rig.usage.record_response(anthropic_message(input_tokens=1, output_tokens=1),
                                  [("agent", "x")])  # type: ignore[arg-type]
    bad = Rig()
    def refuse(cost: float, attrs: Mapping[str, Any] | None) -> None:
        raise ValueError("bad attrs")

    bad.usage._record = refuse
    with pytest.raises(ValueError, match="bad attrs"):
        bad.usage.record_usage("nope-model", 1, 1)
    assert bad.usage.unpriced_calls() == 0
    assert bad.points("llm.spend.unpriced") == []
    assert bad.points("gen_ai.client.token.usage") == []
    assert rig.recorded == []


def test_record_usage_accepts_a_token_usage_and_reservations(rig: Rig) -> None:
    usage = TokenUsage.from_openai({"prompt_tokens": 1000, "completion_tokens": 100})
    a = rig.usage.record_usage("gpt-4o", usage)
    b = rig.usage.record_usage("gpt-4o", usage=usage)
    assert a == b == usd((1000, "2.5"), (100, "10"))

    class Res:
        def __init__(self) -> None:
            self.settled: list[float] = []

        def settle(self, cost: float, attributes: Mapping[str, Any] | None = None) -> float:
            self.settled.append(cost)
            return cost

    res = Res()
    rig.recorded.clear()
    rig.usage.record_usage("gpt-4o", usage, reservation=res)
    assert res.settled == [a] and rig.recorded == []


def test_token_histogram_only_when_enabled() -> None:
    off = Rig(token_metrics=False)
    off.usage.record_usage("gpt-4o", 10, 10)
    assert off.points("gen_ai.client.token.usage") == []
    on = Rig(token_metrics=True)
    on.usage.record_usage("gpt-4o", 10, 10, cached_input_tokens=5)
    assert sorted(p.sum for p in on.points("gen_ai.client.token.usage")) == [10, 15]


def test_from_litellm_ours_take_precedence() -> None:
    base = PriceTable.load_default(environ={})
    table = PriceTable.from_litellm(base, model_cost={
        "gpt-4o": {"mode": "chat", "input_cost_per_token": 9e-6, "output_cost_per_token": 9e-5,
                   "litellm_provider": "openai"},
        "some-new-model": {"mode": "chat", "input_cost_per_token": 1e-6,
                           "output_cost_per_token": 2e-6, "litellm_provider": "openai"},
    })
    assert table.resolve("gpt-4o", on=DAY).rates.input == Decimal("2.5")
    assert table.resolve("some-new-model", on=DAY).rates.output == Decimal(2)


def test_thread_safe_unpriced_count() -> None:
    r = Rig()
    threads = [threading.Thread(target=lambda: [r.usage.record_usage("x-unknown", 1, 1)
                                                 for _ in range(200)]) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert r.usage.unpriced_calls() == 800


def test_bench_vs_litellm_runs() -> None:
    pytest.importorskip("litellm")
    from tests.bench.bench_litellm import bench_vs_litellm

    result = bench_vs_litellm(n=50, rounds=1)
    assert result["ours_usd"] == pytest.approx(result["litellm_usd"], abs=1e-9)
    assert result["record_response_vs_completion_cost"] > 0


def test_cli_diff_litellm_runs(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("litellm")
    import argparse

    from otel_budget.cli import prices as cli_prices

    args = argparse.Namespace(model=None, file=None, on=None, json=True, diff_litellm=True)
    assert cli_prices.handle(args) == 0
    out = capsys.readouterr().out
    assert '"differences"' in out and '"not_in_litellm"' in out


# --- record_response never raises after a paid call (responses without usage) ---------------

def _meter(**config: Any) -> Any:
    """A real BudgetMeter on a memory store (the reservation path goes through it)."""
    from datetime import datetime, timezone

    from otel_budget import BudgetConfig, BudgetMeter
    from otel_budget.stores.memory import MemoryStore
    from tests.support.helpers import FakeClock

    reader = InMemoryMetricReader()
    meter = BudgetMeter(
        BudgetConfig(**{"daily_cap_usd": 5.0, "instance_id": "a", "collect_interval_s": 3600,
                        **config}),
        store=MemoryStore(), metric_readers=[reader],
        clock=FakeClock(datetime(2026, 11, 25, 12, 0, tzinfo=timezone.utc)),
        prices=PriceTable.load_default(environ={}))
    return meter, reader


def _spend_points(reader: InMemoryMetricReader) -> list[tuple[dict[str, Any], float]]:
    data = reader.get_metrics_data()
    assert data is not None
    return [({k: v for k, v in (p.attributes or {}).items() if k != "otel_budget.writer.id"},
             float(getattr(p, "value", 0)))
            for rm in data.resource_metrics for sm in rm.scope_metrics
            for m in sm.metrics if m.name == "llm.spend" for p in m.data.data_points]


def _stream_chunk_without_usage(content: str | None = None) -> Any:
    """The last chunk of an OpenAI stream made without stream_options.include_usage."""
    delta = {"role": "assistant", **({"content": content} if content else {})}
    return chat.ChatCompletionChunk.model_validate({
        "id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o",
        "choices": [{"index": 0, "delta": delta, "finish_reason": "stop"}]})


def test_openai_stream_without_usage_settles_the_reservation_at_its_maximum(
        caplog: pytest.LogCaptureFixture) -> None:
    meter, reader = _meter()
    chunk = _stream_chunk_without_usage()
    assert chunk.usage is None
    with caplog.at_level(logging.WARNING, logger="otel_budget"):
        for _ in range(3):
            with meter.reserve(0.072, {"agent": "coder"}) as r:
                assert meter.record_response(chunk, {"agent": "coder"}, reservation=r) == 0.072
    assert meter.daily_spend() == pytest.approx(0.216, abs=1e-9)
    assert meter.reserved_usd() == 0.0
    assert meter.unpriced_calls() == 3 and meter.health()["unpriced_calls"] == 3
    assert meter.health()["unsettled_usd"] == 0.0  # settled, as an estimate
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert 'stream_options={"include_usage": True}' in warnings[0]
    meter.collect()
    [(attrs, value)] = _spend_points(reader)
    assert attrs == {"agent": "coder", "gen_ai.request.model": "gpt-4o",
                     "gen_ai.response.model": "gpt-4o", "gen_ai.provider.name": "openai",
                     "otel_budget.settlement": "estimated"}
    assert value == pytest.approx(0.216, abs=1e-9)
    meter.shutdown()


def test_a_response_without_usage_outside_a_reservation_records_an_estimate() -> None:
    meter, _ = _meter()
    # 400 characters of visible output ~ 100 tokens at gpt-4o's $10 per MTok output rate.
    chunk = _stream_chunk_without_usage("x" * 400)
    assert meter.record_response(chunk) == usd((100, "10"))
    # An Anthropic Message whose usage is missing (the SDK class, built without it).
    message = anthropic_types.Message.model_construct(
        id="m1", type="message", role="assistant", model="claude-sonnet-4-20250514",
        content=[anthropic_types.TextBlock(type="text", text="y" * 80)],
        stop_reason="end_turn", stop_sequence=None, usage=None)
    assert meter.record_response(message) == usd((20, "15"))  # Sonnet 4 output $15
    assert meter.unpriced_calls() == 2
    # Not a provider response at all: nothing to price, but never an exception after the
    # call; counted as unpriced so it shows.
    assert meter.record_response(object()) == 0.0
    assert meter.unpriced_calls() == 3
    meter.shutdown()


def test_record_response_keeps_the_callers_model_and_adds_the_response_id() -> None:
    meter, reader = _meter()
    msg = anthropic_message("claude-opus-4-1-20250805", input_tokens=1000, output_tokens=100)
    cost = meter.record_response(msg, {"gen_ai.request.model": "claude-opus-4-1",
                                       "agent": "coder"})
    assert cost == usd((1000, "15"), (100, "75"))
    meter.record_response(msg, {"agent": "coder"})
    meter.collect()
    attrs = sorted((a for a, _ in _spend_points(reader)),
                   key=lambda a: a["gen_ai.request.model"])
    assert [(a["gen_ai.request.model"], a["gen_ai.response.model"]) for a in attrs] == [
        ("claude-opus-4-1", "claude-opus-4-1-20250805"),
        ("claude-opus-4-1-20250805", "claude-opus-4-1-20250805")]
    meter.shutdown()


def test_the_readmes_opus_month_budget_counts_a_dated_response_id() -> None:
    from otel_budget import Budget

    meter, _ = _meter(budgets=[Budget("opus-month", 400.0, period="month",
                                      match={"gen_ai.request.model": "claude-opus-4*"})])
    msg = anthropic_message("claude-opus-4-1-20250805", input_tokens=1000, output_tokens=100)
    one = usd((1000, "15"), (100, "75"))
    meter.record_response(msg, {"agent": "coder"})  # no model passed: the response's id
    meter.record_response(msg, {"agent": "coder", "gen_ai.request.model": "claude-opus-4-1"})
    meter.record_response(anthropic_message(input_tokens=10, output_tokens=10))  # Sonnet
    opus = next(b for b in meter.budgets() if b["name"] == "opus-month")
    assert opus["spend_usd"] == pytest.approx(2 * one, abs=1e-9) and opus["window"] == "2026-11"
    meter.shutdown()
