"""One list of environment variables: every one the package reads is in
otel_budget.environment, the configuration reference is generated from it, and a
variable's parse errors name it."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

import otel_budget
from otel_budget import BudgetConfig, ConfigError
from otel_budget.environment import VARIABLES, config_values, markdown_table
from tests.support.paths import ROOT

ROOT = ROOT
PACKAGE = Path(otel_budget.__file__).parent
# Read only by benchmarks (which live in tests/bench in a checkout).
BENCH_ONLY = {"OTEL_BUDGET_BENCH_POSTGRES_URL", "OTEL_BUDGET_BENCH_PGBOUNCER_URL"}


def test_every_variable_the_package_names_is_listed() -> None:
    listed = {v.name for v in VARIABLES}
    named: dict[str, str] = {}
    for path in PACKAGE.rglob("*.py"):
        for name in re.findall(r"\bOTEL_BUDGET_[A-Z0-9_]+", path.read_text()):
            named.setdefault(name, str(path.relative_to(PACKAGE)))
    unlisted = {n: where for n, where in named.items()
                if n not in listed and n not in BENCH_ONLY}
    assert not unlisted, f"variables read but not in environment.VARIABLES: {unlisted}"


def test_every_listed_field_is_a_budget_config_field() -> None:
    fields = {f.name for f in dataclasses.fields(BudgetConfig)}
    for var in VARIABLES:
        if var.field is not None:
            assert var.field in fields, var


def test_the_configuration_reference_is_the_generated_table() -> None:
    reference = (ROOT / "docs" / "configuration.md").read_text()
    assert markdown_table() in reference, (
        "docs/configuration.md is out of date: paste otel_budget.environment.markdown_table()")


def test_each_variable_reaches_its_field() -> None:
    env = {"OTEL_BUDGET_DAILY_CAP_USD": "12.5", "OTEL_BUDGET_ALERT_RATIOS": "0.5, 0.9",
           "OTEL_BUDGET_CHECKPOINT_EVERY": "3", "OTEL_BUDGET_TOKEN_METRICS": "TRUE",
           "OTEL_BUDGET_MODEL_ALIASES": "prod=claude-sonnet-4-5",
           "OTEL_BUDGET_SIBLING": "  reviewer ", "OTEL_BUDGET_MAX_CALL_USD": " "}
    values = {field: value for field, (_, value) in config_values(env).items()}
    assert values == {"daily_cap_usd": 12.5, "alert_ratios": (0.5, 0.9), "checkpoint_every": 3,
                      "token_metrics": True, "model_aliases": {"prod": "claude-sonnet-4-5"},
                      "sibling": "reviewer"}, "a blank variable counts as unset"
    config = BudgetConfig.from_env(env)
    assert (config.daily_cap_usd, config.checkpoint_every, config.sibling) == (12.5, 3, "reviewer")


def test_the_bound_on_a_per_key_budgets_keys_comes_from_the_environment() -> None:
    env = {"OTEL_BUDGET_DAILY_CAP_USD": "10", "OTEL_BUDGET_MAX_KEYS_PER_BUDGET": " 250 "}
    assert BudgetConfig.from_env(env).max_keys_per_budget == 250
    assert BudgetConfig.from_env({"OTEL_BUDGET_DAILY_CAP_USD": "10"}).max_keys_per_budget == (
        BudgetConfig(daily_cap_usd=10).max_keys_per_budget)
    assert BudgetConfig.from_env(env, max_keys_per_budget=7).max_keys_per_budget == 7


@pytest.mark.parametrize(("name", "raw"), [
    ("OTEL_BUDGET_MAX_KEYS_PER_BUDGET", "1e4"), ("OTEL_BUDGET_MAX_KEYS_PER_BUDGET", "0"),
    ("OTEL_BUDGET_DAILY_CAP_USD", "fifty"), ("OTEL_BUDGET_CHECKPOINT_EVERY", "2.5"),
    ("OTEL_BUDGET_ALERT_RATIOS", "0.8;0.9"), ("OTEL_BUDGET_TOKEN_METRICS", "yes"),
    ("OTEL_BUDGET_MODEL_ALIASES", "no-equals-sign"), ("OTEL_BUDGET_DAILY_CAP_USD", "-3"),
])
def test_a_bad_value_names_its_variable(name: str, raw: str) -> None:
    env = {"OTEL_BUDGET_DAILY_CAP_USD": "10", name: raw}
    with pytest.raises(ConfigError, match=name):
        BudgetConfig.from_env(env)


def test_variables_that_can_carry_credentials_are_marked_secret() -> None:
    secret = {v.name for v in VARIABLES if v.secret}
    assert {"OTEL_BUDGET_STORE", "OTEL_BUDGET_WEBHOOK_URL", "OTEL_BUDGET_MIGRATE_URL",
            "SUPABASE_SERVICE_ROLE_KEY"} <= secret
