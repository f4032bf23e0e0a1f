"""BudgetReader: the custom MetricReader that drives the budget's collections.

A thin reader: its own timer (a collection happens even when nothing was recorded,
which the SDK's collect() would skip), an extra collection at each day boundary so
the old day's final checkpoint holds what was recorded before midnight, and fork
hooks so a forked child runs its own timer. What a collection does with the
numbers is the tracker's job (tracker.py); the numbers live in the ledger.

Put it on your own MeterProvider next to your exporters and hand that provider to
`BudgetMeter(config, meter_provider=provider)`: the meter finds the reader there
and binds it, so no second provider is built.

`llm.spend` in this reader's collections is built from the ledger's cells
(`LedgerReader`): the SDK's observable path costs about 10 µs per attribute set and
per reader collection (an Observation, a Measurement, attribute cleaning, an
aggregation per set held in each reader's storage), this about 1 µs. The observable
instrument stays registered for every other reader on the provider (an OTLP
exporter, the app's readers, with whatever temporality they ask for): its callback
yields nothing while a LedgerReader collects in this thread, and the reader splices
its own points into the data it receives. Both read the same ledger sums, so every
reader exports the same values.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Metric,
    MetricReader,
    MetricsData,
    NumberDataPoint,
    ResourceMetrics,
    ScopeMetrics,
    Sum,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

from . import ledger, money

if TYPE_CHECKING:
    from .tracker import BudgetTracker

SCOPE_NAME = "otel_budget"
SPEND_INSTRUMENT = "llm.spend"

SPEND_UNIT = "USD"
SPEND_DESCRIPTION = "Money spent on LLM calls"

_log = logging.getLogger("otel_budget")
_ledger_collecting = threading.local()
_NO_EXEMPLARS: tuple[()] = ()

#: What a spend source returns: the attribute sets and their nano-USD sums (two
#: columns), the extra attributes every point carries, and the start of the
#: cumulative series (ns).
SpendPoints = tuple[tuple[tuple[dict[str, Any], ...], tuple[int, ...]], dict[str, Any], int]


def ledger_collecting() -> bool:
    """True while a LedgerReader collects in this thread: the observable `llm.spend`
    callback then yields nothing (the reader adds the ledger's points itself)."""
    return bool(getattr(_ledger_collecting, "on", False))


def spend_metric(points: SpendPoints, now_ns: int) -> Metric | None:
    """The cumulative, monotonic `llm.spend` Sum of these ledger points (None for no
    points, as the SDK leaves out an instrument that observed nothing)."""
    (attribute_sets, sums), extra, start_ns = points
    if not sums:
        return None
    per_usd = money.NANOS_PER_USD
    # Positional (attributes, start_time_unix_nano, time_unix_nano, value, exemplars),
    # the dataclass's field order: half the cost of keywords per point.
    data_points = [NumberDataPoint({**attrs, **extra}, start_ns, now_ns, nanos / per_usd,
                                   _NO_EXEMPLARS)
                   for attrs, nanos in zip(attribute_sets, sums, strict=True)]
    return Metric(name=SPEND_INSTRUMENT, description=SPEND_DESCRIPTION, unit=SPEND_UNIT,
                  data=Sum(data_points=data_points, is_monotonic=True,
                           aggregation_temporality=AggregationTemporality.CUMULATIVE))


def splice_metric(data: MetricsData | None, metric: Metric, resource: Resource,
                  scope: InstrumentationScope) -> MetricsData:
    """`data` with `metric` added to `scope`'s metrics (replacing one of the same name)."""
    if data is None or not data.resource_metrics:
        return MetricsData(resource_metrics=[ResourceMetrics(
            resource=resource, schema_url=resource.schema_url,
            scope_metrics=[ScopeMetrics(scope=scope, metrics=[metric], schema_url="")])])
    first = data.resource_metrics[0]
    scopes = list(first.scope_metrics)
    for i, scope_metrics in enumerate(scopes):
        if scope_metrics.scope.name == scope.name:
            metrics = [m for m in scope_metrics.metrics if m.name != metric.name]
            metrics.append(metric)
            scopes[i] = ScopeMetrics(scope=scope_metrics.scope, metrics=metrics,
                                     schema_url=scope_metrics.schema_url)
            break
    else:
        scopes.append(ScopeMetrics(scope=scope, metrics=[metric], schema_url=""))
    return MetricsData(resource_metrics=[
        ResourceMetrics(resource=first.resource, scope_metrics=scopes,
                        schema_url=first.schema_url),
        *data.resource_metrics[1:],
    ])


class LedgerReader(MetricReader):
    """A reader whose `llm.spend` points come from the ledger (see the module
    docstring); everything else is the SDK's collection.

    A collection keeps the SDK's data and the ledger's sums as of that instant; the
    spend points are built when the data is read (`latest`, `collect_data`): the
    timer's collections feed no exporter, and 2,000 built points held between
    collections would outweigh the ledger itself."""

    def __init__(self) -> None:
        super().__init__()
        self._spend_source: Callable[[], SpendPoints] | None = None
        self._resource = Resource.get_empty()
        self._scope = InstrumentationScope(SCOPE_NAME)
        # One tuple, replaced whole: a read racing a collection sees one collection's.
        self._kept: tuple[MetricsData | None, tuple[SpendPoints, int] | None] = (None, None)
        self._received = False

    def set_spend_source(self, source: Callable[[], SpendPoints], *, resource: Resource,
                         scope: InstrumentationScope) -> None:
        self._spend_source = source
        self._resource = resource
        self._scope = scope

    def _receive_metrics(
        self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any
    ) -> None:
        self._received = True
        self._keep(metrics_data)

    def _keep(self, data: MetricsData | None) -> None:
        source = self._spend_source
        self._kept = (data, (source(), time.time_ns()) if source is not None else None)

    def collect_spliced(self) -> None:
        """One SDK collection with `llm.spend` from the ledger."""
        if self._collect is None:  # on no provider: the ledger's points alone
            self._keep(None)
            return
        self._received = False
        _ledger_collecting.on = True
        try:
            self.collect()
        finally:
            _ledger_collecting.on = False
        if not self._received:  # the SDK had nothing else to report
            self._keep(None)

    def collect_data(self) -> MetricsData | None:
        """One collection, without a store round (what /metrics renders)."""
        self.collect_spliced()
        return self.latest

    @property
    def latest(self) -> MetricsData | None:
        """What the last collection produced (None if nothing yet); built at each read
        (the same values and times each time)."""
        data, spend = self._kept
        if spend is None:
            return data
        metric = spend_metric(*spend)
        if metric is None:
            return data
        return splice_metric(data, metric, self._resource, self._scope)

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        pass


_GATED: weakref.WeakSet[BudgetReader] = weakref.WeakSet()
_held_at_fork: list[BudgetReader] = []


def _before_fork() -> None:
    # A fork while the timer is inside the SDK's collection would copy the SDK's
    # locks held: the child's first collection would wait for them forever. Let the
    # collection finish first (bounded: a stuck one must not stop the fork).
    for reader in list(_GATED):
        if reader._gate.acquire(timeout=2.0):
            _held_at_fork.append(reader)


def _after_fork_in_parent() -> None:
    while _held_at_fork:
        _held_at_fork.pop()._gate.release()


def _after_fork_in_child() -> None:
    _held_at_fork.clear()
    for reader in list(_GATED):
        reader._gate = threading.Lock()


os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent,
                    after_in_child=_after_fork_in_child)


