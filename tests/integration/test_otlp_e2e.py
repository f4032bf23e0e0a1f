"""The real OTLP exporters (gRPC and HTTP/protobuf), configured by from_env() from
the standard variables, deliver the spend counter and the budget gauges to real
OTLP receivers with the right values, units, temporality and resource."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import (
    OTLPMetricExporter as GrpcExporter,
)
from opentelemetry.proto.metrics.v1 import metrics_pb2
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

from otel_budget import BudgetConfig, BudgetMeter, ConfigError
from otel_budget.autoconfig import from_env, otlp_exporter_from_env, otlp_reader_from_env
from otel_budget.instruments import WRITER_ATTRIBUTE
from otel_budget.stores.sqlite import SQLiteStore
from tests.support.otlp_receivers import GrpcReceiver, HttpReceiver, MetricSeen, metrics_in

CUMULATIVE = metrics_pb2.AGGREGATION_TEMPORALITY_CUMULATIVE
SONNET = "claude-sonnet-4-20250514"
HAIKU = "claude-3-5-haiku-20241022"
SECRET = "s3cr3t-token-value"

GAUGE_UNITS = {
    "llm.budget.daily_spend": "USD",
    "llm.budget.daily_cap": "USD",
    "llm.budget.remaining": "USD",
    "llm.budget.utilization.ratio": "1",
    "llm.budget.unflushed": "USD",
    "llm.budget.checkpoint.age": "s",
    "llm.budget.store.up": "{status}",
    "llm.budget.alerts.sent": "{alert}",
}
# The budget gauges carry the budget's name (and period); the process gauges carry nothing.
BUDGET_POINT: dict[str, dict[str, str]] = {
    name: {"budget": "daily", "period": "day"}
    for name in ("llm.budget.daily_spend", "llm.budget.daily_cap", "llm.budget.remaining",
                 "llm.budget.utilization.ratio", "llm.budget.alerts.sent")
}


@pytest.fixture
def budget_env(tmp_path: Path) -> dict[str, str]:
    return {
        "OTEL_BUDGET_DAILY_CAP_USD": "10",
        "OTEL_BUDGET_STORE": f"sqlite:///{tmp_path / 'budget.db'}",
        # A long interval: the test drives collections, the timer must not race it.
        "OTEL_BUDGET_COLLECT_INTERVAL_S": "3600",
        "OTEL_SERVICE_NAME": "dispatcher",
        "OTEL_RESOURCE_ATTRIBUTES": "service.instance.id=pod-7,deployment.environment.name=e2e",
        "OTEL_METRIC_EXPORT_INTERVAL": "3600000",
        "OTEL_EXPORTER_OTLP_HEADERS": f"authorization=Bearer%20{SECRET},x-tenant=acme",
    }


def _record_known_spend(meter: BudgetMeter) -> None:
    meter.record(2.5, {"gen_ai.request.model": SONNET, "agent": "cloud_lu"})
    meter.record(1.25, {"gen_ai.request.model": HAIKU, "agent": "ag_lu"})
    meter.record(0.25, {"gen_ai.request.model": SONNET, "agent": "cloud_lu"})


def _export_now(meter: BudgetMeter) -> None:
    assert meter.meter_provider.force_flush(timeout_millis=10_000)


def _assert_budget_metrics(metrics: dict[str, MetricSeen], *, instance_id: str) -> None:
    spend = metrics["llm.spend"]
    assert (spend.kind, spend.unit, spend.monotonic) == ("sum", "USD", True)
    assert spend.temporality == CUMULATIVE
    assert spend.scope == "otel_budget"
    # Each point names its writer, which is this meter's own service instance here.
    writer = dict(spend.resource)["service.instance.id"]
    assert spend.value(**{"gen_ai.request.model": SONNET, "agent": "cloud_lu",
                          WRITER_ATTRIBUTE: writer}) == 2.75
    assert spend.value(**{"gen_ai.request.model": HAIKU, "agent": "ag_lu",
                          WRITER_ATTRIBUTE: writer}) == 1.25

    for name, unit in GAUGE_UNITS.items():
        assert name in metrics, f"{name} not exported; got {sorted(metrics)}"
        assert (metrics[name].kind, metrics[name].unit) == ("gauge", unit), name
    value = {name: metrics[name].value(**BUDGET_POINT.get(name, {})) for name in GAUGE_UNITS}
    assert value["llm.budget.daily_spend"] == 4.0
    assert value["llm.budget.daily_cap"] == 10.0
    assert value["llm.budget.remaining"] == 6.0
    assert value["llm.budget.utilization.ratio"] == 0.4
    assert value["llm.budget.unflushed"] == 4.0  # nothing checkpointed yet
    assert value["llm.budget.store.up"] == 1
    assert value["llm.budget.alerts.sent"] == 0
    assert 0 <= value["llm.budget.checkpoint.age"] < 60

    resource = dict(spend.resource)
    assert resource["service.name"] == "dispatcher"
    # service.instance.id is unique per process (the specification requires it); the
    # shared label (the Operator's pod-7) rides along as otel_budget.instance.id.
    assert resource["otel_budget.instance.id"] == instance_id
    assert resource["service.instance.id"] not in ("", instance_id)
    # Other OTEL_RESOURCE_ATTRIBUTES ride along (Resource.create merges them).
    assert resource.get("deployment.environment.name") == "e2e"
    assert resource["telemetry.sdk.language"] == "python"


@pytest.fixture
def meters() -> Iterator[list[BudgetMeter]]:
    made: list[BudgetMeter] = []
    yield made
    for meter in made:
        meter.shutdown()


def _from_env(env: dict[str, str], monkeypatch: pytest.MonkeyPatch,
              meters: list[BudgetMeter]) -> BudgetMeter:
    """from_env(env), with `env` in the real environment too (Resource.create reads
    it there), shut down after the test."""
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    meter = from_env(env, notifiers=[])
    meters.append(meter)
    return meter


@pytest.mark.slow
def test_grpc_export_from_env(
    otlp_grpc_receiver: GrpcReceiver, budget_env: dict[str, str], meters: list[BudgetMeter],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    env = {**budget_env, "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
           "OTEL_EXPORTER_OTLP_ENDPOINT": otlp_grpc_receiver.endpoint}
    meter = _from_env(env, monkeypatch, meters)
    assert meter.instance_id == "pod-7"  # from OTEL_RESOURCE_ATTRIBUTES
    _record_known_spend(meter)
    _export_now(meter)
    received = otlp_grpc_receiver.get()
    _assert_budget_metrics(metrics_in(received.request), instance_id="pod-7")
    assert received.headers["authorization"] == f"Bearer {SECRET}"
    assert received.headers["x-tenant"] == "acme"

    # After a checkpoint the next export shows nothing unflushed.
    assert meter.checkpoint()
    otlp_grpc_receiver.drain()
    _export_now(meter)
    after = metrics_in(otlp_grpc_receiver.get().request)
    assert after["llm.budget.unflushed"].value() == 0.0
    assert after["llm.budget.checkpoint.age"].value() < 5


@pytest.mark.slow
def test_http_export_from_env(
    otlp_http_receiver: HttpReceiver, budget_env: dict[str, str], meters: list[BudgetMeter],
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    # The base endpoint: the exporter must append /v1/metrics (the receiver 404s otherwise).
    env = {**budget_env, "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
           "OTEL_EXPORTER_OTLP_ENDPOINT": otlp_http_receiver.endpoint + "/"}
    meter = _from_env(env, monkeypatch, meters)
    _record_known_spend(meter)
    _export_now(meter)
    received = otlp_http_receiver.get()
    _assert_budget_metrics(metrics_in(received.request), instance_id="pod-7")
    assert received.headers["authorization"] == f"Bearer {SECRET}"
    assert received.headers["content-type"] == "application/x-protobuf"
    # Header values are secrets: not in any log line, nor in the meter's repr.
    assert SECRET not in caplog.text
    assert "exporting metrics over OTLP http/protobuf" in caplog.text
    assert SECRET not in repr(meter)


@pytest.mark.slow
def test_reader_passed_in_directly(
    otlp_grpc_receiver: GrpcReceiver, tmp_path: Path, meters: list[BudgetMeter]
) -> None:
    # The library path without from_env: any reader the host already builds.
    reader = PeriodicExportingMetricReader(
        GrpcExporter(endpoint=otlp_grpc_receiver.endpoint, insecure=True),
        export_interval_millis=math.inf,
    )
    store = SQLiteStore(tmp_path / "b.db")
    config = BudgetConfig(daily_cap_usd=10.0, instance_id="direct-1", service_name="dispatcher",
                          collect_interval_s=3600)
    meter = BudgetMeter(config, store=store, metric_readers=[reader]).start()
    meters.append(meter)
    _record_known_spend(meter)
    meter.collect()
    _export_now(meter)
    metrics = metrics_in(otlp_grpc_receiver.get().request)
    assert metrics["llm.spend"].value(**{"gen_ai.request.model": HAIKU, "agent": "ag_lu",
                                          WRITER_ATTRIBUTE: meter.writer_id}) == 1.25
    assert metrics["llm.budget.daily_spend"].value(budget="daily", period="day") == 4.0
    resource = dict(metrics["llm.spend"].resource)
    assert resource["service.instance.id"] == meter.writer_id
    assert resource["otel_budget.instance.id"] == "direct-1"
    meter.shutdown()
    store.close()


def test_no_endpoint_means_no_exporter_but_a_working_budget(
    budget_env: dict[str, str], meters: list[BudgetMeter]
) -> None:
    assert otlp_exporter_from_env(budget_env) is None
    assert otlp_reader_from_env(budget_env) is None
    meter = from_env(budget_env, notifiers=[])
    meters.append(meter)
    meter.record(3.0)
    assert meter.daily_spend() == 3.0
    assert meter.health()["status"] == "ok"


def test_endpoint_resolution() -> None:
    http = otlp_exporter_from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"})
    assert http is not None and _endpoint(http) == "http://collector:4318/v1/metrics"
    specific = otlp_exporter_from_env({
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://ignored:1",
        "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": "http://collector:4318/custom/path",
    })
    assert specific is not None and _endpoint(specific) == "http://collector:4318/custom/path"
    grpc_exporter = otlp_exporter_from_env({
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "GRPC",
    })
    assert isinstance(grpc_exporter, GrpcExporter)
    for exporter in (http, specific, grpc_exporter):
        exporter.shutdown()


def _endpoint(exporter: Any) -> str:
    endpoint: str = exporter._endpoint  # the HTTP exporter keeps no public accessor
    return endpoint


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x:1", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"},
         "must be one of grpc, http/protobuf"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "collector:4317"}, "must be an http(s) URL"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x:1", "OTEL_METRIC_EXPORT_INTERVAL": "soon"},
         "OTEL_METRIC_EXPORT_INTERVAL must be a number"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x:1", "OTEL_METRIC_EXPORT_INTERVAL": "0"},
         "must be > 0"),
    ],
)
def test_bad_settings_are_config_errors(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        otlp_reader_from_env(env)


def test_credentials_in_the_endpoint_are_not_echoed() -> None:
    with pytest.raises(ConfigError) as info:
        otlp_exporter_from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": "ftp://user:hunter2@host:1"})
    assert "hunter2" not in str(info.value)
