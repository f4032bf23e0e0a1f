"""The fleet's spend read from the store, as Prometheus text: what `otel-budget
serve` adds to its /metrics so that one scrape target is exact in a deployment of
many workers (each worker's own /metrics shows its own spend and its view of the
fleet; these gauges are the store's rows, the same whichever process answers).

    llm_fleet_spend_USD{budget, period}              spend in the budget's current window
    llm_fleet_cap_USD{budget, period}                the cap (when known)
    llm_fleet_utilization_ratio{budget, period}
    llm_fleet_day_spend_USD                          every writer's spend today
    llm_fleet_spend_by_attributes_USD{<attributes>}  today's breakdown, summed over writers
    llm_fleet_writers{state}                         live, stale, retired writers today
    llm_fleet_refusals{budget, window}               refusals stored in writers' entries
    llm_fleet_read_ok                                1 if the last store read succeeded

Attribute names become label names as the OpenTelemetry Prometheus exporter spells
them (`gen_ai.request.model` -> `gen_ai_request_model`). At most `max_series`
attribute sets are exported, the largest; the rest are summed into one series
labelled `otel_budget_overflow="true"`.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from .. import ledger, money
from ..refusals import ENTRY_KEY, merge_entry_counts
from .status import StatusSource

__all__ = ["DEFAULT_MAX_SERIES", "FleetMetrics", "label_name"]

DEFAULT_MAX_SERIES = 2000
_INVALID = re.compile(r"[^A-Za-z0-9_]")


def label_name(key: str) -> str:
    """A Prometheus label name for an attribute key (as the OTel exporter does)."""
    name = _INVALID.sub("_", key)
    if not name or name[0].isdigit():
        name = "_" + name
    if name.startswith("__"):
        name = "_" + name.lstrip("_")  # "__" prefixes are Prometheus' own
    return name


def _labels(attributes: Mapping[str, Any]) -> dict[str, str]:
    out: dict[str, str] = {}
    for key in sorted(attributes):
        name = label_name(str(key))
        value = attributes[key]
        text = str(value).lower() if isinstance(value, bool) else str(value)
        # Two keys that spell the same label: joined, as the OTel exporter does.
        out[name] = f"{out[name]};{text}" if name in out else text
    return out


class FleetMetrics(Collector):
    """A prometheus_client collector over `StatusSource.fleet_read()`."""

    def __init__(self, source: StatusSource, *, max_series: int = DEFAULT_MAX_SERIES,
                 cache_s: float = 5.0) -> None:
        if not isinstance(max_series, int) or max_series < 1:
            raise ValueError(f"max_series must be an int >= 1, got {max_series!r}")
        self._source = source
        self._max_series = max_series
        self._cache_s = float(cache_s)
        self._lock = threading.Lock()
        self._cached: tuple[float, bytes] | None = None
        self._registry = CollectorRegistry(auto_describe=False)
        self._registry.register(self)

    def describe(self) -> Iterable[Metric]:
        return []  # registering must not read the store

    def render(self) -> bytes:
        """The Prometheus text exposition (0.0.4) of these gauges. Kept `cache_s`
        (an HA pair of Prometheus servers, or a fast scrape interval, costs one
        store read and one rendering per period; 10,000 attribute sets take a few
        hundred milliseconds to render)."""
        with self._lock:
            now = time.monotonic()
            if self._cached is not None and now - self._cached[0] < self._cache_s:
                return self._cached[1]
            body = generate_latest(self._registry)
            self._cached = (now, body)
            return body

    def collect(self) -> Iterable[Metric]:
        read = self._source.fleet_read()
        entries: list[dict[str, Any]] = read["entries"]

        spend = Metric("llm_fleet_spend", "Fleet spend in the budget's window, from the store",
                       "gauge", unit="USD")
        cap = Metric("llm_fleet_cap", "The budget's cap", "gauge", unit="USD")
        util = Metric("llm_fleet_utilization_ratio",
                      "Fleet spend in the window divided by the cap", "gauge")
        for row in read["budgets"]:
            labels = {"budget": str(row["name"]), "period": str(row["period"])}
            spend.add_sample("llm_fleet_spend_USD", labels, float(row["spend_usd"]))
            if row.get("cap_usd"):
                cap.add_sample("llm_fleet_cap_USD", labels, float(row["cap_usd"]))
                util.add_sample("llm_fleet_utilization_ratio", labels,
                                float(row["utilization"]))
        yield from (spend, cap, util)

        day_total = money.round_usd(sum(
            float(e["spend_usd"]) for e in entries if money.is_amount(e.get("spend_usd"))))
        total = Metric("llm_fleet_day_spend", "Every writer's spend today, from the store",
                       "gauge", unit="USD")
        total.add_sample("llm_fleet_day_spend_USD", {}, day_total)
        yield total

        merged: dict[ledger.AttributesKey, float] = {}
        for entry in entries:
            items = entry.get("by_attributes")
            if isinstance(items, list):
                try:
                    merged = ledger.add_maps(merged, ledger.by_attributes_to_map(items))
                except (TypeError, ValueError, KeyError, AttributeError):
                    continue  # one odd row must not hide the rest of the fleet
        rows = sorted(ledger.map_to_by_attributes(merged), key=lambda r: -r["spend_usd"])
        by_attrs = Metric("llm_fleet_spend_by_attributes",
                          "Fleet spend today per attribute set, from the store", "gauge",
                          unit="USD")
        for row in rows[:self._max_series]:
            by_attrs.add_sample("llm_fleet_spend_by_attributes_USD", _labels(row["attributes"]),
                                float(row["spend_usd"]))
        rest = rows[self._max_series:]
        if rest:
            by_attrs.add_sample("llm_fleet_spend_by_attributes_USD",
                                {"otel_budget_overflow": "true"},
                                money.round_usd(sum(r["spend_usd"] for r in rest)))
        yield by_attrs

        writers = Metric("llm_fleet_writers", "Writers with a row today, by state", "gauge")
        counts = self._source.writer_counts(entries)
        for state in ("live", "stale", "retired"):
            writers.add_sample("llm_fleet_writers", {"state": state}, float(counts[state]))
        yield writers

        refusals = Metric("llm_fleet_refusals",
                          "Refusals in the budget's window stored in writers' entries", "gauge")
        windows = {str(r["name"]): str(r["window"]) for r in read["budgets"]}
        for budget, per in sorted(merge_entry_counts(e.get(ENTRY_KEY) for e in entries).items()):
            window = windows.get(budget)
            if window is not None and window in per:
                refusals.add_sample("llm_fleet_refusals", {"budget": budget, "window": window},
                                    float(per[window]))
        yield refusals

        ok = Metric("llm_fleet_read_ok", "1 if the last read of the store succeeded", "gauge")
        ok.add_sample("llm_fleet_read_ok", {}, 0.0 if read["errors"] else 1.0)
        yield ok
