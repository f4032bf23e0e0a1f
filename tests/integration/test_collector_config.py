"""collector-config.yaml is a coherent Collector pipeline that fits the rest of the
repository: every component a pipeline uses is defined, the ports are the ones the
docs/observability.md and the dashboards' Prometheus use. (No collector binary is installable here,
so this is structural; the OTLP wire format is proven in test_otlp_e2e.py.)"""

from __future__ import annotations

from typing import Any

import pytest
import yaml  # type: ignore[import-untyped,unused-ignore]

from tests.support.paths import ROOT

ROOT = ROOT
KINDS = ("receivers", "processors", "exporters", "connectors")


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    loaded = yaml.safe_load((ROOT / "collector-config.yaml").read_text())
    assert isinstance(loaded, dict)
    return loaded


@pytest.fixture(scope="module")
def prometheus_config() -> dict[str, Any]:
    loaded = yaml.safe_load((ROOT / "dashboards" / "prometheus.yml").read_text())
    assert isinstance(loaded, dict)
    return loaded


def _type(component_id: str) -> str:
    # "otlp/2" is a second instance of type "otlp".
    return component_id.split("/", 1)[0]


def _port(endpoint: str) -> int:
    return int(endpoint.rsplit(":", 1)[1])


def test_every_referenced_component_is_defined(config: dict[str, Any]) -> None:
    pipelines = config["service"]["pipelines"]
    assert pipelines, "no pipelines"
    for name, pipeline in pipelines.items():
        for kind in ("receivers", "processors", "exporters"):
            for component in pipeline.get(kind, []):
                defined = config.get(kind) or {}
                if kind != "processors" and component in (config.get("connectors") or {}):
                    continue
                assert component in defined, (
                    f"pipeline {name}: {kind[:-1]} {component!r} is not defined"
                )
    for extension in config["service"].get("extensions", []):
        assert extension in (config.get("extensions") or {}), f"extension {extension!r} undefined"


def test_every_defined_component_is_used(config: dict[str, Any]) -> None:
    # A defined but unused component is usually a typo in the pipeline.
    used = {
        c
        for pipeline in config["service"]["pipelines"].values()
        for kind in ("receivers", "processors", "exporters")
        for c in pipeline.get(kind, [])
    }
    for kind in ("receivers", "processors", "exporters"):
        for component in config.get(kind) or {}:
            assert component in used, f"{kind[:-1]} {component!r} is defined but unused"
    assert set(config.get("extensions") or {}) == set(config["service"].get("extensions", []))


def test_one_metrics_pipeline_with_the_expected_shape(config: dict[str, Any]) -> None:
    pipelines = config["service"]["pipelines"]
    assert list(pipelines) == ["metrics"]
    metrics = pipelines["metrics"]
    assert metrics["receivers"] == ["otlp"]
    processors = [_type(p) for p in metrics["processors"]]
    # memory_limiter must come first so it can refuse data before anything buffers it;
    # batch after it, and after the attribute processors so batches hold final data.
    assert processors[0] == "memory_limiter"
    assert "batch" in processors
    assert {"resource", "attributes"} & set(processors)
    assert processors.index("batch") > max(
        processors.index(p) for p in ("resource", "attributes") if p in processors
    )
    assert {_type(e) for e in metrics["exporters"]} == {"prometheus", "debug"}
    assert "health_check" in config["service"]["extensions"]


def test_otlp_receiver_ports(config: dict[str, Any]) -> None:
    protocols = config["receivers"]["otlp"]["protocols"]
    assert _port(protocols["grpc"]["endpoint"]) == 4317
    assert _port(protocols["http"]["endpoint"]) == 4318


def test_memory_limiter_is_configured(config: dict[str, Any]) -> None:
    limiter = config["processors"]["memory_limiter"]
    # Without check_interval (default 0s) the limiter never checks.
    assert limiter.get("check_interval")
    assert limiter.get("limit_mib") or limiter.get("limit_percentage")


def test_prometheus_scrapes_the_collector_exporter_port(
    config: dict[str, Any], prometheus_config: dict[str, Any]
) -> None:
    exporter_port = _port(config["exporters"]["prometheus"]["endpoint"])
    jobs = [
        job for job in prometheus_config["scrape_configs"]
        if any(
            _port(target) == exporter_port
            for static in job.get("static_configs", [])
            for target in static["targets"]
        )
    ]
    assert jobs, f"dashboards/prometheus.yml scrapes no target on port {exporter_port}"
    # The collector sets job/instance from the resource; Prometheus must keep them.
    assert all(job.get("honor_labels") is True for job in jobs)


def test_the_docs_give_the_command_and_ports(config: dict[str, Any]) -> None:
    readme = (ROOT / "docs" / "observability.md").read_text()
    assert "otelcol-contrib --config collector-config.yaml" in readme
    protocols = config["receivers"]["otlp"]["protocols"]
    for endpoint in (
        protocols["grpc"]["endpoint"],
        protocols["http"]["endpoint"],
        config["exporters"]["prometheus"]["endpoint"],
    ):
        assert str(_port(endpoint)) in readme, \
            f"docs/observability.md does not mention port {_port(endpoint)}"
