"""BudgetReader: the custom MetricReader that drives the budget's collections.

A thin reader: its own timer (a collection happens even when nothing was recorded,
which the SDK's collect() would skip), an extra collection at each day boundary so
the old day's final checkpoint holds what was recorded before midnight, and fork
hooks so a forked child runs its own timer. What a collection does with the
numbers is the tracker's job (tracker.py); the numbers live in the ledger.

Put it on your own MeterProvider next to your exporters and hand that provider to
`BudgetMeter(config, meter_provider=provider)`: the meter finds the reader there
and binds it, so no second provider is built.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from opentelemetry.sdk.metrics.export import MetricReader, MetricsData

from . import ledger

if TYPE_CHECKING:
    from .tracker import BudgetTracker

SCOPE_NAME = "otel_budget"
SPEND_INSTRUMENT = "llm.spend"

_log = logging.getLogger("otel_budget")


class BudgetReader(MetricReader):
    def __init__(self) -> None:
        super().__init__()
        self._tracker: BudgetTracker | None = None
        self._interval = 60.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._timer_wanted = False
        self._closed = False
        self._latest: MetricsData | None = None
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

    def _receive_metrics(
        self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any
    ) -> None:
        self._latest = metrics_data

    def collect_data(self) -> MetricsData | None:
        """One SDK collection, without a store round (what /metrics renders)."""
        self.collect()
        return self._latest

    @property
    def latest(self) -> MetricsData | None:
        """What the last collection read from the provider (None if nothing yet)."""
        return self._latest

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
                self.collect()
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
