"""The instruments a meter exports: `llm.spend` (an observable counter over the
ledger), `llm.budget.refusals`, and the budget gauges.

Every gauge of one collection reads the same snapshot of the budgets and of the
tracker's state, taken once by the first gauge's callback: the SDK calls the
callbacks of a collection in the order the instruments were created, so the numbers
a collection exports agree with each other and the budgets are computed once, not
once per gauge.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import Any

from opentelemetry.metrics import CallbackOptions, Meter, Observation
from opentelemetry.sdk.metrics import ObservableCounter as SdkObservableCounter

from . import money
from .reader import SPEND_DESCRIPTION, SPEND_INSTRUMENT, SPEND_UNIT, ledger_collecting
from .refusals import RefusalLog
from .spend import SpendLedger

__all__ = ["INSTANCE_ATTRIBUTE", "WRITER_ATTRIBUTE", "register_instruments"]

#: On every llm.spend point: the writer (process) it comes from, so processes that
#: share a resource (workers under one service.instance.id) never share a series.
WRITER_ATTRIBUTE = "otel_budget.writer.id"
#: On the resource: the human label of the instance the writers belong to.
INSTANCE_ATTRIBUTE = "otel_budget.instance.id"

Callback = Callable[[CallbackOptions], Iterable[Observation]]


class _Snapshot:
    """The budgets and the tracker's state as of the collection in progress."""

    def __init__(self, rows: Callable[[], list[dict[str, Any]]],
                 state: Callable[[], dict[str, Any]]) -> None:
        self._rows_of, self._state_of = rows, state
        self._lock = threading.Lock()
        self.rows: list[dict[str, Any]] = []
        self.state: dict[str, Any] = {}

    def refresh(self) -> None:
        rows, state = self._rows_of(), self._state_of()
        with self._lock:
            self.rows, self.state = rows, state

    def current(self) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        with self._lock:
            return self.rows, self.state


def register_instruments(
    otel_meter: Meter, *, spend_ledger: SpendLedger, writer_id: Callable[[], str],
    refusals: RefusalLog, budget_rows: Callable[[], list[dict[str, Any]]],
    state: Callable[[], dict[str, Any]],
) -> bool:
    """Create the instruments on `otel_meter`. Returns whether llm.spend is a real SDK
    instrument (False under OTEL_SDK_DISABLED, where the SDK hands out no-ops)."""

    def spend(options: CallbackOptions) -> Iterable[Observation]:
        if ledger_collecting():  # a LedgerReader builds its llm.spend points itself
            return ()
        # Integer nanos / 1e9 is the float nearest the exact amount already.
        per_usd = money.NANOS_PER_USD
        writer = writer_id()
        return [Observation(nanos / per_usd, {**attrs, WRITER_ATTRIBUTE: writer})
                for attrs, nanos in spend_ledger.export_points()]

    instrument = otel_meter.create_observable_counter(
        SPEND_INSTRUMENT, callbacks=[spend], unit=SPEND_UNIT, description=SPEND_DESCRIPTION,
    )

    def refused(options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(n, {"budget": name}) for name, n in refusals.totals().items()]

    otel_meter.create_observable_counter(
        "llm.budget.refusals", callbacks=[refused], unit="{call}",
        description="Calls refused by a hard budget (guard, reserve, areserve)",
    )

    snapshot = _Snapshot(budget_rows, state)

    def per_budget(value: Callable[[dict[str, Any]], float | None], *,
                   only_daily: bool = False, first: bool = False) -> Callback:
        def callback(options: CallbackOptions) -> Iterable[Observation]:
            if first:
                snapshot.refresh()
            rows, _ = snapshot.current()
            out = []
            for row in rows:
                if only_daily and row["period"] != "day":
                    continue
                number = value(row)
                if number is not None:
                    out.append(Observation(number, {"budget": row["name"],
                                                    "period": row["period"]}))
            return out
        return callback

    def of_state(value: Callable[[dict[str, Any]], float]) -> Callback:
        def callback(options: CallbackOptions) -> Iterable[Observation]:
            _, current = snapshot.current()
            return [Observation(value(current))] if current else []
        return callback

    gauges: list[tuple[str, str, str, Callback]] = [
        ("llm.budget.daily_spend", "USD", "Spend today, per daily budget",
         per_budget(lambda r: r["spend_usd"], only_daily=True, first=True)),
        ("llm.budget.daily_cap", "USD", "Cap of each daily budget",
         per_budget(lambda r: r["cap_usd"], only_daily=True)),
        ("llm.budget.spend", "USD", "Spend in the budget's current window",
         per_budget(lambda r: r["spend_usd"])),
        ("llm.budget.cap", "USD", "The budget's cap", per_budget(lambda r: r["cap_usd"])),
        ("llm.budget.remaining", "USD", "Cap minus spend in the window, never below 0",
         per_budget(lambda r: r["remaining_usd"])),
        ("llm.budget.utilization.ratio", "1", "Spend in the window divided by the cap",
         per_budget(lambda r: r["utilization"])),
        ("llm.budget.alerts.sent", "{alert}", "Alert thresholds claimed in the window",
         per_budget(lambda r: len(r["alerts_sent"]))),
        ("llm.budget.unflushed", "USD", "This process's spend not yet checkpointed",
         of_state(lambda s: s["unflushed_usd"])),
        ("llm.budget.checkpoint.age", "s", "Seconds since the last successful checkpoint",
         # Before the first checkpoint: the time since start (as overdue as that).
         of_state(lambda s: s["checkpoint_age_s"] if s["checkpoint_age_s"] is not None
                  else s["uptime_s"])),
        ("llm.budget.store.up", "{status}", "1 while the store answers, else 0",
         of_state(lambda s: 1 if s["store_up"] else 0)),
    ]
    for name, unit, description, callback in gauges:
        otel_meter.create_observable_gauge(name, callbacks=[callback], unit=unit,
                                           description=description)
    return isinstance(instrument, SdkObservableCounter)
