"""/metrics rendered at scrape time from the collection of a reader the provider
already has (DESIGN: "no second reader").

An always-on PrometheusMetricReader is one more reader on the provider, and every
synchronous measurement (the token histogram's two points per call, the unpriced
counter) is aggregated once per reader: about 5 µs per point per reader. This
reader is never registered on a provider: when scraped it takes one collection
from `source` (the budget reader's, which aggregates those instruments anyway) and
renders it with the Prometheus exporter's own translation, so the text is exactly
what the exporter would serve.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics.export import MetricsData
from prometheus_client import CollectorRegistry


class ScrapeTimePrometheus(PrometheusMetricReader):
    def __init__(self, source: Callable[[], MetricsData | None],
                 registry: CollectorRegistry) -> None:
        self._source = source
        super().__init__(registry=registry)

    # The exporter's collector calls collect() at each scrape. MetricReader marks it
    # final for readers a provider drives; this one no provider drives, and it keeps
    # the contract (collect, then hand the data to _receive_metrics) with another
    # reader's collection as the source. tests/integration/test_scrape.py fails if the exporter
    # stops calling it.
    def collect(self, timeout_millis: float = 10_000, **kwargs: Any) -> None:  # type: ignore[misc]
        data = self._source()
        if data is not None:
            self._receive_metrics(data)
