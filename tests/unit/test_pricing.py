"""The price table and per-call pricing: exact, hand-computed cases from prices.toml."""

from __future__ import annotations

import argparse
import json
from datetime import date
from decimal import Decimal
from pathlib import Path
from urllib.parse import urlparse

import pytest

from otel_budget.cli import prices as cli_prices
from otel_budget.errors import ConfigError, UnknownModelError
from otel_budget.pricing import (
    ModelPrice,
    PriceTable,
    TokenUsage,
    check_token_counts,
    price_call,
)

DAY = date(2026, 11, 25)
PROVIDERS = {"anthropic", "openai", "gcp.gemini"}


@pytest.fixture(scope="module")
def table() -> PriceTable:
    return PriceTable.load_default(environ={})


# --- the packaged table ----------------------------------------------------------------

def test_packaged_table_has_provenance_for_every_model(table: PriceTable) -> None:
    assert table.version == "2026.11.25"
    providers = {p.provider for p in table}
    assert providers == PROVIDERS  # all three providers are covered
    for price in table:
        assert price.provider in PROVIDERS, price.model
        assert urlparse(price.source).scheme == "https", price.model
        # Not checked in the future (entries added after the version date say so).
        assert DAY.replace(month=1, day=1) <= date.fromisoformat(price.checked), price.model
        assert date.fromisoformat(price.checked) <= date.today(), price.model
        rates = price.rates
        assert rates.input > 0 and rates.output > rates.input, price.model
        # A cache hit is never dearer than plain input; a cache write never cheaper.
        assert rates.cached_input <= rates.input <= rates.cache_write, price.model


# --- hand-computed prices ----------------------------------------------------------------

def test_claude_sonnet_4_dated_id_with_cache_reads_and_writes(table: PriceTable) -> None:
    price = table.resolve("claude-sonnet-4-20250514", on=DAY)
    assert price.model == "claude-sonnet-4"
    # 1000 x $3 + 500 x $15 + 2000 x $0.30 + 400 x $3.75 = 12,600 USD/MTok-units
    assert price_call(price, 1000, 500, cached_input_tokens=2000, cache_write_tokens=400) \
        == 0.0126


def test_claude_small_call_has_no_float_noise(table: PriceTable) -> None:
    price = table.resolve("claude-sonnet-4-5", on=DAY)
    # 3 x $3 + 7 x $15 = $114 per million tokens-units -> 0.000114 exactly
    cost = price_call(price, 3, 7)
    assert cost == 0.000114
    assert repr(cost) == "0.000114"


def test_openai_usage_is_split_before_pricing(table: PriceTable) -> None:
    usage = TokenUsage.from_openai(prompt_tokens=12_000, completion_tokens=800,
                                   cached_tokens=10_000)
    assert usage == TokenUsage(2_000, 800, 10_000, 0)
    price = table.resolve("gpt-6.2-sol", on=DAY)
    # 2000 x $2 + 800 x $10 + 10000 x $0.10 = 13,000
    assert price_call(price, *usage) == 0.013


def test_long_context_rates_apply_to_the_whole_request_above_the_threshold(
    table: PriceTable,
) -> None:
    price = table.resolve("gpt-6.2-sol", on=DAY)
    # Exactly 272,000 prompt tokens is still the short-context tier: 272000 x $2.
    assert price_call(price, 272_000, 0) == 0.544
    # 300,000 prompt tokens (100k fresh + 200k cached): 100000 x $4 + 200000 x $0.20
    # + 1000 output x $15 = 455,000.
    assert price_call(price, 100_000, 1_000, cached_input_tokens=200_000) == 0.455


def test_haiku_5_5_band_counts_cache_tokens_in_the_prompt(table: PriceTable) -> None:
    price = table.resolve("claude-haiku-5-5", on=DAY)
    # 90k input + 20k cache read = 110k prompt > 100k: 90000 x $0.50 + 20000 x $0.05
    # + 1000 x $2.50 = 48,500
    assert price_call(price, 90_000, 1_000, cached_input_tokens=20_000) == 0.0485
    # 90k alone stays in the low band: 90000 x $0.10 + 1000 x $0.50 = 9,500
    assert price_call(price, 90_000, 1_000) == 0.0095


def test_gemini_usage_counts_thoughts_as_output(table: PriceTable) -> None:
    usage = TokenUsage.from_gemini(prompt_token_count=5_000, candidates_token_count=300,
                                   cached_content_token_count=4_000, thoughts_token_count=700)
    assert usage == TokenUsage(1_000, 1_000, 4_000, 0)
    price = table.resolve("gemini-4-neon", on=DAY)
    # 1000 x $3 + 1000 x $15 + 4000 x $0.15 = 18,600
    assert price_call(price, *usage) == 0.0186


