"""Static checks of dashboards/otel-budget.json: importable shape, one datasource
variable used everywhere, the job/instance/budget/model/agent variables filtering every
query they apply to, budget gauges aggregated with max by (budget), thresholds at the
alert ratios and relative to the cap (never in dollars), metric names the meter really
exposes, counter-reset-safe queries, PromQL that parses.
Whether each query returns the right data is test_prometheus_e2e.py's job."""

from __future__ import annotations

import copy
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped,unused-ignore]

from otel_budget import Budget, BudgetConfig, BudgetMeter
from otel_budget.stores.memory import MemoryStore
from otel_budget.web.fleet_metrics import FleetMetrics
from otel_budget.web.status import StatusSource
from tests.support.dashboard_queries import (
    iter_panels,
    load_dashboard,
    panel_queries,
    substitute,
    template_variables,
)
from tests.support.paths import ROOT

# Metric families whose selectors must carry each variable's filter.
BUDGET_GAUGES = {
    "llm_budget_spend_USD", "llm_budget_cap_USD", "llm_budget_remaining_USD",
    "llm_budget_utilization_ratio", "llm_budget_alerts_sent", "llm_budget_daily_spend_USD",
    "llm_budget_daily_cap_USD",
}
COUNTERS = {"llm_spend_USD_total", "llm_spend_unpriced_total", "gen_ai_client_token_usage_sum"}
STATIC_VARIABLES = {
    "job": ".*", "instance": ".*", "budget": ".*", "model": ".*", "agent": ".*",
    "utc_offset_hours": "0", "__rate_interval": "1m", "__range": "1h", "__interval": "15s",
}
_SELECTOR = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\{([^}]*)\}")


@pytest.fixture(scope="module")
def exposed_metrics() -> set[str]:
    """Every sample name a meter exposes with two budgets (a day and a month one),
    token metrics and an unpriced call, plus the fleet's gauges `otel-budget serve`
    adds from the store: what the dashboard may reference."""
    config = BudgetConfig(
        daily_cap_usd=10.0, collect_interval_s=3600, instance_id="dash",
        budgets=(Budget("m", 100.0, period="month", match={"agent": "a"}),),
    )
    meter = BudgetMeter(config, store=MemoryStore())
    try:
        meter.record(1.0, {"agent": "a", "gen_ai.request.model": "x"})
        meter.record_usage("claude-sonnet-4-20250514", 10, 5, attributes={"agent": "a"})
        meter.record_usage("no-such-model-xyz", 10, 5)
        assert meter.checkpoint()
        text = meter.render_metrics()[0].decode()
        fleet = FleetMetrics(StatusSource(meter.store, budgets=config.all_budgets))
        text += fleet.render().decode()
    finally:
        meter.shutdown()
    return {line.split("{")[0].split(" ")[0] for line in text.splitlines()
            if line and not line.startswith("#")}


def selectors(expr: str) -> list[tuple[str, str]]:
    """(metric, label matchers) of every `metric{...}` in a query."""
    return _SELECTOR.findall(expr)


def filter_problems(dashboard: dict[str, Any]) -> list[str]:
    """Selectors that a dashboard variable does not filter, as it should."""
    problems = []
    for query in panel_queries(dashboard):
        found = selectors(query.expr)
        if not found:
            problems.append(f"{query.panel_title}: no metric selector in {query.expr!r}")
        for metric, matchers in found:
            wanted = ['job=~"$job"', 'instance=~"$instance"']
            if metric in BUDGET_GAUGES:
                wanted.append('budget=~"$budget"')
            if metric in COUNTERS:
                wanted.append('gen_ai_request_model=~"$model"')
            if metric == "llm_spend_USD_total":
                wanted.append('agent=~"$agent"')
            for needle in wanted:
                if needle not in matchers:
                    problems.append(f"{query.panel_title}: {metric} lacks {needle}")
    return problems


