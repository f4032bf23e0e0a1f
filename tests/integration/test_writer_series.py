"""Series that never collide: processes sharing one resource (the same
service.instance.id, as every worker of a pod gets from the OpenTelemetry
Operator) export distinct `llm.spend` series, each point naming its writer in
`otel_budget.writer.id`, over OTLP and on /metrics; summing them gives the fleet's
spend. A forked child names a writer of its own."""

from __future__ import annotations

import json
import subprocess
from collections import defaultdict
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from otel_budget.instruments import WRITER_ATTRIBUTE
from tests.support.apps.procs import PYTHON, ROOT, child_env
from tests.support.otlp_receivers import HttpReceiver, metrics_in

pytestmark = pytest.mark.slow


def _run(receiver: HttpReceiver, agent: str, usd: float,
         fork_usd: float | None = None) -> subprocess.Popen[bytes]:
    argv = [PYTHON, "-m", "tests.support.apps.shared_resource", receiver.metrics_url, agent, repr(usd)]
    if fork_usd is not None:
        argv += ["--fork", repr(fork_usd)]
    return subprocess.Popen(argv, cwd=ROOT, env=child_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)


def _reports(proc: subprocess.Popen[bytes]) -> list[dict[str, Any]]:
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-3000:]
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def _scraped_spend(text: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {tuple(sorted(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples
            if s.name == "llm_spend_USD_total"}


def test_processes_sharing_a_resource_export_distinct_spend_series(
        otlp_http_receiver: HttpReceiver) -> None:
    first = _run(otlp_http_receiver, "coder", 0.25, fork_usd=0.125)
    second = _run(otlp_http_receiver, "coder", 1.5)
    reports = _reports(first) + _reports(second)
    writers = [r["writer_id"] for r in reports]
    assert len(reports) == 3 and len(set(writers)) == 3, writers  # the forked child's is new

    # OTLP: the two processes started as workers share the resource pod-7, so only
    # the writer attribute tells their series apart. (The SDK gives a forked child a
    # service.instance.id of its own; its series is distinct either way.)
    latest: dict[tuple[Any, ...], float] = {}
    instance_of: dict[str, str] = {}
    for received in otlp_http_receiver.drain():
        spend = metrics_in(received.request).get("llm.spend")
        if spend is None:
            continue
        for attrs, value in spend.points:
            latest[(spend.resource, attrs)] = value
            instance_of[dict(attrs)[WRITER_ATTRIBUTE]] = dict(spend.resource)["service.instance.id"]
    child, parent, other = writers
    assert instance_of[parent] == instance_of[other] == "pod-7", instance_of
    by_writer: dict[str, float] = defaultdict(float)
    for (_, attrs), value in latest.items():
        point = dict(attrs)
        assert point["agent"] == "coder"
        by_writer[point[WRITER_ATTRIBUTE]] += value
    assert by_writer == {child: 0.125, parent: 0.25, other: 1.5}, (by_writer, writers)
    assert sum(by_writer.values()) == 0.25 + 0.125 + 1.5  # the fleet, summed

    # /metrics of each process: its own series, labelled with its writer.
    total = 0.0
    for report in reports:
        samples = _scraped_spend(report["metrics"])
        assert [dict(k)["otel_budget_writer_id"] for k in samples] == [report["writer_id"]]
        total += sum(samples.values())
    assert total == 0.25 + 0.125 + 1.5
