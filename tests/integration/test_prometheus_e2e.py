"""End to end on a real Prometheus: it scrapes a meter's /metrics, and every panel
query of dashboards/otel-budget.json (variables substituted) returns data, with the
per-budget panels showing exactly what the meter's budgets() says (a day budget and a
per-agent month budget), the spend panels the recorded amounts, and the token and
unpriced-call panels the calls priced by record_usage. The alert rules load and the
80% alert goes pending for the day budget only. `otel-budget serve` is run as a real
subprocess, scraped, and stopped with SIGTERM.

One Prometheus serves the module (it takes ~6 s to its first scrape, see
prom_server.launch_prometheus), scraping two ports chosen up front: the in-process
meter's and the subprocess's."""

from __future__ import annotations

import json
import os
import re
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

from otel_budget import Budget, BudgetConfig, BudgetMeter, ledger, read_day
from otel_budget.cli.serve import serve_with_fleet
from otel_budget.pricing import PriceTable
from otel_budget.stores.sqlite import SQLiteStore
from tests.support.dashboard_queries import load_dashboard, panel_queries, substitute, template_variables
from tests.support.paths import ROOT
from tests.support.prom_server import PromServer, free_port, launch_prometheus

ROOT = ROOT
JOB = "otel-budget"
SERVE_JOB = "otel-budget-serve"
SONNET = "claude-sonnet-4-20250514"
HAIKU = "claude-3-5-haiku-20241022"
# Not in the price table: llm.spend.unpriced; at $0 through a "0,0" fallback price (the
# conservative default would price it as the table's dearest model).
MYSTERY = "mystery-model-1"
CAP = 10.0
MONTH = "cloud_lu_month"
MONTH_CAP = 20.0
# Recorded before Prometheus first sees the series, then after. increase() takes a
# series' first sample as its baseline (Prometheus 2.x has no created timestamps),
# so the "by model/agent over the range" panels show only AFTER; the budget panels
# come from the tracker's gauges and show everything.
BEFORE = {(SONNET, "cloud_lu"): 2.0, (HAIKU, "ag_lu"): 1.0, (SONNET, "ag_lu"): 0.5}
AFTER = {(SONNET, "cloud_lu"): 4.0, (HAIKU, "ag_lu"): 0.5, (SONNET, "ag_lu"): 1.0}
# Each phase also prices one Sonnet call (1000 in, 500 out: $0.0105) for cloud_lu
# and one call of an unknown model for ag_lu.
SONNET_CALL = 0.0105
TOTAL = sum(BEFORE.values()) + sum(AFTER.values()) + 2 * SONNET_CALL  # 9.021 of 10
# increase() extrapolates a few seconds of series to the window's edges; with 1 s
# scrapes and >= 6 s of samples after the baseline it reads at most ~25% high.
HIGH = 1.3
# Panels that may legitimately be empty when one budget/model/agent is selected.
EMPTY_WHEN_FILTERED = {"Projected end of day (day budgets)", "Unpriced calls per hour by model"}


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
    assert meter.record_usage(SONNET, 1000, 500, attributes={"agent": "cloud_lu"}) == SONNET_CALL
    assert meter.record_usage(MYSTERY, 2000, 100, attributes={"agent": "ag_lu"}) == 0.0


def _value(result: list[dict[str, Any]]) -> float:
    assert len(result) == 1, result
    return float(result[0]["value"][1])


def _by(result: list[dict[str, Any]], *labels: str) -> dict[Any, float]:
    """{label value (or tuple of values): float} of an instant query's result."""
    out: dict[Any, float] = {}
    for item in result:
        key = tuple(item["metric"].get(label, "") for label in labels)
        assert key not in out, (labels, result)
        out[key[0] if len(key) == 1 else key] = float(item["value"][1])
    return out


@pytest.fixture
def meter(tmp_path: Path) -> Iterator[BudgetMeter]:
    store = SQLiteStore(tmp_path / "budget.db")
    config = BudgetConfig(
        daily_cap_usd=CAP, instance_id="e2e-1", service_name="dispatcher",
        budgets=(Budget(MONTH, MONTH_CAP, period="month", match={"agent": "cloud_lu"}),),
        collect_interval_s=3600,  # the test drives collections
    )
    m = BudgetMeter(config, store=store, prices=PriceTable.load_default(
        {"OTEL_BUDGET_FALLBACK_PRICE": "0,0"})).start()
    yield m
    m.shutdown()
    store.close()