def aggregation_problems(dashboard: dict[str, Any]) -> list[str]:
    """Budget gauges must be aggregated with max by (budget ...): every process
    reports the fleet-wide value, so a sum would count it once per replica."""
    problems = []
    for query in panel_queries(dashboard):
        for match in re.finditer(r"\b(llm_budget_[A-Za-z_]+)\{", query.expr):
            if match.group(1) not in BUDGET_GAUGES:
                continue
            before = query.expr[: match.start()]
            if not re.search(r"max by \(budget(, period)?\) \((deriv\()?$", before):
                problems.append(f"{query.panel_title}: {match.group(1)} not under max by (budget)")
    return problems


def dollar_threshold_problems(dashboard: dict[str, Any]) -> list[str]:
    """A panel in USD has no threshold beyond the base colour: a dollar threshold
    means nothing across a $10 day budget and a $5,000 month budget."""
    problems = []
    for panel in iter_panels(dashboard):
        if panel["type"] == "row":
            continue
        defaults = panel["fieldConfig"]["defaults"]
        steps = defaults.get("thresholds", {}).get("steps", [])
        if defaults.get("unit") == "currencyUSD" and len(steps) > 1:
            problems.append(f"{panel['title']}: dollar thresholds {steps}")
    return problems


def alert_ratios() -> set[float]:
    alerts = yaml.safe_load(
        (ROOT / "dashboards" / "alerts.yaml").read_text()
    )
    return {
        float(m.group(1))
        for rule in alerts["groups"][0]["rules"]
        for m in [re.search(r"llm_budget_utilization_ratio\) >= ([\d.]+)", rule["expr"])]
        if m
    }


def panel(dashboard: dict[str, Any], title: str) -> dict[str, Any]:
    found = [p for p in iter_panels(dashboard) if p["title"] == title]
    assert len(found) == 1, title
    return found[0]


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return load_dashboard()


def test_identity_and_time(dashboard: dict[str, Any]) -> None:
    assert dashboard["uid"] == "otel-budget"
    assert 8 <= len(dashboard["uid"]) <= 40
    assert dashboard.get("id") is None  # a fixed id would clash on import
    assert {"llm", "cost", "otel-budget"} <= set(dashboard["tags"])
    assert isinstance(dashboard["schemaVersion"], int) and dashboard["schemaVersion"] >= 36
    assert dashboard["time"] == {"from": "now/d", "to": "now"}
    assert dashboard["timezone"] == "utc"
    assert "__inputs" not in dashboard  # provisioning does not substitute ${DS_...}


