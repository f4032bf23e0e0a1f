"""One worker of a fleet whose processes share a resource (what
`opentelemetry-instrument` under the OpenTelemetry Operator gives every worker of
a pod: the same service.instance.id), for tests/integration/test_writer_series.py.

    python -m tests.support.apps.shared_resource OTLP_METRICS_URL AGENT USD [--fork USD]

The app's MeterProvider exports OTLP to OTLP_METRICS_URL; the meter records USD
under {"agent": AGENT}, exports once, and prints one JSON line: its writer id and
its /metrics text. With --fork, a forked child records the second amount, exports
and prints its own line first.
"""

from __future__ import annotations

import json
import os
import sys

from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource

from otel_budget import BudgetConfig, BudgetMeter


def report(meter: BudgetMeter, provider: MeterProvider) -> None:
    assert provider.force_flush(timeout_millis=10_000)
    text = meter.render_metrics()[0].decode()
    print(json.dumps({"writer_id": meter.writer_id, "metrics": text, "pid": os.getpid()}),
          flush=True)


def main(url: str, agent: str, usd: float, fork_usd: float | None) -> None:
    reader = PeriodicExportingMetricReader(OTLPMetricExporter(endpoint=url),
                                           export_interval_millis=3_600_000)
    provider = MeterProvider(
        resource=Resource.create({"service.name": "dispatcher", "service.instance.id": "pod-7"}),
        metric_readers=[reader])
    config = BudgetConfig(daily_cap_usd=100.0, store_url="memory://", collect_interval_s=3600)
    meter = BudgetMeter(config, meter_provider=provider).start()
    meter.record(usd, {"agent": agent})
    if fork_usd is not None:
        pid = os.fork()
        if pid == 0:
            try:
                meter.record(fork_usd, {"agent": agent})
                report(meter, provider)
            finally:
                os._exit(0)
        os.waitpid(pid, 0)
    report(meter, provider)
    meter.shutdown()
    provider.shutdown()


if __name__ == "__main__":
    args = sys.argv[1:]
    fork = float(args[4]) if len(args) > 4 and args[3] == "--fork" else None
    main(args[0], args[1], float(args[2]), fork)