class BudgetReader(LedgerReader):
    def __init__(self) -> None:
        super().__init__()
        #: Held while the timer is inside the SDK's collection (see _before_fork).
        self._gate = threading.Lock()
        _GATED.add(self)
        self._tracker: BudgetTracker | None = None
        self._interval = 60.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._timer_wanted = False
        self._closed = False
        self._clock: Callable[[], datetime] | None = None
        self._tz: ZoneInfo | None = None

    # --- wiring -----------------------------------------------------------------

    def bind(self, tracker: BudgetTracker, *, interval_s: float,
             clock: Callable[[], datetime] | None = None, tz: ZoneInfo | None = None) -> None:
        """`clock` (aware datetimes) and `tz` place the day boundaries the timer wakes
        up for; by default the tracker's clock and the UTC day."""
        if self._tracker is not None and self._tracker is not tracker:
            raise ValueError("this BudgetReader already serves another BudgetMeter")
        self._tracker = tracker
        self._interval = interval_s
        self._clock = clock or tracker.now
        self._tz = tz

    # --- the timer --------------------------------------------------------------

    def start_timer(self) -> None:
        self._timer_wanted = True
        if self._thread is None and not self._closed:
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._tick, name="OtelBudgetReader",
                                            daemon=True)
            self._thread.start()

    @property
    def timer_running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _tick(self) -> None:
        clock = self._clock
        assert clock is not None
        tz = self._tz or ZoneInfo("UTC")
        interval = self._interval
        next_tick = time.monotonic() + interval
        while True:
            now = clock()
            boundary = ledger.next_day_start(now, tz)
            to_boundary = (boundary - now).total_seconds()
            to_tick = next_tick - time.monotonic()
            boundary_first = to_boundary < to_tick
            if self._stop.wait(max(0.0, min(to_tick, to_boundary + 0.001))):
                return
            try:
                self.run_collection(counted=not boundary_first)
            except Exception:
                _log.exception("otel_budget: collection failed")
            if not boundary_first:
                next_tick += interval
                if next_tick < time.monotonic():  # fell behind (a suspended host)
                    next_tick = time.monotonic() + interval

    def run_collection(self, *, counted: bool = True, checkpoint: bool = False,
                       wait: bool = False) -> bool:
        """One collection: the SDK's (if this reader sits on a provider), then the
        tracker's round. `counted` ones advance the checkpoint cadence."""
        tracker = self._tracker
        if tracker is None or self._closed:
            return False
        if self._collect is not None:  # registered on a MeterProvider
            try:
                with self._gate:
                    self.collect_spliced()
            except Exception:
                _log.exception("otel_budget: SDK collection failed")
        due = tracker.count_collection() if counted else False
        return tracker.store_round(checkpoint=due or checkpoint, wait=wait)

    def stop_timer(self, timeout_s: float) -> None:
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=max(0.0, timeout_s))
        self._thread = None

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        """Called by the MeterProvider: stop the timer. The final checkpoint is the
        meter's (BudgetMeter.shutdown), which owns the deadline."""
        if self._closed:
            return
        self.stop_timer(timeout_millis / 1000)
        self._closed = True

    def after_fork_in_child(self) -> None:
        """Called by the meter's fork hook, after the tracker became a new writer."""
        # The parent's timer thread did not survive the fork; the child runs its own.
        self._thread = None
        if self._timer_wanted and not self._closed and self._tracker is not None:
            self.start_timer()
