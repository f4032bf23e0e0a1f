"""BudgetReader: the custom MetricReader that turns the spend counter into a budget.

On every collection it reads the counter's cumulative points, derives this
instance's spend for the current day, evaluates the alert thresholds, and on every
`checkpoint_every`-th collection merges this instance's entry into the day's
document. Nothing it does may raise into the SDK's or its own collection thread:
failures are logged, shown in health, and superseded by the next checkpoint
(entries are cumulative, so a failed write loses nothing).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timezone
from typing import Any

from opentelemetry.sdk.metrics.export import MetricReader, MetricsData, Sum

from . import ledger
from .config import BudgetConfig
from .errors import BudgetError, CheckpointError
from .notify import Notifier
from .stores.base import PatchStore
from .threshold import AlertBook, build_nudge

SCOPE_NAME = "otel_budget"
SPEND_INSTRUMENT = "llm.spend"
NANOS = 1_000_000_000

_log = logging.getLogger("otel_budget")


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


class LiveTotal:
    """This process's cumulative recorded spend in integer nano-USD, bumped by every
    `record()`.

    It exists so `daily_spend()` is live between collections and exact: a float sum
    drifts (0.001 added 400,000 times is 399.99999999745), an integer sum of amounts
    rounded to 1e-9 does not. The lock is the only synchronisation `record()` adds to
    what the SDK already does."""

    __slots__ = ("lock", "nanos")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.nanos = 0


@dataclass(frozen=True)
class BudgetSnapshot:
    """A consistent view of the reader's state, for health() and the gauges."""

    day: date
    daily_spend_usd: float
    own_spend_usd: float
    unflushed_usd: float
    collections: int
    seq: int
    alerts_sent: tuple[float, ...]
    last_checkpoint: dict[str, Any]
    checkpoint_age_s: float
    store_up: bool
    restore: dict[str, Any]


