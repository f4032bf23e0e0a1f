"""`from_env()`: a started BudgetMeter from the standard environment.

Budget settings come from `BudgetConfig.from_env()` (OTEL_BUDGET_*, OTEL_SERVICE_NAME,
and service.instance.id in OTEL_RESOURCE_ATTRIBUTES as the default instance id).
Export follows the OpenTelemetry SDK variables:

  OTEL_EXPORTER_OTLP_ENDPOINT / OTEL_EXPORTER_OTLP_METRICS_ENDPOINT   unset: no export
  OTEL_EXPORTER_OTLP_PROTOCOL / ..._METRICS_PROTOCOL   grpc | http/protobuf (default)
  OTEL_EXPORTER_OTLP_HEADERS / ..._METRICS_HEADERS     k=v,k2=v2 (URL-encoded values)
  OTEL_METRIC_EXPORT_INTERVAL, OTEL_METRIC_EXPORT_TIMEOUT   milliseconds

The exporters themselves still read the variables not listed here (certificates,
compression, temporality preference). Header values usually carry API keys: they
are passed to the exporter and never logged or shown in an error.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from opentelemetry.metrics import get_meter_provider
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    MetricExporter,
    MetricReader,
    PeriodicExportingMetricReader,
)
from opentelemetry.util.re import parse_env_headers

from .config import BudgetConfig
from .errors import ConfigError
from .meter import BudgetMeter
from .notify import LoggingNotifier, Notifier, SlackNotifier, WebhookNotifier
from .pricing import PriceTable
from .stores.base import PatchStore

__all__ = ["EXPORTERS", "PROTOCOLS", "from_env", "otlp_exporter_from_env", "otlp_reader_from_env",
           "readers_from_env"]

_log = logging.getLogger("otel_budget")

PROTOCOLS = ("grpc", "http/protobuf")
# The specification's default; the Python distro's `opentelemetry-instrument` sets
# grpc instead, so set OTEL_EXPORTER_OTLP_PROTOCOL explicitly when sending to :4317.
_DEFAULT_PROTOCOL = "http/protobuf"
_DEFAULT_INTERVAL_MS = 60_000.0
_DEFAULT_TIMEOUT_MS = 30_000.0


def from_env(
    environ: Mapping[str, str] | None = None,
    *,
    store: PatchStore | None = None,
    notifiers: Sequence[Notifier] | None = None,
    metric_readers: Sequence[MetricReader] = (),
    clock: Callable[[], datetime] | None = None,
    start: bool = True,
    meter_provider: MeterProvider | None = None,
    prices: PriceTable | None = None,
    **config_overrides: Any,
) -> BudgetMeter:
    """Build (and by default start) a BudgetMeter from the environment.

    Where the instruments go:
    - `meter_provider` if given;
    - else the global SDK MeterProvider when the app has set one (as
      `opentelemetry-instrument` does): the app's resource and exporters, no second
      exporter;
    - else a provider of our own, exporting as OTEL_METRICS_EXPORTER says
      (`otlp`, `console`, `prometheus` = served by `serve_health`, `none`; unset:
      OTLP when an endpoint variable is set, else nothing).
    With OTEL_SDK_DISABLED=true nothing is exported; the budget is still kept,
    checkpointed and enforced. `notifiers` defaults to a LoggingNotifier, plus a
    WebhookNotifier when OTEL_BUDGET_WEBHOOK_URL is set (SlackNotifier for a Slack
    URL). Keyword arguments other than these override BudgetConfig fields."""
    env: Mapping[str, str] = os.environ if environ is None else environ
    config = BudgetConfig.from_env(env, **config_overrides)
    if prices is None and environ is not None:
        prices = PriceTable.load_default(environ=env)
    if notifiers is None:
        notifiers = _notifiers_from_env(env)
    provider = meter_provider
    if provider is None and not metric_readers:
        found = get_meter_provider()
        if isinstance(found, MeterProvider):
            provider = found
            _log.info("otel_budget: using the application's MeterProvider")
    if provider is not None:
        meter = BudgetMeter(config, store=store, notifiers=notifiers, clock=clock,
                            meter_provider=provider, prices=prices)
    else:
        readers = list(metric_readers)
        if not _sdk_disabled(env):
            readers.extend(readers_from_env(env))
        meter = BudgetMeter(config, store=store, notifiers=notifiers, metric_readers=readers,
                            clock=clock, prices=prices)
    if start:
        try:
            meter.start()
        except BaseException:
            meter.shutdown()
            raise
    return meter


EXPORTERS = ("otlp", "console", "prometheus", "none")


def _sdk_disabled(env: Mapping[str, str]) -> bool:
    return (_get(env, "OTEL_SDK_DISABLED") or "").lower() == "true"


def readers_from_env(environ: Mapping[str, str] | None = None) -> list[MetricReader]:
    """The metric readers OTEL_METRICS_EXPORTER asks for (see from_env)."""
    env: Mapping[str, str] = os.environ if environ is None else environ
    raw = _get(env, "OTEL_METRICS_EXPORTER")
    names = [part.strip().lower() for part in (raw or "").split(",") if part.strip()]
    for name in names:
        if name not in EXPORTERS:
            raise ConfigError(
                f"OTEL_METRICS_EXPORTER={raw!r}: unknown exporter {name!r}; "
                f"expected {', '.join(EXPORTERS)}"
            )
    readers: list[MetricReader] = []
    if raw is None:
        otlp = otlp_reader_from_env(env)  # only when an endpoint is set
        return [otlp] if otlp is not None else []
    if "none" in names:
        return []
    interval = _millis(env, "OTEL_METRIC_EXPORT_INTERVAL", _DEFAULT_INTERVAL_MS)
    if "otlp" in names:
        exporter = otlp_exporter_from_env(env, default_endpoint=True)
        assert exporter is not None
        readers.append(PeriodicExportingMetricReader(
            exporter, export_interval_millis=interval,
            export_timeout_millis=_millis(env, "OTEL_METRIC_EXPORT_TIMEOUT", _DEFAULT_TIMEOUT_MS),
        ))
    if "console" in names:
        from opentelemetry.sdk.metrics.export import ConsoleMetricExporter

        readers.append(PeriodicExportingMetricReader(ConsoleMetricExporter(),
                                                     export_interval_millis=interval))
    if "prometheus" in names:
        _log.info("otel_budget: OTEL_METRICS_EXPORTER=prometheus: serve /metrics with "
                  "meter.serve_health() or `otel-budget serve`")
    return readers


def otlp_reader_from_env(environ: Mapping[str, str] | None = None) -> MetricReader | None:
    """A PeriodicExportingMetricReader with the OTLP exporter the environment
    names, or None when no endpoint is configured."""
    env: Mapping[str, str] = os.environ if environ is None else environ
    exporter = otlp_exporter_from_env(env)
    if exporter is None:
        return None
    interval = _millis(env, "OTEL_METRIC_EXPORT_INTERVAL", _DEFAULT_INTERVAL_MS)
    timeout = _millis(env, "OTEL_METRIC_EXPORT_TIMEOUT", _DEFAULT_TIMEOUT_MS)
    return PeriodicExportingMetricReader(
        exporter, export_interval_millis=interval, export_timeout_millis=timeout
    )


def otlp_exporter_from_env(
    environ: Mapping[str, str] | None = None, *, default_endpoint: bool = False
) -> MetricExporter | None:
    """The OTLP metric exporter the environment asks for, or None without an endpoint
    (with `default_endpoint`, the specification's localhost default instead)."""
    env: Mapping[str, str] = os.environ if environ is None else environ
    protocol = (
        _get(env, "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL")
        or _get(env, "OTEL_EXPORTER_OTLP_PROTOCOL")
        or _DEFAULT_PROTOCOL
    ).lower()
    if protocol not in PROTOCOLS:
        raise ConfigError(
            f"OTEL_EXPORTER_OTLP_PROTOCOL must be one of {', '.join(PROTOCOLS)}, got {protocol!r}"
        )
    endpoint = _metrics_endpoint(env, protocol)
    if endpoint is None:
        if not default_endpoint:
            return None
        endpoint = ("http://localhost:4317" if protocol == "grpc"
                    else "http://localhost:4318/v1/metrics")
    headers = _headers(env)
    timeout_s = _millis(env, "OTEL_EXPORTER_OTLP_METRICS_TIMEOUT",
                        _millis(env, "OTEL_EXPORTER_OTLP_TIMEOUT", 10_000.0)) / 1000.0
    exporter: MetricExporter
    try:
        if protocol == "grpc":
            from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import (
                OTLPMetricExporter as GrpcExporter,
            )

            exporter = GrpcExporter(
                endpoint=endpoint, insecure=_insecure(env, endpoint),
                headers=headers or None, timeout=timeout_s,
            )
        else:
            from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
                OTLPMetricExporter as HttpExporter,
            )

            exporter = HttpExporter(endpoint=endpoint, headers=headers or None, timeout=timeout_s)
    except ImportError as exc:
        raise ConfigError(
            f"OTLP {protocol} exporter is not installed ({exc.name}): "
            "pip install opentelemetry-exporter-otlp"
        ) from None
    _log.info(
        "otel_budget: exporting metrics over OTLP %s to %s (%d header(s), values hidden)",
        protocol, _redact_endpoint(endpoint), len(headers),
    )
    return exporter