@pytest.mark.slow
def test_every_dashboard_query_on_real_prometheus(
    meter: BudgetMeter, prom: PromServer, ports: dict[str, int]
) -> None:
    started = time.monotonic()
    _record(meter, BEFORE)
    # What `otel-budget serve` serves: the meter's /metrics plus the fleet's from the store.
    server = serve_with_fleet(meter, "127.0.0.1", ports[JOB])
    try:
        prom.wait_for_scrapes(2, job=JOB)
        _record(meter, AFTER)
        meter.collect()  # evaluates the thresholds: 90% of the day claims its 80% alert
        assert meter.checkpoint()
        budgets = {b["name"]: b for b in meter.budgets()}
        assert set(budgets) == {"daily", MONTH}
        assert budgets["daily"]["spend_usd"] == pytest.approx(TOTAL)
        assert budgets[MONTH]["spend_usd"] == pytest.approx(2.0 + 4.0 + 2 * SONNET_CALL)
        assert budgets["daily"]["alerts_sent"] == [0.8] and budgets[MONTH]["alerts_sent"] == []
        # Wait until Prometheus holds the final values, then more scrapes so that
        # increase()'s extrapolation stays small.
        prom.wait_for(f'abs(sum(llm_spend_USD_total{{job="{JOB}"}}) - {TOTAL}) < 1e-9')
        prom.wait_for(f'llm_budget_alerts_sent{{job="{JOB}", budget="daily"}} == 1')
        # The fleet gauges are rendered at most every 5 s: wait for the checkpoint's.
        prom.wait_for(f'abs(llm_fleet_day_spend_USD{{job="{JOB}"}} - {TOTAL}) < 1e-9')
        prom.wait_for_scrapes(prom.scrapes(JOB) + 4, job=JOB)

        instance = f"127.0.0.1:{server.port}"
        age_s = time.monotonic() - started
        _check_every_panel(prom, _variables(instance, age_s), budgets,
                           read_day(meter.store, meter.day))
        _check_filtered_panels(prom, _variables(instance, age_s))
        _check_variables(prom, instance)
        _check_alert_pending(prom)
    finally:
        server.shutdown()


def _regex(value: str) -> str:
    """A value as Grafana puts it into `label=~"..."`: regex-escaped, then escaped
    for a PromQL double-quoted string."""
    return re.escape(value).replace("\\", "\\\\")


def _variables(instance: str, age_s: float) -> dict[str, str]:
    return {
        "job": JOB,
        "instance": _regex(instance),
        "budget": ".*", "model": ".*", "agent": ".*",
        "utc_offset_hours": "0",
        # Grafana picks these from the time range and scrape interval; a range that
        # covers the whole test, and a rate window of many 1 s scrapes.
        "__range": f"{int(age_s) + 60}s",
        "__rate_interval": "30s",
        "__interval": "1s",
    }


def _run_panels(prom: PromServer, variables: dict[str, str]) -> dict[str, list[dict[str, Any]]]:
    results: dict[str, list[dict[str, Any]]] = {}
    for q in panel_queries(load_dashboard()):
        results[f"{q.panel_title}/{q.ref_id}"] = prom.query(substitute(q.expr, variables))
    return results


