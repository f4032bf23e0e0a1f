"""Static checks of dashboards/otel-budget.json: importable shape, one datasource
variable used everywhere, units, counter-reset-safe queries, PromQL that parses.
Whether each query returns the right data is test_prometheus_e2e.py's job."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped,unused-ignore]

from tests.dashboard_queries import (
    iter_panels,
    load_dashboard,
    panel_queries,
    substitute,
    template_variables,
)

# The exposition names (DESIGN.md instrument table, checked against the real
# exporter in test_prometheus_e2e.py).
KNOWN_METRICS = {
    "llm_spend_USD_total",
    "llm_budget_daily_spend_USD",
    "llm_budget_daily_cap_USD",
    "llm_budget_remaining_USD",
    "llm_budget_utilization_ratio",
    "llm_budget_unflushed_USD",
    "llm_budget_checkpoint_age_seconds",
    "llm_budget_store_up",
    "llm_budget_alerts_sent",
}
STATIC_VARIABLES = {
    "job": ".*", "instance": ".*", "utc_offset_hours": "0",
    "__rate_interval": "1m", "__range": "1h", "__interval": "15s",
}


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
    for name in ("job", "instance"):
        var = variables[name]
        assert var["type"] == "query"
        assert var["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert var["includeAll"] and var["multi"]
    assert "$job" in variables["instance"]["query"]["query"]


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
    assert {"currencyUSD", "percentunit", "s"} <= units
    for query in panel_queries(dashboard):
        if "_USD" in query.expr and "rate(" not in query.expr:
            assert query.unit == "currencyUSD", query.panel_title


def test_utilization_gauge_thresholds_are_the_alert_ratios(dashboard: dict[str, Any]) -> None:
    gauges = [p for p in iter_panels(dashboard) if p["type"] == "gauge"]
    assert len(gauges) == 1
    defaults = gauges[0]["fieldConfig"]["defaults"]
    assert defaults["unit"] == "percentunit"
    assert "llm_budget_utilization_ratio" in gauges[0]["targets"][0]["expr"]
    steps = [s["value"] for s in defaults["thresholds"]["steps"]]
    assert steps == [None, 0.8, 1]
    alerts = yaml.safe_load(
        (Path(__file__).resolve().parent.parent / "dashboards" / "alerts.yaml").read_text()
    )
    ratios = {
        float(m.group(1))
        for rule in alerts["groups"][0]["rules"]
        for m in [re.search(r"llm_budget_utilization_ratio\) >= ([\d.]+)", rule["expr"])]
        if m
    }
    assert ratios == {0.8, 1.0}


def test_required_panels_exist(dashboard: dict[str, Any]) -> None:
    exprs = " ".join(q.expr for q in panel_queries(dashboard))
    for needle in (
        "llm_budget_daily_spend_USD", "llm_budget_daily_cap_USD", "llm_budget_remaining_USD",
        "llm_budget_utilization_ratio", "llm_budget_checkpoint_age_seconds",
        "llm_budget_store_up", "llm_budget_alerts_sent", "llm_budget_unflushed_USD",
        "by (gen_ai_request_model)", "by (agent)", "time()",
    ):
        assert needle in exprs, needle


def test_every_query_filters_by_job_and_instance(dashboard: dict[str, Any]) -> None:
    for query in panel_queries(dashboard):
        for selector in re.findall(r"(llm_\w+)(\{[^}]*\})?", query.expr):
            assert 'job=~"$job"' in selector[1] and 'instance=~"$instance"' in selector[1], (
                f"{query.panel_title}: {selector[0]} is not filtered by the variables"
            )


def test_the_counter_is_only_read_through_rate_or_increase(dashboard: dict[str, Any]) -> None:
    # A raw cumulative counter drops to zero on every restart and is not "today".
    for query in panel_queries(dashboard):
        for match in re.finditer(r"llm_spend_USD_total", query.expr):
            before = query.expr[: match.start()]
            assert re.search(r"(rate|increase)\($", before), (
                f"{query.panel_title}: raw counter in {query.expr!r}"
            )


def test_only_known_metric_names(dashboard: dict[str, Any]) -> None:
    for query in panel_queries(dashboard):
        names = set(re.findall(r"\bllm_[A-Za-z0-9_]+", query.expr))
        assert names, query.panel_title
        assert names <= KNOWN_METRICS, f"{query.panel_title}: unknown {names - KNOWN_METRICS}"


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