def test_scheduled_price_change_applies_from_its_day(table: PriceTable) -> None:
    before = table.resolve("gemini-4-argon", on=date(2026, 11, 30))
    after = table.resolve("gemini-4-argon", on=date(2026, 12, 1))
    assert price_call(before, 1_000_000, 0) == 2.0
    assert price_call(after, 1_000_000, 0) == 4.0
    assert price_call(after, 0, 0, cached_input_tokens=1_000_000) == 0.2


def test_costs_round_half_even_to_one_nano_dollar() -> None:
    tiny = ModelPrice.flat("0.0015", "0.0025")
    assert price_call(tiny, 1, 0) == 0.000000002  # 1.5e-9 -> 2e-9
    assert price_call(tiny, 0, 1) == 0.000000002  # 2.5e-9 -> 2e-9 (half to even)
    assert price_call(tiny, 0, 0) == 0.0


def test_flat_price_defaults_cache_rates_to_input() -> None:
    price = ModelPrice.flat(2, 8)
    assert price.rates.cached_input == price.rates.cache_write == Decimal(2)


# --- resolution ----------------------------------------------------------------------

@pytest.mark.parametrize(("model", "family", "how"), [
    ("claude-sonnet-4", "claude-sonnet-4", "exact"),
    ("claude-sonnet-4-0", "claude-sonnet-4", "alias"),
    ("claude-sonnet-4-20250514", "claude-sonnet-4", "alias"),
    ("claude-sonnet-4-6-20260217", "claude-sonnet-4-6", "dated"),
    ("claude-sonnet-4-5-20250929", "claude-sonnet-4-5", "alias"),
    ("claude-sonnet-4-5@20250929", "claude-sonnet-4-5", "dated"),
    ("claude-opus-4-8@20260101", "claude-opus-4-8", "dated"),
    ("gpt-6-sol-2026-09-22", "gpt-6-sol", "dated"),
    ("gpt-6.2-astra-2026-11-17", "gpt-6.2-astra", "dated"),
    ("  Claude-Haiku-4-5 ", "claude-haiku-4-5", "exact"),
])
def test_ids_resolve_to_their_family(
    table: PriceTable, model: str, family: str, how: str
) -> None:
    found = table.match(model)
    assert found is not None
    assert (found[0].model, found[1]) == (family, how)


@pytest.mark.parametrize("model", [
    "gpt-7", "claude-sonnet-4-7", "gpt-6-astra-fast", "claude-sonnet-4-2025", "",
])
def test_unknown_model_raises_naming_it(table: PriceTable, model: str) -> None:
    with pytest.raises(UnknownModelError) as info:
        table.resolve(model, on=DAY)
    assert repr(model) in str(info.value)
    assert isinstance(info.value, KeyError)  # callers catching KeyError keep working


def test_fallback_prices_unknown_models_and_says_so(table: PriceTable) -> None:
    priced = table.with_fallback(ModelPrice.flat(3, 15, provider="local"))
    price = priced.resolve("my-local-llama", on=DAY)
    assert price.is_fallback and price.model == "my-local-llama"
    assert price.provider == "local"
    assert price_call(price, 1000, 1000) == 0.018
    known = priced.resolve("claude-haiku-4-5", on=DAY)
    assert not known.is_fallback


# --- token counts ---------------------------------------------------------------------

@pytest.mark.parametrize("position", range(4))
@pytest.mark.parametrize(("bad", "error"), [
    (-1, ValueError), (1.0, TypeError), ("10", TypeError), (True, TypeError),
    (None, TypeError), (Decimal(5), TypeError),
])
def test_bad_token_counts_are_rejected_naming_the_argument(
    table: PriceTable, position: int, bad: object, error: type[Exception]
) -> None:
    names = ("input_tokens", "output_tokens", "cached_input_tokens", "cache_write_tokens")
    counts: list[object] = [10, 10, 10, 10]
    counts[position] = bad
    price = table.resolve("claude-haiku-4-5", on=DAY)
    with pytest.raises(error, match=names[position]):
        price_call(price, *counts)  # type: ignore[arg-type]
    with pytest.raises(error, match=names[position]):
        check_token_counts(*counts)


def test_cached_part_cannot_exceed_the_total() -> None:
    with pytest.raises(ValueError, match="cached_tokens"):
        TokenUsage.from_openai(prompt_tokens=10, completion_tokens=0, cached_tokens=11)


# --- user files -------------------------------------------------------------------------

