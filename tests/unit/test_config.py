"""BudgetConfig: validation, defaults, the environment, and what its repr may show."""

from __future__ import annotations

import dataclasses
import math
import os
import socket
from typing import Any

import pytest

from otel_budget import BudgetConfig, ConfigError

BASE_ENV = {"OTEL_BUDGET_DAILY_CAP_USD": "50"}


def test_defaults_follow_the_design() -> None:
    config = BudgetConfig(daily_cap_usd=50.0)
    assert config.daily_cap_usd == 50.0
    assert config.alert_ratios == (0.8,)
    assert config.checkpoint_every == 10
    # Freshness by default: a checkpoint (a merge returning the fleet) every 5 s.
    assert config.collect_interval_s == 0.5
    assert config.checkpoint_every * config.collect_interval_s <= 7.5
    assert BudgetConfig.from_env({**BASE_ENV, "OTEL_BUDGET_COLLECT_INTERVAL_S": "0.5"}
                                 ).collect_interval_s == 0.5
    assert config.timezone == "UTC"
    assert config.instance_id is None
    assert config.sibling == "ag_lu"
    assert config.store_url == "sqlite:///otel_budget.db"
    assert config.service_name == "otel-budget"
    assert str(config.tzinfo) == "UTC"


def test_config_is_frozen_and_numbers_are_normalised() -> None:
    config = BudgetConfig(daily_cap_usd=50, alert_ratios=[0.95, 0.8, 0.8],  # type: ignore[arg-type]
                          collect_interval_s=5)
    assert isinstance(config.daily_cap_usd, float)
    assert isinstance(config.collect_interval_s, float)
    assert config.alert_ratios == (0.8, 0.95)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.daily_cap_usd = 1.0  # type: ignore[misc]


def test_boundary_values_are_accepted() -> None:
    config = BudgetConfig(daily_cap_usd=1e-6, alert_ratios=(1.0, 1e-9), checkpoint_every=1,
                          collect_interval_s=0.01, timezone="Pacific/Chatham")
    assert config.alert_ratios == (1e-9, 1.0)
    assert config.tzinfo.key == "Pacific/Chatham"


@pytest.mark.parametrize(("field", "value", "shown"), [
    ("daily_cap_usd", 0, "0"),
    ("daily_cap_usd", -5.0, "-5.0"),
    ("daily_cap_usd", math.nan, "nan"),
    ("daily_cap_usd", math.inf, "inf"),
    ("daily_cap_usd", True, "True"),
    ("daily_cap_usd", "50", "'50'"),
    ("alert_ratios", (0.8, 0.0), "0.0"),
    ("alert_ratios", (1.5,), "1.5"),
    ("alert_ratios", (-0.2,), "-0.2"),
    ("alert_ratios", (math.nan,), "nan"),
    ("alert_ratios", (True,), "True"),
    ("alert_ratios", ("0.8",), "'0.8'"),
    ("alert_ratios", "0.8", "'0.8'"),
    ("alert_ratios", 0.8, "0.8"),
    ("checkpoint_every", 0, "0"),
    ("checkpoint_every", -3, "-3"),
    ("checkpoint_every", 2.5, "2.5"),
    ("checkpoint_every", 10.0, "10.0"),
    ("checkpoint_every", True, "True"),
    ("checkpoint_every", "10", "'10'"),
    ("collect_interval_s", 0, "0"),
    ("collect_interval_s", -1.0, "-1.0"),
    ("collect_interval_s", math.nan, "nan"),
    ("collect_interval_s", math.inf, "inf"),
    ("collect_interval_s", "60", "'60'"),
    ("collect_interval_s", False, "False"),
    ("timezone", "Mars/Olympus_Mons", "'Mars/Olympus_Mons'"),
    ("timezone", "", "''"),
    ("timezone", "../../etc/passwd", "'../../etc/passwd'"),
    ("timezone", 5, "5"),
    ("instance_id", "", "''"),
    ("instance_id", "x" * 201, "'xxxx"),
    ("sibling", "  ", "'  '"),
    ("service_name", 7, "7"),
])
def test_invalid_values_name_the_field_and_the_value(field: str, value: Any, shown: str) -> None:
    kwargs: dict[str, Any] = {"daily_cap_usd": 50.0, field: value}
    with pytest.raises(ConfigError) as info:
        BudgetConfig(**kwargs)
    message = str(info.value)
    assert field in message, message
    assert shown in message, message


