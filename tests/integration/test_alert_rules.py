"""The Prometheus alerting rules in dashboards/ pass promtool, and promtool does
reject a broken copy (so these tests can fail): a syntax error, a wrong threshold, an
alert that is no longer per budget."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import yaml  # type: ignore[import-untyped,unused-ignore]

from tests.support.paths import ROOT

DASHBOARDS = ROOT / "dashboards"


def _promtool(promtool_bin: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool_bin, *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )


def test_rules_are_valid(promtool_bin: str) -> None:
    result = _promtool(promtool_bin, "check", "rules", "alerts.yaml", cwd=DASHBOARDS)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 5 rules found" in result.stdout


def test_rule_unit_tests_pass(promtool_bin: str) -> None:
    result = _promtool(promtool_bin, "test", "rules", "alerts.test.yaml", cwd=DASHBOARDS)
    assert result.returncode == 0, result.stdout + result.stderr


def test_scrape_config_is_valid_and_loads_the_rules(promtool_bin: str) -> None:
    result = _promtool(promtool_bin, "check", "config", "prometheus.yml", cwd=DASHBOARDS)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 rule files found" in result.stdout


def test_a_broken_rule_file_fails(promtool_bin: str, tmp_path: Path) -> None:
    text = (DASHBOARDS / "alerts.yaml").read_text()
    broken = text.replace(
        "max by (job, budget, period) (llm_budget_utilization_ratio) >= 0.8",
        "max by (job, budget, period) (llm_budget_utilization_ratio >= 0.8",
    )
    assert broken != text
    (tmp_path / "alerts.yaml").write_text(broken)
    result = _promtool(promtool_bin, "check", "rules", "alerts.yaml", cwd=tmp_path)
    assert result.returncode != 0


def test_a_wrong_threshold_fails_the_unit_tests(promtool_bin: str, tmp_path: Path) -> None:
    # The alert at 90% instead of 80% must be caught by the rule tests.
    text = (DASHBOARDS / "alerts.yaml").read_text()
    changed = text.replace(
        "llm_budget_utilization_ratio) >= 0.8", "llm_budget_utilization_ratio) >= 0.9"
    )
    assert changed != text
    (tmp_path / "alerts.yaml").write_text(changed)
    shutil.copy(DASHBOARDS / "alerts.test.yaml", tmp_path / "alerts.test.yaml")
    result = _promtool(promtool_bin, "test", "rules", "alerts.test.yaml", cwd=tmp_path)
    assert result.returncode != 0
    assert "LLMBudgetNearCap" in result.stdout + result.stderr


def test_an_alert_not_per_budget_fails_the_unit_tests(promtool_bin: str, tmp_path: Path) -> None:
    # max by (job) would merge a day budget at 85% with a month budget at 30% into
    # one alert without the budget's name: the rule tests must catch that.
    text = (DASHBOARDS / "alerts.yaml").read_text()
    changed = text.replace("max by (job, budget, period) (llm_budget_utilization_ratio)",
                           "max by (job) (llm_budget_utilization_ratio)")
    assert changed.count("max by (job) (llm_budget_utilization_ratio)") == 2
    (tmp_path / "alerts.yaml").write_text(changed)
    shutil.copy(DASHBOARDS / "alerts.test.yaml", tmp_path / "alerts.test.yaml")
    result = _promtool(promtool_bin, "test", "rules", "alerts.test.yaml", cwd=tmp_path)
    assert result.returncode != 0
    assert "LLMBudgetNearCap" in result.stdout + result.stderr
    assert "LLMBudgetExhausted" in result.stdout + result.stderr


def test_an_unpriced_rule_on_increase_misses_the_first_call(promtool_bin: str,
                                                            tmp_path: Path) -> None:
    # increase() takes a new series' first sample as its baseline: the unit tests
    # must catch a rule that would never fire for the first unpriced call.
    text = (DASHBOARDS / "alerts.yaml").read_text()
    old = "(llm_spend_unpriced_total) > 0"
    assert text.count(old) == 1
    (tmp_path / "alerts.yaml").write_text(
        text.replace(old, "(increase(llm_spend_unpriced_total[5m])) > 0"))
    shutil.copy(DASHBOARDS / "alerts.test.yaml", tmp_path / "alerts.test.yaml")
    result = _promtool(promtool_bin, "test", "rules", "alerts.test.yaml", cwd=tmp_path)
    assert result.returncode != 0
    assert "LLMCallsUnpriced" in result.stdout + result.stderr


def test_every_budget_rule_is_grouped_by_budget() -> None:
    rules = yaml.safe_load((DASHBOARDS / "alerts.yaml").read_text())["groups"][0]["rules"]
    by_name = {rule["alert"]: rule for rule in rules}
    assert set(by_name) == {"LLMBudgetNearCap", "LLMBudgetExhausted",
                            "LLMBudgetCheckpointsFailing", "LLMBudgetStoreDown",
                            "LLMCallsUnpriced"}
    for name in ("LLMBudgetNearCap", "LLMBudgetExhausted"):
        assert "max by (job, budget, period)" in by_name[name]["expr"]
        assert "{{ $labels.budget }}" in by_name[name]["annotations"]["summary"]
    for name in ("LLMBudgetCheckpointsFailing", "LLMBudgetStoreDown"):
        # Process gauges have no budget label.
        assert "by (job, instance)" in by_name[name]["expr"]
