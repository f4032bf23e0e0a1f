"""Input refused at the door (issue 17, item 7): integer attributes outside int64
(the OTLP exporter would drop them, merging two series) and budgets files that are
too big or nested too deeply (a clear ConfigError, never MemoryError or
RecursionError)."""

from __future__ import annotations

from pathlib import Path

import pytest

from otel_budget import BudgetConfig, BudgetMeter, ConfigError
from otel_budget.stores.memory import MemoryStore


@pytest.mark.parametrize("value", [2**63, -(2**63) - 1, 10**30, [1, 10**30]])
def test_an_integer_attribute_outside_int64_is_refused_and_nothing_recorded(
    value: object,
) -> None:
    meter = BudgetMeter(BudgetConfig(daily_cap_usd=10.0, instance_id="bounds"),
                       store=MemoryStore())
    try:
        with pytest.raises(ValueError, match="64-bit"):
            meter.record(1.0, {"tokens": value})
        assert meter.health()["instance_spend_usd"] == 0.0
        assert meter.health()["attribute_sets_today"] == 0
        meter.record(1.0, {"tokens": 2**63 - 1})  # the edges are fine
        meter.record(1.0, {"tokens": -(2**63)})
        assert meter.health()["instance_spend_usd"] == 2.0
    finally:
        meter.shutdown(timeout=1)


def _from_file(path: Path | str) -> BudgetConfig:
    return BudgetConfig.from_env({"OTEL_BUDGET_BUDGETS_FILE": str(path)})


GOOD = '[[budget]]\nname = "team"\ncap_usd = 5.0\nmatch = { agent = ["a", "b"] }\n'


def test_a_normal_budgets_file_still_loads(tmp_path: Path) -> None:
    path = tmp_path / "budgets.toml"
    path.write_text(GOOD)
    assert [b.name for b in _from_file(path).budgets] == ["team"]


def test_dev_zero_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="larger than"):
        _from_file("/dev/zero")


def test_a_file_over_one_mib_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "budgets.toml"
    path.write_text(GOOD + "# padding\n" * 120_000)
    with pytest.raises(ConfigError, match="larger than"):
        _from_file(path)


@pytest.mark.parametrize("opening", ["[", "{a="])
def test_deep_nesting_is_a_config_error(tmp_path: Path, opening: str) -> None:
    path = tmp_path / "budgets.toml"
    closing = "]" if opening == "[" else "}"
    path.write_text(f"x = {opening * 100_000}1{closing * 100_000}\n" + GOOD)
    with pytest.raises(ConfigError, match="nested"):
        _from_file(path)


def test_moderate_nesting_past_the_bound_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "budgets.toml"
    path.write_text(f"x = {'[' * 40}1{']' * 40}\n" + GOOD)  # parses; still refused
    with pytest.raises(ConfigError, match="nested"):
        _from_file(path)


def test_a_file_that_is_not_utf8_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "budgets.toml"
    path.write_bytes(b"\xff\xfe" + GOOD.encode())
    with pytest.raises(ConfigError, match="UTF-8"):
        _from_file(path)
