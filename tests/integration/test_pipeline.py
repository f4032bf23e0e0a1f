"""otel_budget inside the app's own OpenTelemetry pipeline (issue: one exact ledger per
process, and the app's pipeline): the app's provider, a user-built provider holding a
BudgetReader, opentelemetry-instrument, and OTEL_SDK_DISABLED."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, MetricsData, Sum
from opentelemetry.sdk.resources import Resource

from otel_budget import BudgetConfig, BudgetExceeded, BudgetMeter, BudgetReader, read_day
from otel_budget.instruments import WRITER_ATTRIBUTE
from otel_budget.stores.sqlite import SQLiteStore
from tests.support.helpers import FakeClock
from tests.support.otlp_receivers import HttpReceiver, metrics_in
from tests.support.paths import ROOT

ROOT = ROOT


def points(data: MetricsData | None, name: str) -> dict[tuple[Any, ...], float]:
    out: dict[tuple[Any, ...], float] = {}
    for rm in data.resource_metrics if data else ():
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                if metric.name == name:
                    for p in metric.data.data_points:
                        out[tuple(sorted(p.attributes.items()))] = p.value  # type: ignore[union-attr]
    return out


def test_instruments_live_on_the_apps_provider(tmp_path: Path, clock: FakeClock) -> None:
    app_reader = InMemoryMetricReader()
    app = MeterProvider(resource=Resource.create({"service.name": "my-app"}),
                        metric_readers=[app_reader])
    store = SQLiteStore(tmp_path / "b.db")
    config = BudgetConfig(daily_cap_usd=10, instance_id="pod-1", collect_interval_s=3600)
    meter = BudgetMeter(config, store=store, meter_provider=app, clock=clock).start()
    assert meter.meter_provider is app
    meter.record(0.25, {"agent": "a"})
    meter.record(0.5, {"agent": "b"})
    data = app_reader.get_metrics_data()
    assert data is not None
    writer = (WRITER_ATTRIBUTE, meter.writer_id)
    assert points(data, "llm.spend") == {(("agent", "a"), writer): 0.25, (("agent", "b"), writer): 0.5}
    spend = next(m for rm in data.resource_metrics for sm in rm.scope_metrics
                 for m in sm.metrics if m.name == "llm.spend")
    assert isinstance(spend.data, Sum) and spend.data.is_monotonic and spend.unit == "USD"
    assert data.resource_metrics[0].resource.attributes["service.name"] == "my-app"
    assert points(data, "llm.budget.remaining") == {(("budget", "daily"), ("period", "day")): 9.25}
    assert "gen_ai.client.token.usage" not in {
        m.name for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics}
    meter.shutdown()
    app.shutdown()
    again = BudgetMeter(config, store=store, clock=clock).start()
    assert again.daily_spend() == 0.75, "checkpointed at shutdown and restored"
    again.shutdown()
    store.close()


def test_a_budget_reader_on_a_user_built_provider_checkpoints_the_exact_total(
        tmp_path: Path, clock: FakeClock) -> None:
    budget_reader = BudgetReader()
    memory = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[budget_reader, memory])
    store = SQLiteStore(tmp_path / "b.db")
    config = BudgetConfig(daily_cap_usd=10, collect_interval_s=3600, checkpoint_every=2)
    meter = BudgetMeter(config, store=store, meter_provider=provider, clock=clock).start()
    assert meter.reader is budget_reader, "the reader on the provider is bound, not a new one"
    for _ in range(1000):
        meter.record(0.001, {"agent": "x"})
    meter.collect()
    meter.collect()  # the 2nd collection checkpoints
    assert read_day(store, "2026-11-25")["total_usd"] == 1.0
    assert points(budget_reader.latest, "llm.spend") == {
        (("agent", "x"), (WRITER_ATTRIBUTE, meter.writer_id)): 1.0}
    meter.shutdown()
    provider.shutdown()
    store.close()


def test_sdk_disabled_exports_nothing_and_still_enforces(tmp_path: Path, clock: FakeClock,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    import otel_budget

    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    receiver = HttpReceiver()
    try:
        env = {"OTEL_SDK_DISABLED": "true", "OTEL_BUDGET_DAILY_CAP_USD": "1",
               "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
               "OTEL_METRIC_EXPORT_INTERVAL": "100",
               "OTEL_BUDGET_STORE": f"sqlite:///{tmp_path}/b.db"}
        meter = otel_budget.from_env(env, clock=clock)
        meter.record(0.9)
        with pytest.raises(BudgetExceeded):
            meter.guard(0.2)
        assert meter.render_metrics()[0].count(b"llm_spend") == 0
        time.sleep(0.4)
        meter.shutdown()
        assert receiver.drain() == []
        with SQLiteStore(tmp_path / "b.db") as store:
            assert read_day(store, "2026-11-25")["total_usd"] == 0.9
    finally:
        receiver.stop()


def test_opentelemetry_instrument_app_exports_through_its_one_pipeline(
        tmp_path: Path, otlp_http_receiver: HttpReceiver) -> None:
    script = tmp_path / "app.py"
    script.write_text(textwrap.dedent("""
        import otel_budget
        from opentelemetry import metrics
        from opentelemetry.sdk.metrics import MeterProvider

        assert isinstance(metrics.get_meter_provider(), MeterProvider), "instrumented"
        meter = otel_budget.from_env()
        meter.record(0.125, {"agent": "a"})
        meter.record(0.25, {"agent": "b"})
        metrics.get_meter("my-app").create_counter("app.requests").add(3)
        print(meter.writer_id)
        meter.shutdown()
        metrics.get_meter_provider().force_flush()
    """))
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "OTEL_SERVICE_NAME": "instrumented-app",
        "OTEL_METRICS_EXPORTER": "otlp",
        "OTEL_TRACES_EXPORTER": "none",
        "OTEL_LOGS_EXPORTER": "none",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_EXPORTER_OTLP_ENDPOINT": otlp_http_receiver.endpoint,
        "OTEL_METRIC_EXPORT_INTERVAL": "60000",
        "OTEL_BUDGET_DAILY_CAP_USD": "10",
        "OTEL_BUDGET_STORE": f"sqlite:///{tmp_path}/b.db",
        "OTEL_BUDGET_SPOOL_DIR": str(tmp_path / "spool"),
    }
    instrument = Path(sys.executable).with_name("opentelemetry-instrument")
    command = [str(instrument)] if instrument.exists() else ["opentelemetry-instrument"]
    done = subprocess.run([*command, sys.executable, str(script)], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-3000:]
    requests = otlp_http_receiver.drain()
    assert requests, "the app's exporter sent something"
    seen: dict[str, Any] = {}
    resources = set()
    for received in requests:
        for name, metric in metrics_in(received.request).items():
            seen[name] = metric
            resources.add(metric.resource)
    assert len(resources) == 1, "one resource: the app's"
    resource = dict(next(iter(resources)))
    assert resource["service.name"] == "instrumented-app"
    writer = {WRITER_ATTRIBUTE: done.stdout.split()[-1]}
    assert seen["llm.spend"].value(agent="a", **writer) == 0.125
    assert seen["llm.spend"].value(agent="b", **writer) == 0.25
    assert seen["llm.budget.remaining"].value(budget="daily", period="day") == 9.625
    assert "app.requests" in seen
    assert "gen_ai.client.token.usage" not in seen