def test_variables(dashboard: dict[str, Any]) -> None:
    variables = template_variables(dashboard)
    datasources = [v for v in variables.values() if v["type"] == "datasource"]
    assert [v["name"] for v in datasources] == ["datasource"]
    assert datasources[0]["query"] == "prometheus"
    queries = {
        "job": "label_values(llm_budget_cap_USD, job)",
        "instance": 'label_values(llm_budget_cap_USD{job=~"$job"}, instance)',
        "budget": 'label_values(llm_budget_cap_USD{job=~"$job"}, budget)',
        "model": 'label_values(llm_spend_USD_total{job=~"$job"}, gen_ai_request_model)',
        "agent": 'label_values(llm_spend_USD_total{job=~"$job"}, agent)',
    }
    assert {n for n, v in variables.items() if v["type"] == "query"} == set(queries)
    for name, query in queries.items():
        var = variables[name]
        assert var["query"]["query"] == var["definition"] == query
        assert var["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        # All = ".*", which also matches series without the label (spend recorded
        # without an agent or a model attribute).
        assert var["includeAll"] and var["multi"] and var["allValue"] == ".*"
    exprs = " ".join(q.expr for q in panel_queries(dashboard))
    for name in (*queries, "utc_offset_hours"):
        assert f"${name}" in exprs, f"variable ${name} is used by no panel"


def test_panels_have_unique_ids_layout_units_and_the_datasource_variable(
    dashboard: dict[str, Any],
) -> None:
    ids = [p["id"] for p in iter_panels(dashboard)]
    assert len(ids) == len(set(ids))
    for panel in iter_panels(dashboard):
        assert {"h", "w", "x", "y"} <= set(panel["gridPos"]), panel["title"]
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["description"], panel["title"]
        assert panel["fieldConfig"]["defaults"]["unit"], panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == panel["datasource"]
            assert target["refId"] and target["expr"]


def test_units(dashboard: dict[str, Any]) -> None:
    units = {q.unit for q in panel_queries(dashboard)}
    assert {"currencyUSD", "percentunit", "s", "short"} <= units
    for query in panel_queries(dashboard):
        if "_USD" in query.expr and "rate(" not in query.expr and " / " not in query.expr:
            assert query.unit == "currencyUSD", query.panel_title
        if "utilization_ratio" in query.expr or " / max by" in query.expr:
            assert query.unit == "percentunit", query.panel_title


def test_utilization_thresholds_are_the_alert_ratios(dashboard: dict[str, Any]) -> None:
    ratios = alert_ratios()
    assert ratios == {0.8, 1.0}
    for title in ("Utilization by budget", "Utilization by budget over time"):
        p = panel(dashboard, title)
        defaults = p["fieldConfig"]["defaults"]
        assert defaults["unit"] == "percentunit"
        assert "max by (budget, period) (llm_budget_utilization_ratio" in p["targets"][0]["expr"]
        steps = defaults["thresholds"]["steps"]
        assert [s["value"] for s in steps] == [None, *sorted(ratios)], title
        assert [s["color"] for s in steps] == ["green", "orange", "red"], title
    bar = panel(dashboard, "Utilization by budget")
    assert bar["type"] in ("bargauge", "gauge")
    assert bar["targets"][0]["instant"]


def test_remaining_thresholds_are_shares_of_the_cap(dashboard: dict[str, Any]) -> None:
    p = panel(dashboard, "Remaining share of cap by budget")
    defaults = p["fieldConfig"]["defaults"]
    assert defaults["unit"] == "percentunit" and defaults["max"] == 1
    expr = p["targets"][0]["expr"]
    assert re.search(r"llm_budget_remaining_USD\{[^}]*\}\) / max by \(budget, period\) "
                     r"\(llm_budget_cap_USD", expr), expr
    steps = defaults["thresholds"]["steps"]
    # red when nothing is left (the 100% alert), orange under 1 - 0.8 left.
    assert [s["color"] for s in steps] == ["red", "orange", "green"]
    assert steps[0]["value"] is None and 0 < steps[1]["value"] <= 1e-6
    assert steps[2]["value"] == pytest.approx(1 - min(alert_ratios()))
    assert dollar_threshold_problems(dashboard) == []


def test_dollar_thresholds_are_caught(dashboard: dict[str, Any]) -> None:
    broken = copy.deepcopy(dashboard)
    p = panel(broken, "Remaining by budget")
    p["fieldConfig"]["defaults"]["thresholds"]["steps"].append({"color": "red", "value": 5})
    assert dollar_threshold_problems(broken) == [
        f"Remaining by budget: dollar thresholds {p['fieldConfig']['defaults']['thresholds']['steps']}"
    ]


def test_required_panels_exist(dashboard: dict[str, Any]) -> None:
    exprs = " ".join(q.expr for q in panel_queries(dashboard))
    for needle in (
        "llm_budget_spend_USD", "llm_budget_cap_USD", "llm_budget_remaining_USD",
        "llm_budget_utilization_ratio", "llm_budget_daily_spend_USD",
        "llm_budget_checkpoint_age_seconds", "llm_budget_store_up", "llm_budget_alerts_sent",
        "llm_budget_unflushed_USD", "by (gen_ai_request_model)", "by (agent)", "time()",
        "by (gen_ai_request_model, gen_ai_token_type) (rate(gen_ai_client_token_usage_sum",
        "by (gen_ai_request_model) (rate(llm_spend_unpriced_total",
    ):
        assert needle in exprs, needle
    spend_vs_cap = panel(dashboard, "Spend vs cap by budget")
    assert spend_vs_cap["type"] == "timeseries"
    assert [t["legendFormat"] for t in spend_vs_cap["targets"]] == [
        "{{budget}} spend", "{{budget}} cap"]


def test_every_query_filters_by_the_variables(dashboard: dict[str, Any]) -> None:
    assert filter_problems(dashboard) == []


def test_a_missing_filter_is_caught(dashboard: dict[str, Any]) -> None:
    broken = copy.deepcopy(dashboard)
    target = panel(broken, "Spend vs cap by budget")["targets"][1]
    target["expr"] = target["expr"].replace(', budget=~"$budget"', "")
    assert filter_problems(broken) == [
        "Spend vs cap by budget: llm_budget_cap_USD lacks budget=~\"$budget\""]


def test_budget_gauges_are_aggregated_with_max_by_budget(dashboard: dict[str, Any]) -> None:
    assert aggregation_problems(dashboard) == []
    broken = copy.deepcopy(dashboard)
    target = panel(broken, "Utilization by budget")["targets"][0]
    target["expr"] = target["expr"].replace("max by", "sum by")
    assert aggregation_problems(broken) == [
        "Utilization by budget: llm_budget_utilization_ratio not under max by (budget)"]


def test_counters_are_only_read_through_rate_or_increase(dashboard: dict[str, Any]) -> None:
    # A raw cumulative counter drops to zero on every restart and is not "today".
    for query in panel_queries(dashboard):
        for match in re.finditer("|".join(COUNTERS), query.expr):
            before = query.expr[: match.start()]
            assert re.search(r"(rate|increase)\($", before), (
                f"{query.panel_title}: raw counter in {query.expr!r}"
            )


def test_only_metric_names_the_meter_exposes(
    dashboard: dict[str, Any], exposed_metrics: set[str]
) -> None:
    assert exposed_metrics >= BUDGET_GAUGES | COUNTERS
    for query in panel_queries(dashboard):
        names = {metric for metric, _ in selectors(query.expr)}
        assert names, query.panel_title
        assert names <= exposed_metrics, (
            f"{query.panel_title}: not exposed {names - exposed_metrics}")
    for var in template_variables(dashboard).values():
        if var["type"] == "query":
            metric = re.match(r"label_values\((\w+)", var["query"]["query"])
            assert metric and metric.group(1) in exposed_metrics


def test_every_query_is_valid_promql(
    dashboard: dict[str, Any], promtool_bin: str, tmp_path: Path
) -> None:
    # promtool parses recording rules without a server; one rule per panel query.
    rules = [
        {"record": f"panel_{q.panel_id}_{q.ref_id}", "expr": substitute(q.expr, STATIC_VARIABLES)}
        for q in panel_queries(dashboard)
    ]
    for name, var in template_variables(dashboard).items():
        if var["type"] == "query":
            inner = var["query"]["query"]
            match = re.fullmatch(r"label_values\((.*), *\w+\)", inner)
            assert match, inner
            expr = substitute(match.group(1), STATIC_VARIABLES)
            rules.append({"record": f"var_{name}", "expr": expr})
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "panels", "rules": rules}]}))
    result = subprocess.run([promtool_bin, "check", "rules", str(path)],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_substitute_refuses_unknown_variables() -> None:
    expr = 'x{job=~"$job"}[$__range]'
    assert substitute(expr, {"job": "a", "__range": "1h"}) == 'x{job=~"a"}[1h]'
    assert substitute("${job}", {"job": "a"}) == "a"
    with pytest.raises(KeyError):
        substitute("$nope", {})