def test_config_error_is_a_value_error() -> None:
    # callers who catch ValueError for bad input keep working
    with pytest.raises(ValueError):
        BudgetConfig(daily_cap_usd=-1.0)


def test_store_url_must_be_a_url() -> None:
    with pytest.raises(ConfigError, match="store_url"):
        BudgetConfig(daily_cap_usd=1.0, store_url="otel_budget.db")


# --- the environment ---------------------------------------------------------------------

def test_from_env_reads_every_variable() -> None:
    env = {
        "OTEL_BUDGET_DAILY_CAP_USD": "125.5",
        "OTEL_BUDGET_ALERT_RATIOS": "0.95, 0.8",
        "OTEL_BUDGET_CHECKPOINT_EVERY": "3",
        "OTEL_BUDGET_COLLECT_INTERVAL_S": "2.5",
        "OTEL_BUDGET_TIMEZONE": "Europe/Berlin",
        "OTEL_BUDGET_INSTANCE_ID": "dispatcher-1",
        "OTEL_BUDGET_SIBLING": "ag_mo",
        "OTEL_BUDGET_STORE": "sqlite:////var/lib/budget.db",
        "OTEL_SERVICE_NAME": "quilt-dispatcher",
        "OTEL_RESOURCE_ATTRIBUTES": "service.instance.id=from-resource",
    }
    config = BudgetConfig.from_env(env)
    assert config == BudgetConfig(
        daily_cap_usd=125.5, alert_ratios=(0.8, 0.95), checkpoint_every=3,
        collect_interval_s=2.5, timezone="Europe/Berlin", instance_id="dispatcher-1",
        sibling="ag_mo", store_url="sqlite:////var/lib/budget.db",
        service_name="quilt-dispatcher",
    )


