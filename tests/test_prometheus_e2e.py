"""End to end on a real Prometheus: it scrapes a meter's /metrics, and every panel
query of dashboards/otel-budget.json (variables substituted) returns data, with the
spend / cap / utilization panels showing the numbers that were recorded. The alert
rules load and the 80% alert goes pending. `otel-budget serve` is run as a real
subprocess, scraped, and stopped with SIGTERM.

One Prometheus serves the module (it takes ~6 s to its first scrape, see
prom_server.launch_prometheus), scraping two ports chosen up front: the in-process
meter's and the subprocess's."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from otel_budget import BudgetConfig, BudgetMeter, ledger, read_day
from otel_budget.stores.sqlite import SQLiteStore
from tests.dashboard_queries import load_dashboard, panel_queries, substitute, template_variables
from tests.prom_server import PromServer, free_port, launch_prometheus

ROOT = Path(__file__).resolve().parent.parent
JOB = "otel-budget"
SERVE_JOB = "otel-budget-serve"
SONNET = "claude-sonnet-4-20250514"
HAIKU = "claude-3-5-haiku-20241022"
CAP = 10.0
# Recorded before Prometheus first sees the series, then after. increase() takes a
# series' first sample as its baseline (Prometheus 2.x has no created timestamps),
# so the "by model/agent over the range" panels show only AFTER; "Spend today"
# comes from the tracker's gauge and shows everything.
BEFORE = {(SONNET, "cloud_lu"): 2.0, (HAIKU, "ag_lu"): 1.0, (SONNET, "ag_lu"): 0.5}
AFTER = {(SONNET, "cloud_lu"): 4.0, (HAIKU, "ag_lu"): 0.5, (SONNET, "ag_lu"): 1.0}
TOTAL = sum(BEFORE.values()) + sum(AFTER.values())  # 9.0 of 10: past the 80% alert
# increase() extrapolates a few seconds of series to the window's edges; with 1 s
# scrapes and >= 6 s of samples after the baseline it reads at most ~25% high.
HIGH = 1.3


@pytest.fixture(scope="module")
def ports() -> dict[str, int]:
    return {JOB: free_port(), SERVE_JOB: free_port()}


@pytest.fixture(scope="module")
def prom(
    prometheus_bin: str, ports: dict[str, int], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PromServer]:
    server = launch_prometheus(
        prometheus_bin, tmp_path_factory.mktemp("prometheus"),
        {job: [f"127.0.0.1:{port}"] for job, port in ports.items()},
        rule_files=[ROOT / "dashboards" / "alerts.yaml"],
    )
    yield server
    server.stop()


def _record(meter: BudgetMeter, spends: dict[tuple[str, str], float]) -> None:
    for (model, agent), usd in spends.items():
        meter.record(usd, {"gen_ai.request.model": model, "agent": agent})


def _value(result: list[dict[str, Any]]) -> float:
    assert len(result) == 1, result
    return float(result[0]["value"][1])


@pytest.fixture
def meter(tmp_path: Path) -> Iterator[BudgetMeter]:
    store = SQLiteStore(tmp_path / "budget.db")
    config = BudgetConfig(
        daily_cap_usd=CAP, instance_id="e2e-1", service_name="dispatcher",
        collect_interval_s=3600,  # the test drives collections
    )
    m = BudgetMeter(config, store=store).start()
    yield m
    m.shutdown()
    store.close()


@pytest.mark.slow
def test_every_dashboard_query_on_real_prometheus(
    meter: BudgetMeter, prom: PromServer, ports: dict[str, int]
) -> None:
    started = time.monotonic()
    _record(meter, BEFORE)
    server = meter.serve_health(port=ports[JOB])
    try:
        prom.wait_for_scrapes(2, job=JOB)
        _record(meter, AFTER)
        meter.collect()  # evaluates the thresholds: 90% claims the 80% alert
        assert meter.checkpoint()
        # Wait until Prometheus holds the final values, then more scrapes so that
        # increase()'s extrapolation stays small.
        prom.wait_for(f'sum(llm_spend_USD_total{{job="{JOB}"}}) == {TOTAL}')
        prom.wait_for(f'llm_budget_alerts_sent{{job="{JOB}"}} == 1')
        prom.wait_for_scrapes(prom.scrapes(JOB) + 4, job=JOB)

        instance = f"127.0.0.1:{server.port}"
        _check_every_panel(prom, instance, time.monotonic() - started)
        _check_variables(prom, instance)
        _check_alert_pending(prom)
    finally:
        server.shutdown()


def _check_every_panel(prom: PromServer, instance: str, age_s: float) -> None:
    dashboard = load_dashboard()
    queries = panel_queries(dashboard)
    assert len(queries) >= 14
    variables = {
        "job": JOB,
        "instance": instance.replace(".", r"\\."),
        "utc_offset_hours": "0",
        # Grafana picks these from the time range and scrape interval; a range that
        # covers the whole test, and a rate window of many 1 s scrapes.
        "__range": f"{int(age_s) + 60}s",
        "__rate_interval": "30s",
        "__interval": "1s",
    }
    results: dict[str, list[dict[str, Any]]] = {}
    for q in queries:
        expr = substitute(q.expr, variables)
        result = prom.query(expr)
        assert result, f"panel {q.panel_title!r} ({q.ref_id}) returned no data: {expr}"
        results[f"{q.panel_title}/{q.ref_id}"] = result

    assert _value(results["Spend today/A"]) == pytest.approx(TOTAL)
    assert _value(results["Daily cap/A"]) == CAP
    assert _value(results["Utilization/A"]) == pytest.approx(TOTAL / CAP)
    assert _value(results["Remaining/A"]) == pytest.approx(CAP - TOTAL)
    assert _value(results["Alerts sent today/A"]) == 1
    assert _value(results["Spend today vs cap/A"]) == pytest.approx(TOTAL)
    assert _value(results["Spend today vs cap/B"]) == CAP
    # At least today's spend; the burn-rate term only adds.
    assert _value(results["Projected end of day/A"]) >= TOTAL

    # increase() over the range sees only what was added after the first scrape
    # (the first sample is its baseline); extrapolation adds a little.
    by_model = {
        r["metric"]["gen_ai_request_model"]: float(r["value"][1])
        for r in results["Spend by model (time range)/A"]
    }
    expected_model = {SONNET: 5.0, HAIKU: 0.5}
    assert set(by_model) == set(expected_model)
    for model, usd in expected_model.items():
        assert usd * 0.95 <= by_model[model] <= usd * HIGH, (model, by_model)
    by_agent = {
        r["metric"]["agent"]: float(r["value"][1])
        for r in results["Spend by agent (time range)/A"]
    }
    expected_agent = {"cloud_lu": 4.0, "ag_lu": 1.5}
    assert set(by_agent) == set(expected_agent)
    for agent, usd in expected_agent.items():
        assert usd * 0.95 <= by_agent[agent] <= usd * HIGH, (agent, by_agent)

    assert {r["metric"]["gen_ai_request_model"] for r in results[
        "Spend rate by model (USD/h)/A"]} == {SONNET, HAIKU}
    assert {r["metric"]["agent"] for r in results["Spend rate by agent (USD/h)/A"]} == {
        "cloud_lu", "ag_lu"}
    assert _value(results["Store up/A"]) == 1
    assert _value(results["Spend not yet checkpointed/A"]) == 0
    assert 0 <= _value(results["Checkpoint age/A"]) < 120


def _check_variables(prom: PromServer, instance: str) -> None:
    # label_values(metric{selector}, label) is what Grafana asks /api/v1/series for.
    for name, var in template_variables(load_dashboard()).items():
        if var["type"] != "query":
            continue
        inner = var["query"]["query"]
        selector, label = inner[len("label_values("):-1].rsplit(",", 1)
        selector = substitute(selector, {"job": JOB})
        series = prom.api("series", **{"match[]": selector})
        values = {s[label.strip()] for s in series if s["job"] == JOB}
        assert values == {JOB if name == "job" else instance}, (name, values)


def _check_alert_pending(prom: PromServer) -> None:
    # The rules file loads, and 90% utilisation puts the 80% alert in pending (its
    # `for` keeps it from firing within the test).
    deadline = time.monotonic() + 15
    while True:
        alerts = prom.api("alerts")["alerts"]
        near = [a for a in alerts if a["labels"]["alertname"] == "LLMBudgetNearCap"]
        if near or time.monotonic() > deadline:
            break
        time.sleep(0.25)
    assert near, alerts
    assert near[0]["labels"]["job"] == JOB
    assert near[0]["state"] in ("pending", "firing")
    assert near[0]["annotations"]["summary"] == (
        f"LLM spend of {JOB} is at 90% of its daily cap"
    )
    assert not [a for a in alerts if a["labels"]["alertname"] == "LLMBudgetExhausted"]


@pytest.mark.slow
def test_otel_budget_serve_subprocess_scraped_and_stopped(
    tmp_path: Path, prom: PromServer, ports: dict[str, int]
) -> None:
    db = tmp_path / "budget.db"
    # Another instance has already spent $4 today; serve restores it.
    today = ledger.day_of(datetime.now(UTC), ZoneInfo("UTC"))
    store = SQLiteStore(db)
    store.merge_writer({
        "date": today.isoformat(), "writer_id": "other-writer-1", "instance_id": "other-host-1",
        "spend_usd": 4.0, "seq": 3, "updated_at": datetime.now(UTC).isoformat(),
        "by_attributes": [], "by_budget": {"daily": 4.0},
    })
    store.close()
    env = {
        k: v for k, v in os.environ.items()
        if not k.startswith("OTEL_")
    }
    env.update({
        "OTEL_BUDGET_DAILY_CAP_USD": str(CAP),
        "OTEL_BUDGET_STORE": f"sqlite:///{db}",
        "OTEL_BUDGET_INSTANCE_ID": "serve-1",
        "OTEL_SERVICE_NAME": "budget-sidecar",
        "PYTHONUNBUFFERED": "1",
    })
    proc = subprocess.Popen(
        [sys.executable, "-c", "from otel_budget.cli import main; raise SystemExit(main())",
         "serve", "--port", str(ports[SERVE_JOB])],
        env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert "otel-budget serve: instance serve-1 on http://127.0.0.1:" in line, (
            line + (proc.stderr.read() if proc.poll() is not None and proc.stderr else "")
        )
        url = line.split(" on ", 1)[1].split(" ", 1)[0]
        with urllib.request.urlopen(url + "/healthz", timeout=5) as resp:
            health = json.load(resp)
        assert resp.status == 200
        assert health["daily_spend_usd"] == 4.0
        assert health["instance_id"] == "serve-1"

        assert url == f"http://127.0.0.1:{ports[SERVE_JOB]}"
        prom.wait_for_scrapes(2, job=SERVE_JOB)
        assert _value(prom.query(f'llm_budget_daily_spend_USD{{job="{SERVE_JOB}"}}')) == 4.0
        assert _value(prom.query(f'llm_budget_utilization_ratio{{job="{SERVE_JOB}"}}')) == 0.4
        # The Python exporter puts the resource on target_info.
        info = prom.query(f'target_info{{job="{SERVE_JOB}"}}')
        assert info[0]["metric"]["service_name"] == "budget-sidecar"
        # service.instance.id is the writer (unique per process); the human instance
        # id is its own resource attribute.
        assert info[0]["metric"]["otel_budget_instance_id"] == "serve-1"
        assert info[0]["metric"]["service_instance_id"] == health["writer_id"]

        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
        assert proc.returncode == 0, err
        assert "SIGTERM, final checkpoint written" in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    store = SQLiteStore(db)
    day = read_day(store, today)
    store.close()
    assert set(day["instances"]) == {"other-host-1", "serve-1"}
    # serve recorded nothing: its final entry adds a writer, not spend.
    assert day["total_usd"] == 4.0