def _metrics_endpoint(env: Mapping[str, str], protocol: str) -> str | None:
    # The signal-specific variable is used verbatim; the base one gets the signal
    # path appended for OTLP/HTTP (OpenTelemetry exporter specification).
    specific = _get(env, "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT")
    base = _get(env, "OTEL_EXPORTER_OTLP_ENDPOINT")
    endpoint = specific or base
    if endpoint is None:
        return None
    parts = urlsplit(endpoint)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(
            "OTEL_EXPORTER_OTLP_ENDPOINT must be an http(s) URL such as "
            f"http://localhost:4318, got {_redact_endpoint(endpoint)!r}"
        )
    if protocol == "http/protobuf" and not specific:
        return endpoint.rstrip("/") + "/v1/metrics"
    return endpoint


def _headers(env: Mapping[str, str]) -> dict[str, str]:
    headers: dict[str, str] = {}
    for name in ("OTEL_EXPORTER_OTLP_HEADERS", "OTEL_EXPORTER_OTLP_METRICS_HEADERS"):
        raw = _get(env, name)
        if raw:
            # liberal: values may contain spaces ("Authorization=Bearer%20abc" or
            # "Authorization=Bearer abc"); keys come back lower-cased, as gRPC requires.
            headers.update(parse_env_headers(raw, liberal=True))
    return headers