def _check_every_panel(
    prom: PromServer, variables: dict[str, str], budgets: dict[str, dict[str, Any]],
    stored_day: dict[str, Any],
) -> None:
    queries = panel_queries(load_dashboard())
    assert len(queries) >= 17
    results = _run_panels(prom, variables)
    for key, result in results.items():
        assert result, f"panel {key} returned no data"

    # The per-budget panels equal the meter's budgets(), budget by budget.
    def per_budget(field: str) -> dict[str, float]:
        return {name: float(b[field]) for name, b in budgets.items()}

    for key, expected in [
        ("Utilization by budget/A", per_budget("utilization")),
        ("Utilization by budget over time/A", per_budget("utilization")),
        ("Remaining by budget/A", per_budget("remaining_usd")),
        ("Spend vs cap by budget/A", per_budget("spend_usd")),
        ("Spend vs cap by budget/B", per_budget("cap_usd")),
        ("Alerts sent (current window)/A",
         {name: float(len(b["alerts_sent"])) for name, b in budgets.items()}),
        ("Remaining share of cap by budget/A",
         {name: b["remaining_usd"] / b["cap_usd"] for name, b in budgets.items()}),
    ]:
        assert _by(results[key], "budget") == pytest.approx(expected), key
    assert _by(results["Spend vs cap by budget/A"], "budget", "period") == pytest.approx(
        {("daily", "day"): TOTAL, (MONTH, "month"): budgets[MONTH]["spend_usd"]})
    assert budgets["daily"]["utilization"] == pytest.approx(TOTAL / CAP)
    # Day budgets only; at least today's spend, the trend term only adds.
    projected = _by(results["Projected end of day (day budgets)/A"], "budget")
    assert set(projected) == {"daily"} and projected["daily"] >= TOTAL - 1e-9

    # increase() over the range sees only what was added after the first scrape
    # (the first sample is its baseline); extrapolation adds a little.
    _assert_increase(_by(results["Spend by model (time range)/A"], "gen_ai_request_model"),
                     {SONNET: 5.0 + SONNET_CALL, HAIKU: 0.5, MYSTERY: 0.0})
    _assert_increase(_by(results["Spend by agent (time range)/A"], "agent"),
                     {"cloud_lu": 4.0 + SONNET_CALL, "ag_lu": 1.5})
    assert set(_by(results["Spend rate by model (USD/h)/A"], "gen_ai_request_model")) == {
        SONNET, HAIKU, MYSTERY}
    assert set(_by(results["Spend rate by agent (USD/h)/A"], "agent")) == {"cloud_lu", "ag_lu"}
    assert _value(results["Spend rate (USD/h)/A"]) > 0

    tokens = _by(results["Tokens per minute by model and type/A"],
                 "gen_ai_request_model", "gen_ai_token_type")
    assert set(tokens) == {(m, t) for m in (SONNET, MYSTERY) for t in ("input", "output")}
    assert all(v > 0 for v in tokens.values()), tokens
    # input > output for both models (1000 vs 500, 2000 vs 100 per call).
    assert tokens[(SONNET, "input")] > tokens[(SONNET, "output")]
    assert tokens[(MYSTERY, "input")] > tokens[(MYSTERY, "output")]
    unpriced = _by(results["Unpriced calls per hour by model/A"], "gen_ai_request_model")
    assert set(unpriced) == {MYSTERY} and unpriced[MYSTERY] > 0
    assert meter_unpriced_series(prom) == {MYSTERY: 2.0}

    # The fleet panels are the store's rows, exact: every budget as budgets() has it
    # after the checkpoint, and the day's breakdown as read_day sums it.
    assert _by(results["Fleet spend vs cap by budget (store)/A"], "budget") == pytest.approx(
        per_budget("spend_usd"))
    assert _by(results["Fleet spend vs cap by budget (store)/B"], "budget") == pytest.approx(
        per_budget("cap_usd"))
    for panel_title, label in (("Fleet spend today by model (store)", "gen_ai_request_model"),
                               ("Fleet spend today by agent (store)", "agent")):
        stored: dict[str, float] = {}
        for row in stored_day["by_attributes"]:
            key = row["attributes"].get(label.replace("gen_ai_request_model",
                                                      "gen_ai.request.model"), "")
            stored[key] = stored.get(key, 0.0) + row["spend_usd"]
        assert _by(results[f"{panel_title}/A"], label) == pytest.approx(stored), panel_title

    assert _value(results["Store up/A"]) == 1
    assert _value(results["Spend not yet checkpointed/A"]) == 0
    assert 0 <= _value(results["Checkpoint age/A"]) < 120


def meter_unpriced_series(prom: PromServer) -> dict[str, float]:
    return _by(prom.query(f'llm_spend_unpriced_total{{job="{JOB}"}}'), "gen_ai_request_model")


