"""The per-process exact ledger: integer nano-USD per (day, attribute set) and per
budget, the one place a recorded dollar lives in this process.

`record()` adds here and touches nothing else: the exported
`llm.spend` counter, the checkpoint, `daily_spend()` and the guard all read these
sums. Integers, because a float sum drifts (0.001 added 400,000 times is
399.99999999745) and a cap compared with a drifted sum is off by a call.

Two kinds of sums are kept, because they live for different times:
- the day's sums (reset at each day boundary in the configured zone): what this
  writer checkpoints, with at most `max_attribute_sets` attribute sets a day and
  the rest in one overflow set, so the limit starts afresh each day;
- the lifetime sums per attribute set behind the cumulative `llm.spend` counter
  (a counter must not reset at midnight), bounded the same way.
Totals are exact whatever the breakdowns hold.

The hot path takes no lock: a call for an attribute set already seen today appends
its nanos to that set's cell (list.append, atomic under the GIL) and lists the cell
as dirty; readers, and the hot path once a cell holds 256 calls, drain the dirty
cells under the lock (one sum per cell), without ever waiting for it on the hot
path. A lock around each call's few additions made threads convoy: a thread
preempted while holding it sent the others to sleep on it (8 threads kept 0.2-0.7
of one thread's throughput). A read still counts every `add()` that returned
before it.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timezone
from itertools import islice
from typing import Any
from zoneinfo import ZoneInfo

from . import ledger, money
from .budgets import Budget

Attributes = Mapping[str, Any]
_EMPTY_KEY: frozenset[Any] = frozenset()
#: Attribute sets whose cell is remembered for the fast path, per day, as a multiple
#: of max_attribute_sets (beyond it, new sets take the slow path on every call).
_CELL_CACHE_FACTOR = 4
#: The hot path drains once a cell holds this many pending calls (without a reader,
#: memory stays bounded; with one, a collection drains every interval).
_DRAIN_AT = 256



@dataclass(frozen=True)
class DaySnapshot:
    """One writer's spend on one day, as of one instant."""

    day: date
    total_nanos: int
    by_attributes: tuple[tuple[dict[str, Any], int], ...]
    by_budget: dict[str, int]

    @property
    def total_usd(self) -> float:
        return money.from_nanos(self.total_nanos)

    def budget_usd(self, name: str) -> float:
        return money.from_nanos(self.by_budget.get(name, 0))


class _Bucket:
    __slots__ = ("attributes", "nanos")

    def __init__(self, attributes: dict[str, Any]) -> None:
        self.attributes = attributes
        self.nanos = 0


class _Cell:
    """One attribute set on one day: its buckets, the budgets it counts toward, and
    the calls recorded since the last drain (`pending`, appended without the lock)."""

    __slots__ = ("attrs", "budgets", "cells", "day", "dirty", "export", "key", "pending")

    def __init__(self, day: _Bucket, export: _Bucket, budgets: tuple[int, ...],
                 cells: dict[frozenset[Any], _Cell], key: frozenset[Any],
                 attrs: dict[str, Any]) -> None:
        self.day = day
        self.export = export
        self.budgets = budgets
        self.cells = cells  # the day's cell map: a drain tells a closed day's cell by it
        self.key = key
        self.attrs = attrs
        self.pending: list[int] = []
        self.dirty = False


def _key(attributes: Attributes) -> frozenset[Any]:
    # The SDK's own choice of key: cheap, order-free.
    return frozenset((k, tuple(v) if isinstance(v, list) else v) for k, v in attributes.items())