def _insecure(env: Mapping[str, str], endpoint: str) -> bool:
    flag = _get(env, "OTEL_EXPORTER_OTLP_METRICS_INSECURE") or _get(
        env, "OTEL_EXPORTER_OTLP_INSECURE"
    )
    if flag is not None:
        return flag.lower() == "true"
    return urlsplit(endpoint).scheme == "http"


def _millis(env: Mapping[str, str], name: str, default: float) -> float:
    raw = _get(env, name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number of milliseconds, got {raw!r}") from None
    if not (0 < value < float("inf")):
        raise ConfigError(f"{name} must be > 0 milliseconds, got {raw!r}")
    return value


def _get(env: Mapping[str, str], name: str) -> str | None:
    value = env.get(name, "").strip()
    return value or None


def _redact_endpoint(endpoint: str) -> str:
    # Credentials in the URL are as secret as headers; keep scheme, host and path.
    try:
        parts = urlsplit(endpoint)
        host = parts.hostname or ""
        if parts.port:
            host = f"{host}:{parts.port}"
        return urlunsplit((parts.scheme, host, parts.path, "", ""))
    except ValueError:
        return "<unparseable endpoint>"


def _notifiers_from_env(env: Mapping[str, str]) -> list[Notifier]:
    notifiers: list[Notifier] = [LoggingNotifier()]
    webhook = _get(env, "OTEL_BUDGET_WEBHOOK_URL")
    if webhook:
        slack = urlsplit(webhook).hostname == "hooks.slack.com"
        notifiers.append(SlackNotifier(webhook) if slack else WebhookNotifier(webhook))
    return notifiers