USER_FILE = """
version = "mine-3"

[models."claude-sonnet-4"]
provider = "anthropic"
input = 1.5
output = 7.5
cached_input = 0.15
cache_write = 1.875
source = "https://example.com/our-negotiated-rates"
checked = 2026-11-20

[models."acme-chat"]
provider = "acme"
input = 0.5
output = 1
cached_input = 0.05
cache_write = 0.5
aliases = ["acme"]
prefixes = ["acme-chat-", "acme-chat-large-"]
source = "https://acme.example/pricing"
checked = "2026-11-01"

[models."acme-chat-large"]
provider = "acme"
input = 2
output = 4
cached_input = 0.2
cache_write = 2
prefixes = ["acme-chat-large-v"]
source = "https://acme.example/pricing"
checked = 2026-11-01
"""


def _write(tmp_path: Path, text: str, name: str = "prices.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_user_file_overrides_and_extends_the_packaged_table(tmp_path: Path) -> None:
    path = _write(tmp_path, USER_FILE)
    table = PriceTable.load_default(environ={"OTEL_BUDGET_PRICES": str(path)})
    assert table.version == "2026.11.25+mine-3"
    assert table.sources[-1] == str(path)
    # Overridden: the user entry replaces the packaged one whole (its aliases too), and a
    # dated id still reaches it by dropping the date.
    sonnet = table.resolve("claude-sonnet-4-20250514", on=DAY)
    assert sonnet.source == "https://example.com/our-negotiated-rates"
    assert price_call(sonnet, 1000, 1000) == 0.009
    # Extended: a new model, its alias and the longest matching prefix.
    assert table.resolve("acme", on=DAY).model == "acme-chat"
    assert table.match("acme-chat-2") == (table.models["acme-chat"], "prefix")
    assert table.match("acme-chat-large-v2")[0].model == "acme-chat-large"  # type: ignore[index]
    # Untouched packaged entries are still there.
    assert table.resolve("gpt-6-luna", on=DAY).provider == "openai"


def test_user_file_alone(tmp_path: Path) -> None:
    table = PriceTable.load(_write(tmp_path, USER_FILE), include_packaged=False)
    assert sorted(table.models) == ["acme-chat", "acme-chat-large", "claude-sonnet-4"]
    with pytest.raises(UnknownModelError):
        table.resolve("gpt-6-luna", on=DAY)


def test_empty_env_variable_means_packaged_only() -> None:
    table = PriceTable.load_default(environ={"OTEL_BUDGET_PRICES": "  "})
    assert table.version == "2026.11.25"


GOOD_ENTRY = """
[models."m"]
provider = "p"
input = 1
output = 2
cached_input = 0.1
cache_write = 1.25
source = "https://example.com"
checked = 2026-11-25
"""


@pytest.mark.parametrize(("text", "field"), [
    ('version = "x"\n[models."m"\ninput = 1', "invalid TOML"),
    ('version = "x"\n', "'models'"),
    (GOOD_ENTRY.replace("cached_input = 0.1\n", ""), 'models."m".cached_input'),
    (GOOD_ENTRY.replace("input = 1\n", "input = -1\n"), 'models."m".input'),
    (GOOD_ENTRY.replace("output = 2", 'output = "two"'), 'models."m".output'),
    (GOOD_ENTRY.replace("output = 2", "output = true"), 'models."m".output'),
    (GOOD_ENTRY.replace("output = 2", "output = nan"), 'models."m".output'),
    (GOOD_ENTRY.replace("cache_write", "cache_read"), 'models."m".cache_read'),
    (GOOD_ENTRY.replace('provider = "p"\n', ""), 'models."m".provider'),
    (GOOD_ENTRY.replace("checked = 2026-11-25", 'checked = "last week"'), 'models."m".checked'),
    (GOOD_ENTRY + "aliases = 'm2'\n", 'models."m".aliases'),
    (GOOD_ENTRY + '[models."m".long_context]\nthreshold_tokens = 0\n',
     'models."m".long_context.threshold_tokens'),
    (GOOD_ENTRY + '[models."m".long_context]\nthreshold_tokens = 10\ninput = 1\n',
     'models."m".long_context.output'),
    (GOOD_ENTRY + '[[models."m".changes]]\nfrom = 2027-01-01\ninput = 1\noutput = 1\n'
     'cached_input = 1\ncache_write = 1\n[[models."m".changes]]\nfrom = 2026-12-01\n'
     'input = 1\noutput = 1\ncached_input = 1\ncache_write = 1\n', 'models."m".changes'),
    (GOOD_ENTRY + 'aliases = ["x"]\n' + GOOD_ENTRY.replace('"m"', '"n"')
     + 'aliases = ["x"]\n', "'x' is already used"),
])
def test_bad_price_files_raise_config_error_naming_file_and_field(
    tmp_path: Path, text: str, field: str
) -> None:
    path = _write(tmp_path, text, "bad.toml")
    with pytest.raises(ConfigError) as info:
        PriceTable.load(path)
    message = str(info.value)
    assert str(path) in message
    assert field in message


def test_missing_price_file_is_a_config_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match=r"nope\.toml"):
        PriceTable.load_default(environ={"OTEL_BUDGET_PRICES": str(missing)})