class SpendLedger:
    def __init__(
        self,
        budgets: Sequence[Budget],
        *,
        tz: ZoneInfo,
        max_attribute_sets: int,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self._budgets = tuple(budgets)
        self._budget_names = tuple(b.name for b in self._budgets)
        self._tz = tz
        self._limit = max_attribute_sets
        self._clock = clock
        # A fake clock (tests) is read on every call; the real one through time.time(),
        # which is what keeps record() cheap.
        self._now_ts: Callable[[], float] = (
            (lambda: clock().timestamp()) if clock is not None else time.time
        )
        self._lock = threading.Lock()
        self._dirty: deque[_Cell] = deque()
        self._export: dict[frozenset[Any], _Bucket] = {}
        self._export_overflow = _Bucket(dict(ledger.OVERFLOW_ATTRIBUTES))
        self._closed_days: list[DaySnapshot] = []
        self._index_tuples: dict[tuple[int, ...], tuple[int, ...]] = {}
        #: When the lifetime sums started (the cumulative series' start time).
        self.export_start_ns = time.time_ns()
        self._start_day(self._now_date())

    # --- the hot path -----------------------------------------------------------

    def add(self, nanos: int, attributes: Attributes | None) -> None:
        """Count `nanos` for a call with these attributes (already a dict or None).
        Attributes are validated the first time a set is seen; a bad set raises
        TypeError/ValueError and changes nothing."""
        if attributes:
            try:
                key = frozenset(attributes.items())
            except TypeError:  # a list value, or something unhashable to refuse
                key = _key(ledger.check_attributes(attributes))
        else:
            key = _EMPTY_KEY
        cell = self._cells.get(key)
        if cell is not None and self._now_ts() < self._boundary_ts:
            # A set seen today: no lock. list.append is atomic under the GIL; the cell
            # goes on the dirty list unless it is there already (a drain clears the flag
            # before it reads the pending calls, and this call appended before it read
            # the flag, so no call is left behind unlisted).
            pending = cell.pending
            pending.append(nanos)
            if not cell.dirty:
                cell.dirty = True
                self._dirty.append(cell)
            if len(pending) >= _DRAIN_AT and self._lock.acquire(False):
                # Another thread holding the lock drains: never wait behind it.
                try:
                    self._drain_locked()
                finally:
                    self._lock.release()
            return
        with self._lock:  # first call of the set today, or the day has ended
            self._drain_locked()
            if self._now_ts() >= self._boundary_ts:
                self._roll()
            cell = self._cells.get(key)
            if cell is None:
                cell = self._admit(key, attributes)
            cell.day.nanos += nanos
            cell.export.nanos += nanos
            self._day_total += nanos
            budget_nanos = self._budget_nanos
            for index in cell.budgets:
                budget_nanos[index] += nanos

    def _drain_locked(self) -> None:
        """Apply the calls the hot path left pending, one sum per dirty cell."""
        dirty = self._dirty
        if not dirty:
            return
        cells_now = self._cells
        budget_nanos = self._budget_nanos
        popleft = dirty.popleft
        total = 0
        # Only the cells listed when the drain began: writers appending meanwhile
        # cannot keep this loop (and the lock) going.
        for _ in range(len(dirty)):
            cell = popleft()
            cell.dirty = False  # before the read below: see add()
            pending = cell.pending
            count = len(pending)
            # The first `count` calls: calls appended meanwhile go after them.
            amount = sum(islice(pending, count))
            del pending[:count]
            if not amount:
                continue
            if cell.cells is not cells_now:
                # A cell of a day that has closed since (the call read it just before
                # midnight, the roll drained before it appended): it counts on the
                # open day, like a call that took the lock after.
                current = cells_now.get(cell.key)
                cell = current if current is not None else self._admit(cell.key, cell.attrs)
            cell.day.nanos += amount
            cell.export.nanos += amount
            total += amount
            for index in cell.budgets:
                budget_nanos[index] += amount
        self._day_total += total

    def _bucket(self, table: dict[frozenset[Any], _Bucket], key: frozenset[Any],
                attrs: dict[str, Any], overflow: _Bucket) -> _Bucket:
        """The set's bucket in `table`: a new one while the table holds fewer than the
        limit, else the overflow bucket."""
        bucket = table.get(key)
        if bucket is None:
            if len(table) < self._limit:
                bucket = table[key] = _Bucket(attrs)
            else:
                bucket = overflow
        return bucket

    def _admit(self, key: frozenset[Any], attributes: Attributes | None) -> _Cell:
        attrs = ledger.check_attributes(attributes) if attributes else {}
        export = self._bucket(self._export, key, attrs, self._export_overflow)
        day = self._bucket(self._day_sets, key, attrs, self._day_overflow)
        indexes = tuple(i for i, budget in enumerate(self._budgets) if budget.matches(attrs))
        # One tuple per distinct combination, not per set (48 bytes each at 2,000 sets).
        indexes = self._index_tuples.setdefault(indexes, indexes)
        cells = self._cells
        cell = _Cell(day, export, indexes, cells, key, attrs)
        if len(cells) < self._limit * _CELL_CACHE_FACTOR:
            # Published last, once the set is validated: from now on the set's calls
            # may take the lock-free path (today).
            cells[key] = cell
        return cell

    # --- days -------------------------------------------------------------------

    def _now_date(self) -> date:
        now = self._clock() if self._clock is not None else datetime.now(timezone.utc)
        return ledger.day_of(now, self._tz)

    def _start_day(self, day: date) -> None:
        self._day = day
        self._boundary_ts = ledger.next_day_start(
            datetime.combine(day, datetime.min.time(), tzinfo=self._tz), self._tz
        ).timestamp()
        self._cells: dict[frozenset[Any], _Cell] = {}
        self._day_sets: dict[frozenset[Any], _Bucket] = {}
        self._day_overflow = _Bucket(dict(ledger.OVERFLOW_ATTRIBUTES))
        self._day_total = 0
        self._budget_nanos = [0] * len(self._budgets)

    def _roll(self) -> None:
        """Close the day (its snapshot waits for its final checkpoint) and open today."""
        today = self._now_date()
        if today <= self._day:  # the boundary moved under a zone change: stay
            return
        self._drain_locked()
        self._closed_days.append(self._snapshot_locked())
        self._start_day(today)

    def roll_if_due(self) -> None:
        with self._lock:
            self._drain_locked()
            if self._now_ts() >= self._boundary_ts:
                self._roll()

    def take_closed_days(self) -> list[DaySnapshot]:
        """Snapshots of days that ended since the last call, oldest first."""
        with self._lock:
            closed, self._closed_days = self._closed_days, []
            return closed

    @property
    def day(self) -> date:
        return self._day

    def current_day(self) -> date | None:
        """The open day while no boundary has passed, without the lock; None once one
        has (the caller then takes the locked path that rolls the day). The boundary is
        read before the day, and a roll sets the day before the boundary, so a racing
        roll can only yield None, never the wrong day."""
        boundary = self._boundary_ts
        day = self._day
        return day if self._now_ts() < boundary else None

    # --- reading ----------------------------------------------------------------

    def _snapshot_locked(self) -> DaySnapshot:
        items = [(b.attributes, b.nanos) for b in self._day_sets.values() if b.nanos]
        if self._day_overflow.nanos:
            items.append((self._day_overflow.attributes, self._day_overflow.nanos))
        return DaySnapshot(
            day=self._day, total_nanos=self._day_total, by_attributes=tuple(items),
            by_budget=dict(zip(self._budget_names, self._budget_nanos, strict=True)),
        )

    def snapshot(self) -> DaySnapshot:
        with self._lock:
            self._drain_locked()
            return self._snapshot_locked()

    def today_nanos(self) -> tuple[date, int, list[int]]:
        """(day, total, per-budget sums in configuration order): cheap, for live reads."""
        with self._lock:
            self._drain_locked()
            return self._day, self._day_total, list(self._budget_nanos)

    def export_points(self) -> list[tuple[dict[str, Any], int]]:
        """Lifetime sums per attribute set, for the cumulative `llm.spend` counter."""
        with self._lock:
            self._drain_locked()
            points = [(b.attributes, b.nanos) for b in self._export.values()]
            if self._export_overflow.nanos:
                points.append((self._export_overflow.attributes, self._export_overflow.nanos))
            return points

    def export_columns(self) -> tuple[tuple[dict[str, Any], ...], tuple[int, ...]]:
        """`export_points` as two columns (attribute sets, sums): what a reader keeps
        between a collection and the read of its data, in a third of the memory."""
        with self._lock:
            self._drain_locked()
            buckets = list(self._export.values())
            if self._export_overflow.nanos:
                buckets.append(self._export_overflow)
            return tuple(b.attributes for b in buckets), tuple(b.nanos for b in buckets)

    def attribute_sets_today(self) -> int:
        with self._lock:
            self._drain_locked()
            return len(self._day_sets)

    # --- fork -------------------------------------------------------------------

    def reset_after_fork(self) -> DaySnapshot:
        """In a forked child: return what the parent had counted today (it stays the
        parent's to checkpoint) and start from zero with a fresh lock."""
        self._lock = threading.Lock()
        self._drain_locked()  # what the parent queued before the fork is the parent's
        inherited = self._snapshot_locked()
        self._export = {}
        self._export_overflow = _Bucket(dict(ledger.OVERFLOW_ATTRIBUTES))
        self.export_start_ns = time.time_ns()
        self._closed_days = []
        self._start_day(self._day)
        return inherited