class BudgetReader(MetricReader):
    def __init__(
        self,
        config: BudgetConfig,
        store: PatchStore,
        *,
        instance_id: str,
        notifiers: Sequence[Notifier] = (),
        clock: Callable[[], datetime] | None = None,
        live: LiveTotal | None = None,
    ) -> None:
        super().__init__()
        self._config = config
        self._store = store
        self._instance_id = instance_id
        self._notifiers = list(notifiers)
        self._clock = clock or utc_now
        self._live = live or LiveTotal()
        # _collect_lock serialises whole collections (SDK collect + I/O);
        # _state_lock guards the numbers readers of daily_spend() see, and is never
        # held across I/O or the SDK's collect (whose gauge callbacks take it).
        self._collect_lock = threading.RLock()
        self._state_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._latest: MetricsData | None = None
        self._alerts = AlertBook(config.alert_ratios)

        now = self._now()
        self._started_at = now
        self._day = ledger.day_of(now, config.tzinfo)
        self._own_base = 0.0
        self._own_base_attrs: dict[ledger.AttributesKey, float] = {}
        self._points_baseline: dict[ledger.AttributesKey, float] = {}
        self._last_points: dict[ledger.AttributesKey, float] = {}
        self._own_at_collect = 0.0
        self._own_attrs_at_collect: dict[ledger.AttributesKey, float] = {}
        self._live_day_start = 0
        self._others_usd = 0.0
        self._seq = 0
        self._collections = 0
        self._restored = False
        self._restore: dict[str, Any] = {
            "ok": None, "at": None, "error": None,
            "document_found": False, "continued_entry": False,
        }
        self._last_checkpoint: dict[str, Any] = {"at": None, "seq": None, "ok": None, "error": None}
        self._last_success_at: datetime | None = None
        self._checkpointed_own = 0.0
        self._store_up = True

    # --- MetricReader ---------------------------------------------------------

    def _receive_metrics(
        self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any
    ) -> None:
        self._latest = metrics_data

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        """Stop the timer and write the final checkpoint. Idempotent."""
        if self._closed:
            return
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=timeout_millis / 1000)
        try:
            self.run_collection(counted=False, checkpoint=True)
        except Exception:
            _log.exception("otel_budget: final checkpoint at shutdown failed")
        self._closed = True

    # --- lifecycle ------------------------------------------------------------

    def restore(self) -> None:
        """Read today's document. A corrupt one raises CheckpointError (and is left
        untouched); an unreachable store only degrades health and is retried."""
        with self._collect_lock:
            self._load_day(self._day, strict=True)

    def start_timer(self) -> None:
        if self._thread is None and not self._closed:
            self._thread = threading.Thread(
                target=self._tick, name="OtelBudgetReader", daemon=True
            )
            self._thread.start()

    def _tick(self) -> None:
        interval = self._config.collect_interval_s
        next_tick = time.monotonic() + interval
        while True:
            now = self._now()
            to_boundary = (ledger.next_day_start(now, self._config.tzinfo) - now).total_seconds()
            to_tick = next_tick - time.monotonic()
            boundary_first = to_boundary < to_tick
            if self._stop.wait(max(0.0, min(to_tick, to_boundary + 0.001))):
                return
            try:
                # The boundary collection is an extra one (not a tick), so the old
                # day's final checkpoint holds what was recorded before midnight.
                self.run_collection(counted=not boundary_first)
            except Exception:
                _log.exception("otel_budget: collection failed")
            if not boundary_first:
                next_tick += interval
                if next_tick < time.monotonic():  # fell behind (suspended host): re-phase
                    next_tick = time.monotonic() + interval

    # --- collection -----------------------------------------------------------

    def run_collection(self, *, counted: bool = True, checkpoint: bool = False) -> None:
        """One collection. `counted` ones advance the checkpoint cadence;
        `checkpoint=True` forces a checkpoint (on demand, at shutdown)."""
        with self._collect_lock:
            if self._closed:
                return
            # The live total is the exact amount (each record() counted once); the
            # SDK's points only split it by attributes, and may differ from it by a
            # record() racing with this collection.
            live_snapshot = self._live.nanos
            self._latest = None
            self.collect()
            points = self._spend_points(self._latest) if self._latest else self._last_points
            now = self._now()
            day = ledger.day_of(now, self._config.tzinfo)
            self._update_own(points, live_snapshot)
            if day > self._day:
                self._write_checkpoint(now)
                self._begin_day(day, points, live_snapshot)
            elif day < self._day:
                _log.warning("otel_budget: clock went back to %s; staying on %s", day, self._day)
            if not self._restored:
                self._load_day(self._day, strict=False)
            if counted:
                with self._state_lock:
                    self._collections += 1
                    due = self._collections % self._config.checkpoint_every == 0
            else:
                due = False
            if due or checkpoint:
                self._write_checkpoint(now)
            self._evaluate_thresholds(now)

    @staticmethod
    def _spend_points(data: MetricsData) -> dict[ledger.AttributesKey, float]:
        points: dict[ledger.AttributesKey, float] = {}
        for resource_metrics in data.resource_metrics:
            for scope_metrics in resource_metrics.scope_metrics:
                if scope_metrics.scope.name != SCOPE_NAME:
                    continue
                for metric in scope_metrics.metrics:
                    if metric.name == SPEND_INSTRUMENT and isinstance(metric.data, Sum):
                        for point in metric.data.data_points:
                            key = ledger.attributes_key(point.attributes)
                            points[key] = points.get(key, 0.0) + float(point.value)
        return points

    def _update_own(
        self, points: Mapping[ledger.AttributesKey, float], live_snapshot: int
    ) -> None:
        delta = {
            key: value - self._points_baseline.get(key, 0.0) for key, value in points.items()
        }
        attrs = ledger.add_maps(self._own_base_attrs, delta)
        with self._state_lock:
            self._own_at_collect = self._own_base + (live_snapshot - self._live_day_start) / NANOS
            self._own_attrs_at_collect = attrs
            self._last_points = dict(points)

    def _begin_day(
        self, day: date, points: Mapping[ledger.AttributesKey, float], live_snapshot: int
    ) -> None:
        with self._state_lock:
            self._day = day
            self._own_base = 0.0
            self._own_base_attrs = {}
            self._points_baseline = dict(points)
            self._own_at_collect = 0.0
            self._own_attrs_at_collect = {}
            self._live_day_start = live_snapshot
            self._others_usd = 0.0
            self._seq = 0
            self._checkpointed_own = 0.0
            self._restored = False
            self._alerts.reset()
        _log.info("otel_budget: new budget day %s", day)
        self._load_day(day, strict=False)

    def _load_day(self, day: date, *, strict: bool) -> None:
        name = ledger.budget_name(day)
        at = self._now().isoformat()
        try:
            doc = self._store.get(ledger.BUDGET_TYPE, name)
            if doc is not None:
                ledger.validate_budget_document(doc, name=name)
            claimed = [
                ratio for ratio in self._config.alert_ratios
                if self._store.get(ledger.NUDGE_TYPE, ledger.nudge_name(day, ratio)) is not None
            ]
        except CheckpointError as exc:
            with self._state_lock:
                self._restore = {**self._restore, "ok": False, "at": at, "error": str(exc)}
            if strict:
                raise
            _log.error("otel_budget: %s", exc)
            return
        except Exception as exc:
            message = _describe(exc)
            with self._state_lock:
                self._restore = {**self._restore, "ok": False, "at": at, "error": message}
                self._store_up = False
            _log.warning("otel_budget: reading %s failed (will retry): %s", name, message)
            return

        own = (doc or {}).get("instances", {}).get(self._instance_id)
        with self._state_lock:
            self._others_usd = ledger.other_instances_total(doc, self._instance_id)
            if own is not None:
                # Continue our own entry, so a restart never writes a smaller value over it.
                self._own_base = float(own["spend_usd"])
                self._own_base_attrs = ledger.by_attributes_to_map(own.get("by_attributes", []))
                self._seq = max(self._seq, int(own["seq"]))
                self._own_at_collect += self._own_base
                self._own_attrs_at_collect = ledger.add_maps(
                    self._own_attrs_at_collect, self._own_base_attrs
                )
                self._checkpointed_own = self._own_base
            for ratio in claimed:
                self._alerts.mark_claimed(ratio)
            self._restored = True
            self._store_up = True
            self._restore = {
                "ok": True, "at": at, "error": None,
                "document_found": doc is not None, "continued_entry": own is not None,
            }

    def _write_checkpoint(self, now: datetime) -> None:
        if not self._restored:
            return  # never write before we know our stored entry (it may be larger)
        with self._state_lock:
            self._seq += 1
            seq = self._seq
            own = ledger.round_usd(self._own_at_collect)
            by_attributes = ledger.map_to_by_attributes(self._own_attrs_at_collect)
            day = self._day
        stamp = now.isoformat()
        entry = {"spend_usd": own, "seq": seq, "updated_at": stamp, "by_attributes": by_attributes}
        day_meta = {
            "date": day.isoformat(), "timezone": self._config.timezone,
            "daily_cap_usd": self._config.daily_cap_usd, "updated_at": stamp,
        }
        try:
            doc = self._store.merge_budget(
                ledger.budget_name(day), self._instance_id, entry, day_meta=day_meta
            )
            stored = (doc.get("instances") or {}).get(self._instance_id) or {}
            others = ledger.other_instances_total(doc, self._instance_id)
        except Exception as exc:
            message = _describe(exc)
            with self._state_lock:
                self._last_checkpoint = {"at": stamp, "seq": seq, "ok": False, "error": message}
                self._store_up = isinstance(exc, CheckpointError)
            _log.warning("otel_budget: checkpoint %s of %s failed: %s", seq, day, message)
            return
        stored_seq = stored.get("seq", seq)
        error = None
        if stored_seq != seq:
            error = (
                f"instance id {self._instance_id!r} holds seq {stored_seq} > {seq}: "
                "another process writes with the same instance id"
            )
            _log.error("otel_budget: %s", error)
        with self._state_lock:
            self._seq = max(self._seq, int(stored_seq))
            self._others_usd = others
            self._store_up = True
            self._last_checkpoint = {"at": stamp, "seq": seq, "ok": error is None, "error": error}
            if error is None:
                self._checkpointed_own = own
                self._last_success_at = now

    def _evaluate_thresholds(self, now: datetime) -> None:
        spend = self.daily_spend()
        cap = self._config.daily_cap_usd
        with self._state_lock:
            due = self._alerts.due(spend, cap)
            day = self._day
        for ratio in due:
            nudge = build_nudge(
                sibling=self._config.sibling, day=day, ratio=ratio, daily_spend_usd=spend,
                daily_cap_usd=cap, instance_id=self._instance_id, now=now,
            )
            try:
                inserted = self._store.insert_if_absent(
                    ledger.NUDGE_TYPE, ledger.nudge_name(day, ratio), nudge
                )
            except Exception as exc:
                with self._state_lock:
                    self._store_up = False
                _log.warning("otel_budget: claiming the %s nudge failed (will retry): %s",
                             ledger.ratio_pct(ratio), _describe(exc))
                continue
            with self._state_lock:
                if inserted:
                    self._alerts.owe(ratio, nudge, len(self._notifiers))
                else:
                    self._alerts.mark_claimed(ratio)
            if inserted:
                _log.info("otel_budget: %s%% of the %s budget reached; nudged %s",
                          ledger.ratio_pct(ratio), day, self._config.sibling)
        self._deliver()

    def _deliver(self) -> None:
        with self._state_lock:
            pending = self._alerts.pending()
        for delivery in pending:
            for index in sorted(delivery.remaining):
                notifier = self._notifiers[index]
                try:
                    notifier(dict(delivery.nudge))
                except Exception as exc:
                    _log.warning("otel_budget: notifier %r failed (will retry): %s",
                                 notifier, _describe(exc))
                    continue
                with self._state_lock:
                    delivery.remaining.discard(index)
        with self._state_lock:
            self._alerts.settle()

    # --- reading the state ----------------------------------------------------

    def _now(self) -> datetime:
        now = self._clock()
        if now.tzinfo is None:
            raise ValueError("the clock must return an aware datetime")
        return now

    def _own_now(self) -> float:
        return self._own_base + (self._live.nanos - self._live_day_start) / NANOS

    def daily_spend(self) -> float:
        with self._state_lock:
            return ledger.round_usd(self._others_usd + self._own_now())

    @property
    def day(self) -> date:
        return self._day

    @property
    def instance_id(self) -> str:
        return self._instance_id

    def snapshot(self) -> BudgetSnapshot:
        now = self._now()
        with self._state_lock:
            own = self._own_now()
            since = self._last_success_at or self._started_at
            return BudgetSnapshot(
                day=self._day,
                daily_spend_usd=ledger.round_usd(self._others_usd + own),
                own_spend_usd=ledger.round_usd(own),
                unflushed_usd=ledger.round_usd(max(0.0, own - self._checkpointed_own)),
                collections=self._collections,
                seq=self._seq,
                alerts_sent=tuple(self._alerts.claimed()),
                last_checkpoint=dict(self._last_checkpoint),
                checkpoint_age_s=round(max(0.0, (now - since).total_seconds()), 3),
                store_up=self._store_up,
                restore=dict(self._restore),
            )


def _describe(exc: BaseException) -> str:
    """A one-line error for logs and health. Our own errors are written to be safe
    to show; a foreign exception's text may quote anything (a DSN, a key), so only
    its type is shown."""
    if isinstance(exc, BudgetError):
        return str(exc)
    return f"{type(exc).__name__} (details withheld: not an otel_budget error)"