# --- CLI -------------------------------------------------------------------------------

def _cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="otel-budget")
    cli_prices.register(parser.add_subparsers())
    args = parser.parse_args(["prices", *argv])
    result: int = args.func(args)
    return result


def test_cli_lists_every_model_with_source_and_date(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, table: PriceTable
) -> None:
    monkeypatch.delenv("OTEL_BUDGET_PRICES", raising=False)
    assert _cli() == 0
    out = capsys.readouterr().out
    for price in table:
        line = next(ln for ln in out.splitlines() if ln.startswith(price.model + " ")
                    or ln.startswith(price.model + "* "))
        assert price.source in line and price.checked in line


def test_cli_shows_one_resolved_model_as_json(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OTEL_BUDGET_PRICES", raising=False)
    assert _cli("claude-sonnet-4-20250514", "--json") == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["model"] == "claude-sonnet-4" and shown["matched_by"] == "alias"
    assert shown["input"] == 3.0 and shown["cache_write"] == 3.75
    assert shown["checked"] == "2026-11-25" and shown["source"].startswith("https://")


def test_cli_unknown_model_is_a_budget_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTEL_BUDGET_PRICES", raising=False)
    with pytest.raises(UnknownModelError, match="gpt-7"):
        _cli("gpt-7")


# --- the integer pricing path ---------------------------------------------------------------

def test_integer_pricing_equals_the_decimal_path_for_every_model_and_many_calls(
    table: PriceTable,
) -> None:
    import random

    from otel_budget.pricing.table import price_call_decimal, price_call_nanos

    rng = random.Random(20261125)
    integer_paths = 0
    for price in table:
        for tier in ("standard", "batch", "priority"):
            for _ in range(40):
                usage = check_token_counts(
                    rng.choice([0, 1, 7, rng.randrange(10**6), rng.randrange(10**9)]),
                    rng.choice([0, 3, rng.randrange(10**5), rng.randrange(10**8)]),
                    rng.choice([0, rng.randrange(10**6)]), rng.choice([0, rng.randrange(10**5)]),
                    rng.choice([0, rng.randrange(10**5)]), rng.choice([0, 0, 2]), tier)
                exact = price_call_decimal(price, usage)
                nanos = price_call_nanos(price, usage)
                assert nanos == int(exact.scaleb(9)), (price.model, usage)
                assert nanos / 1e9 == float(exact)  # what record_usage records
                integer_paths += price.rates.femto_usd_per_token is not None
    assert integer_paths > 0.9 * len(table) * 120, "the integer path is the usual one"


@pytest.mark.parametrize("input_tokens, expected_nanos", [
    (1, 0), (2, 0), (3, 1), (6, 2), (10, 2)])  # 0.25 nano-USD per token: half to even
def test_integer_pricing_rounds_half_to_even_like_the_decimal_path(
    input_tokens: int, expected_nanos: int
) -> None:
    from otel_budget.pricing.table import price_call_decimal, price_call_nanos

    price = ModelPrice.flat("0.00025", "0")  # USD per million tokens
    usage = check_token_counts(input_tokens, 0)
    assert price.rates.femto_usd_per_token == (250_000, 0, 250_000, 250_000, 250_000)
    assert price_call_nanos(price, usage) == expected_nanos
    assert int(price_call_decimal(price, usage).scaleb(9)) == expected_nanos


def test_rates_finer_than_the_integer_unit_take_the_decimal_path() -> None:
    from otel_budget.pricing.table import price_call_decimal, price_call_nanos

    price = ModelPrice.flat("0.0000000001", "1")  # 1e-10 USD per million tokens
    assert price.rates.femto_usd_per_token is None
    usage = check_token_counts(10**12, 10**6)
    assert price_call_nanos(price, usage) == int(price_call_decimal(price, usage).scaleb(9))


# --- no silent $0: normalised ids, fine-tunes, the conservative default ----------------------

@pytest.mark.parametrize(("model", "entry"), [
    ("claude-sonnet-4.5", "claude-sonnet-4-5"),
    ("openrouter/anthropic/claude-sonnet-4.5", "claude-sonnet-4-5"),
    ("anthropic/claude-opus-4.1", "claude-opus-4-1"),
    ("ft:gpt-4o-mini-2024-07-18:acme::abc123", "ft:gpt-4o-mini"),  # the fine-tuned rates
    ("ft:gpt-4o-2024-08-06:acme:support:xyz", "ft:gpt-4o"),
    ("ft:gpt-4.1-mini-2025-04-14:acme::abc", "gpt-4.1-mini"),  # none listed: base rates
    ("gpt-4-0613", "gpt-4"),
])
def test_normalised_ids_find_their_entry(table: PriceTable, model: str, entry: str) -> None:
    price = table.price(model, on=DAY)
    assert price.model == entry and not price.is_fallback


def test_fine_tuned_rates_are_the_published_ones(table: PriceTable) -> None:
    tuned = table.price("ft:gpt-4o-mini-2024-07-18:acme::abc123", on=DAY)
    # OpenAI's fine-tuned gpt-4o-mini: $0.30 input, $0.15 cached, $1.20 output per MTok.
    assert price_call(tuned, 1_000_000, 1_000_000, 1_000_000) == 0.30 + 0.15 + 1.20
    base = table.price("gpt-4o-mini", on=DAY)
    assert price_call(base, 1000, 1000) < price_call(tuned, 1000, 1000)


def _most_expensive(prices: list[ModelPrice]) -> ModelPrice:
    return max(prices, key=lambda p: (p.rates.input + p.rates.output, p.model))


def test_unknown_ids_get_the_conservative_default(table: PriceTable) -> None:
    # A future dated id of a known line: the most expensive entry of that line.
    future = table.price("claude-sonnet-4-7-20261201", on=DAY)
    line = _most_expensive([p.as_of(DAY) for p in table
                            if p.model == "claude-sonnet-4"
                            or p.model.startswith("claude-sonnet-4-")])
    assert future.is_fallback and future.estimated_from == line.model
    assert future.rates == line.rates and future.model == "claude-sonnet-4-7-20261201"
    # A deployment name behind an Azure route: the most expensive OpenAI entry.
    azure = table.price("azure/my-gpt4o-deployment", on=DAY)
    top_openai = _most_expensive([p.as_of(DAY) for p in table if p.provider == "openai"])
    assert azure.is_fallback and azure.rates == top_openai.rates
    assert "conservative default" in azure.note and top_openai.model in azure.note
    # Nothing to go by: the most expensive entry of the table.
    nothing = table.estimate("totally-new-model", on=DAY)
    assert nothing.rates == _most_expensive([p.as_of(DAY) for p in table]).rates
    # find() and resolve() stay strict: the estimate is not a match.
    assert table.find("claude-sonnet-4-7-20261201", on=DAY) is None


ISSUE_IDS = ["claude-sonnet-4.5", "openrouter/anthropic/claude-sonnet-4.5",
             "azure/my-gpt4o-deployment", "ft:gpt-4o-mini-2024-07-18:acme::abc123",
             "claude-sonnet-4-7-20261201"]


@pytest.mark.parametrize("model", ISSUE_IDS)
def test_every_id_of_the_issue_is_priced_above_zero(table: PriceTable, model: str) -> None:
    from opentelemetry.sdk.metrics import MeterProvider

    from otel_budget.usage import UsageRecorder

    recorded: list[tuple[float, dict[str, object]]] = []
    usage = UsageRecorder(
        record=lambda usd, attrs: recorded.append((usd, dict(attrs or {}))),
        otel_meter=MeterProvider().get_meter("t"), prices=table, token_metrics=False,
        day=lambda: DAY)
    cost = usage.record_usage(model, 1000, 1000)
    assert cost > 0 and recorded == [(cost, recorded[0][1])]
    assert recorded[0][1]["gen_ai.request.model"] == model
    assert usage.estimate_usd(model, 1000, 1000) == cost
    estimated = table.find(model, on=DAY) is None
    assert (recorded[0][1].get("otel_budget.settlement") == "estimated") is estimated
    assert usage.unpriced_calls() == (1 if estimated else 0)


def test_a_zero_fallback_price_restores_zero(table: PriceTable) -> None:
    zero = PriceTable.load_default({"OTEL_BUDGET_FALLBACK_PRICE": "0,0"})
    price = zero.price("azure/my-gpt4o-deployment", on=DAY)
    assert price.is_fallback and price_call(price, 1000, 1000) == 0.0
    assert not price.estimated_from