def test_from_env_defaults_to_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("OTEL_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("OTEL_BUDGET_DAILY_CAP_USD", "7")
    monkeypatch.setenv("OTEL_BUDGET_SIBLING", "ag_env")
    config = BudgetConfig.from_env()
    assert config.daily_cap_usd == 7.0 and config.sibling == "ag_env"
    assert config.alert_ratios == (0.8,) and config.store_url == "sqlite:///otel_budget.db"


def test_from_env_leaves_unset_and_blank_variables_at_their_defaults() -> None:
    config = BudgetConfig.from_env({**BASE_ENV, "OTEL_BUDGET_TIMEZONE": "  ",
                                    "OTEL_BUDGET_INSTANCE_ID": "", "OTEL_SERVICE_NAME": ""})
    assert config == BudgetConfig(daily_cap_usd=50.0)


def test_resource_attributes_give_the_default_instance_id() -> None:
    env = {**BASE_ENV, "OTEL_RESOURCE_ATTRIBUTES":
           "service.name=ignored, service.instance.id=pod%2D7%2Cb ,deployment.environment=prod"}
    assert BudgetConfig.from_env(env).instance_id == "pod-7,b", "values are URL-decoded"
    assert BudgetConfig.from_env(env).service_name == "otel-budget", (
        "OTEL_SERVICE_NAME, not the resource, names the service here"
    )


def test_instance_id_variable_wins_over_resource_attributes() -> None:
    env = {**BASE_ENV, "OTEL_BUDGET_INSTANCE_ID": "explicit",
           "OTEL_RESOURCE_ATTRIBUTES": "service.instance.id=from-resource"}
    assert BudgetConfig.from_env(env).instance_id == "explicit"


def test_keyword_overrides_win_over_the_environment() -> None:
    env = {**BASE_ENV, "OTEL_BUDGET_SIBLING": "ag_env"}
    config = BudgetConfig.from_env(env, sibling="ag_kw", daily_cap_usd=9.0)
    assert config.sibling == "ag_kw" and config.daily_cap_usd == 9.0


def test_missing_cap_names_the_variable() -> None:
    with pytest.raises(ConfigError, match="OTEL_BUDGET_DAILY_CAP_USD"):
        BudgetConfig.from_env({})


@pytest.mark.parametrize(("variable", "value"), [
    # values that do not parse
    ("OTEL_BUDGET_DAILY_CAP_USD", "fifty"),
    ("OTEL_BUDGET_ALERT_RATIOS", "0.8;0.9"),
    ("OTEL_BUDGET_CHECKPOINT_EVERY", "2.5"),
    ("OTEL_BUDGET_CHECKPOINT_EVERY", "ten"),
    ("OTEL_BUDGET_COLLECT_INTERVAL_S", "1m"),
    # values that parse but are out of range: a user who set the variable needs to be
    # told which variable, not only the dataclass field behind it
    ("OTEL_BUDGET_DAILY_CAP_USD", "-5"),
    ("OTEL_BUDGET_DAILY_CAP_USD", "nan"),
    ("OTEL_BUDGET_ALERT_RATIOS", "0.8,1.5"),
    ("OTEL_BUDGET_CHECKPOINT_EVERY", "0"),
    ("OTEL_BUDGET_COLLECT_INTERVAL_S", "0"),
    ("OTEL_BUDGET_COLLECT_INTERVAL_S", "0.1"),  # below the environment's minimum
    ("OTEL_BUDGET_TIMEZONE", "Mars/Olympus_Mons"),
    ("OTEL_BUDGET_STORE", "budget.db"),
])
def test_bad_environment_values_name_the_variable(variable: str, value: str) -> None:
    with pytest.raises(ConfigError) as info:
        BudgetConfig.from_env({**BASE_ENV, variable: value})
    message = str(info.value)
    assert variable in message, message
    assert value in message, message


# --- secrets and identity -----------------------------------------------------------------

@pytest.mark.parametrize("url", [
    "postgresql://budget:s3cr3t-PW@db.internal:5432/quilt",
    "postgresql://db.internal/quilt?sslmode=require&password=s3cr3t-PW",
    "supabase://project?key=s3cr3t-PW",
])
def test_repr_hides_store_secrets(url: str) -> None:
    config = BudgetConfig(daily_cap_usd=1.0, store_url=url)
    assert config.store_url == url, "the real URL is kept for opening the store"
    shown = repr(config)
    assert "s3cr3t-PW" not in shown
    assert "db.internal" in shown or "project" in shown, "the redacted URL is still shown"
    assert "s3cr3t-PW" not in str(config)


@pytest.mark.parametrize("url", [
    "postgresql:/budget:s3cr3t-PW@db.internal/quilt",   # one slash short
    "postgresql//budget:s3cr3t-PW@db.internal/quilt",   # colon missing
    "budget:s3cr3t-PW@db.internal:5432/quilt",          # scheme missing
])
def test_a_mistyped_store_url_does_not_leak_its_password(url: str) -> None:
    with pytest.raises(ConfigError, match="store_url") as info:
        BudgetConfig(daily_cap_usd=1.0, store_url=url)
    assert "s3cr3t-PW" not in str(info.value)
    with pytest.raises(ConfigError) as info:
        BudgetConfig.from_env({**BASE_ENV, "OTEL_BUDGET_STORE": url})
    assert "s3cr3t-PW" not in str(info.value)


def test_repr_of_a_config_read_from_the_environment_hides_the_password() -> None:
    config = BudgetConfig.from_env(
        {**BASE_ENV, "OTEL_BUDGET_STORE": "postgresql://u:s3cr3t-PW@h/db"}
    )
    assert "s3cr3t-PW" not in repr(config)


def test_resolved_instance_id() -> None:
    default = BudgetConfig(daily_cap_usd=1.0)
    assert default.resolved_instance_id() == f"{socket.gethostname()}-{os.getpid()}"
    assert BudgetConfig(daily_cap_usd=1.0, instance_id="pinned").resolved_instance_id() == "pinned"


def test_no_budget_at_all_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="no budget configured"):
        BudgetConfig()
    with pytest.raises(ConfigError, match="no budget configured"):
        BudgetConfig.from_env({})