def _assert_increase(got: dict[str, float], expected: dict[str, float]) -> None:
    assert set(got) == set(expected), (got, expected)
    for key, usd in expected.items():
        assert usd * 0.95 <= got[key] <= usd * HIGH, (key, got)


def _check_filtered_panels(prom: PromServer, variables: dict[str, str]) -> None:
    # One budget, one model and one agent selected: every series a panel returns
    # carries only the selected values, and the panels still return data.
    chosen = {"budget": MONTH, "gen_ai_request_model": SONNET, "agent": "cloud_lu"}
    selected = {**variables, "budget": MONTH, "model": _regex(SONNET), "agent": "cloud_lu"}
    results = _run_panels(prom, selected)
    for key, result in results.items():
        if key.split("/")[0] not in EMPTY_WHEN_FILTERED:
            assert result, f"panel {key} returned no data with {chosen}"
        for item in result:
            for label, value in chosen.items():
                assert item["metric"].get(label, value) == value, (key, item)
    assert _by(results["Utilization by budget/A"], "budget") == pytest.approx(
        {MONTH: (6.0 + 2 * SONNET_CALL) / MONTH_CAP})
    _assert_increase(_by(results["Spend by agent (time range)/A"], "agent"),
                     {"cloud_lu": 4.0 + SONNET_CALL})
    _assert_increase(_by(results["Spend by model (time range)/A"], "gen_ai_request_model"),
                     {SONNET: 4.0 + SONNET_CALL})
    assert not results["Projected end of day (day budgets)/A"]  # a month budget


def _check_variables(prom: PromServer, instance: str) -> None:
    # label_values(metric{selector}, label) is what Grafana asks /api/v1/series for.
    expected = {
        "job": {JOB}, "instance": {instance}, "budget": {"daily", MONTH},
        "model": {SONNET, HAIKU, MYSTERY}, "agent": {"cloud_lu", "ag_lu"},
    }
    variables = {n: v for n, v in template_variables(load_dashboard()).items()
                 if v["type"] == "query"}
    assert set(variables) == set(expected)
    for name, var in variables.items():
        inner = var["query"]["query"]
        selector, label = inner[len("label_values("):-1].rsplit(",", 1)
        selector = substitute(selector, {"job": JOB})
        series = prom.api("series", **{"match[]": selector})
        values = {s[label.strip()] for s in series if s["job"] == JOB and label.strip() in s}
        assert values == expected[name], (name, values)


def _check_alert_pending(prom: PromServer) -> None:
    # The rules file loads, and 90% of the day budget puts its 80% alert in pending
    # (its `for` keeps it from firing within the test); the month budget (30%) has none.
    deadline = time.monotonic() + 15
    while True:
        alerts = prom.api("alerts")["alerts"]
        near = [a for a in alerts if a["labels"]["alertname"] == "LLMBudgetNearCap"
                and a["labels"]["job"] == JOB]
        if near or time.monotonic() > deadline:
            break
        time.sleep(0.25)
    assert near, alerts
    assert [(a["labels"]["budget"], a["labels"]["period"]) for a in near] == [("daily", "day")]
    assert near[0]["state"] in ("pending", "firing")
    assert near[0]["annotations"]["summary"] == (
        f"LLM budget daily of {JOB} is at 90.21% of its day cap"
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
        # The status page and its JSON, read from the store (the other host's row).
        with urllib.request.urlopen(url + "/api/status", timeout=10) as resp:
            status = json.load(resp)
        assert status["total_usd"] == 4.0 and status["budgets"][0]["spend_usd"] == 4.0
        assert "other-host-1" in {w["instance_id"] for w in status["writers"]["list"]}
        with urllib.request.urlopen(url + "/", timeout=10) as resp:
            assert resp.status == 200 and b"<title>LLM spend" in resp.read()

        assert url == f"http://127.0.0.1:{ports[SERVE_JOB]}"
        prom.wait_for_scrapes(2, job=SERVE_JOB)
        assert _value(prom.query(f'llm_budget_daily_spend_USD{{job="{SERVE_JOB}"}}')) == 4.0
        assert _value(prom.query(f'llm_fleet_spend_USD{{job="{SERVE_JOB}", budget="daily"}}')) \
            == 4.0
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
