"""BudgetTracker: this writer's view of every budget, and its rounds of store I/O.

It composes the exact ledger (what this process recorded), the fleet view (what
the other writers had stored, as last read), the checkpointer (this writer's entry
to the store, or the spool when the store does not take it) and the alert claims.

Locks: `_state` guards the numbers that `daily_spend()`, `budgets()` and `health()`
read and is only ever held for arithmetic. `_io` serialises store rounds; nothing
on the hot path or on a reader of the state ever waits for it, and a collection
that finds a round running asks it to go again instead of waiting.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime, timezone
from typing import Any

from . import ledger
from .alerts import AlertBook, build_nudge
from .budgets import Budget
from .config import BudgetConfig
from .errors import BudgetError, CheckpointError, StoreError
from .redact import describe_exception
from .spend import DaySnapshot, SpendLedger
from .spool import Spool
from .stores.base import PatchStore
from .stores.entries import writer_entry_problem

_log = logging.getLogger("otel_budget")

Nudge = dict[str, Any]


def new_writer_id() -> str:
    """Unique per process start and per fork: never shared, so never overwritten."""
    return uuid.uuid4().hex[:16]


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


@dataclass(frozen=True)
class CheckpointResult:
    ok: bool
    at: str
    seq: int | None
    error: str | None = None
    spooled: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {"at": self.at, "seq": self.seq, "ok": self.ok, "error": self.error,
                "spooled": self.spooled}


def describe(exc: BaseException) -> str:
    """A one-line error for logs and health, secrets masked. A foreign exception's text
    may quote anything (a row's content, a DSN), so only its type is shown."""
    if isinstance(exc, (BudgetError, OSError)):
        return describe_exception(exc)
    return f"{type(exc).__name__} (details withheld: not an otel_budget error)"


class BudgetTracker:
    def __init__(
        self,
        config: BudgetConfig,
        store: PatchStore,
        *,
        instance_id: str,
        submit_nudge: Callable[[Nudge], None],
        clock: Callable[[], datetime] | None = None,
        spool: Spool | None = None,
    ) -> None:
        self._config = config
        self._store = store
        self._budgets = config.all_budgets
        self._instance_id = instance_id
        self._writer_id = new_writer_id()
        self._submit_nudge = submit_nudge
        self._clock = clock or utc_now
        self._spool = spool
        self._ledger = SpendLedger(
            self._budgets, tz=config.tzinfo, max_attribute_sets=config.max_attribute_sets,
            clock=clock,
        )
        self._state = threading.Lock()
        self._io = threading.Lock()
        self._again = False
        self._again_checkpoint = False
        self._alerts = AlertBook()
        #: Called at the end of every store round, off the hot path (budget leases).
        self._round_hooks: list[Callable[[], None]] = []
        self._init_state()

    def _init_state(self) -> None:
        now = self._now()
        self._day = self._ledger.day
        self._started_at = now
        self._started_mono = time.monotonic()
        self._seq = 0
        self._collections = 0
        self._others_total = 0.0
        self._others_budget: dict[str, float] = {}
        self._legacy_total = 0.0
        self._legacy_budget: dict[str, float] = {}
        self._inherited: DaySnapshot | None = None
        self._prior: dict[str, float] = {}
        self._stored_own: dict[str, Any] | None = None
        self._pending_final: list[dict[str, Any]] = []
        self._loaded_day: date | None = None
        self._restore: dict[str, Any] = {"ok": None, "at": None, "error": None}
        self._last_checkpoint = CheckpointResult(ok=True, at="", seq=None)
        self._last_checkpoint_attempted = False
        self._last_success_mono: float | None = None
        self._checkpointed_nanos = 0
        self._store_up = True
        self._spool_error: str | None = None

    # --- identity ---------------------------------------------------------------

    @property
    def writer_id(self) -> str:
        return self._writer_id

    @property
    def instance_id(self) -> str:
        return self._instance_id

    @property
    def ledger(self) -> SpendLedger:
        return self._ledger

    @property
    def budgets_config(self) -> tuple[Budget, ...]:
        return self._budgets

    def _now(self) -> datetime:
        now = self._clock()
        if now.tzinfo is None:
            raise ValueError("the clock must return an aware datetime")
        return now

    # --- fork -------------------------------------------------------------------

    def after_fork_in_child(self) -> None:
        """A forked child is a new writer: it counts only what it records from now on;
        what the parent had counted stays the parent's (to checkpoint) and is part of
        the others in the child's view until the child's first merge reads the store."""
        self._state = threading.Lock()
        self._io = threading.Lock()
        inherited = self._ledger.reset_after_fork()
        others_total, others_budget = self._others_total, dict(self._others_budget)
        legacy_total, legacy_budget = self._legacy_total, dict(self._legacy_budget)
        prior, loaded_day, restore = dict(self._prior), self._loaded_day, dict(self._restore)
        parent_inherited = self._inherited
        self._writer_id = new_writer_id()
        self._init_state()
        self._others_total, self._others_budget = others_total, others_budget
        self._legacy_total, self._legacy_budget = legacy_total, legacy_budget
        self._prior, self._loaded_day, self._restore = prior, loaded_day, restore
        self._inherited = _merge_snapshots(parent_inherited, inherited)

    # --- live reads (no I/O) ----------------------------------------------------

    def _sync_day_locked(self) -> None:
        """Apply day boundaries the ledger crossed: the closed day's final entry is
        queued for the store, the windows move on. Memory only."""
        closed = self._ledger.take_closed_days()
        if not closed:
            return
        now = self._now().isoformat()
        for snapshot in closed:
            self._seq += 1
            self._pending_final.append(self._entry(snapshot, self._seq, now, final=True))
        old_day, new_day = self._day, self._ledger.day
        last_own = closed[-1] if closed[-1].day == old_day else None
        for budget in self._budgets:
            if ledger.window_id(old_day, budget.period) == ledger.window_id(new_day,
                                                                             budget.period):
                carried = (self._others_budget.get(budget.name, 0.0)
                           + self._legacy_budget.get(budget.name, 0.0)
                           + (self._inherited.budget_usd(budget.name) if self._inherited else 0.0)
                           + (last_own.budget_usd(budget.name) if last_own else 0.0))
                self._prior[budget.name] = self._prior.get(budget.name, 0.0) + carried
            else:
                self._prior[budget.name] = 0.0
        self._day = new_day
        self._others_total = 0.0
        self._others_budget = {}
        self._legacy_total = 0.0
        self._legacy_budget = {}
        self._inherited = None
        self._stored_own = None
        self._checkpointed_nanos = 0
        self._alerts.forget_except(self._windows_locked())
        _log.info("otel_budget: new budget day %s", new_day)

    def _windows_locked(self) -> list[tuple[str, str]]:
        return [(b.name, ledger.window_id(self._day, b.period)) for b in self._budgets]

    def _view_locked(self) -> tuple[date, float, list[float]]:
        """(day, fleet spend today, each budget's spend in its window), live."""
        self._ledger.roll_if_due()
        self._sync_day_locked()
        day, own_total, own_budgets = self._ledger.today_nanos()
        inherited = self._inherited
        total = (self._others_total + self._legacy_total + own_total / ledger.NANOS_PER_USD
                 + (inherited.total_usd if inherited else 0.0))
        spends = []
        for budget, own in zip(self._budgets, own_budgets, strict=True):
            name = budget.name
            spends.append(
                self._prior.get(name, 0.0) + self._others_budget.get(name, 0.0)
                + self._legacy_budget.get(name, 0.0) + own / ledger.NANOS_PER_USD
                + (inherited.budget_usd(name) if inherited else 0.0)
            )
        return day, ledger.round_usd(total), [ledger.round_usd(s) for s in spends]

    def day_total(self) -> float:
        with self._state:
            return self._view_locked()[1]

    def budget_spend(self, name: str) -> float:
        with self._state:
            _, _, spends = self._view_locked()
        for budget, spend in zip(self._budgets, spends, strict=True):
            if budget.name == name:
                return spend
        raise KeyError(name)

    def window_of(self, name: str) -> str:
        budget = next(b for b in self._budgets if b.name == name)
        return ledger.window_id(self.day, budget.period)

    @property
    def day(self) -> date:
        with self._state:
            self._ledger.roll_if_due()
            self._sync_day_locked()
            return self._day

    def budgets(self) -> list[dict[str, Any]]:
        with self._state:
            day, _, spends = self._view_locked()
            rows = []
            for budget, spend in zip(self._budgets, spends, strict=True):
                window = ledger.window_id(day, budget.period)
                rows.append({
                    "name": budget.name, "period": budget.period, "window": window,
                    "match": dict(budget.match) if budget.match is not None else None,
                    "cap_usd": budget.cap_usd, "spend_usd": spend,
                    "remaining_usd": ledger.remaining_usd(spend, budget.cap_usd),
                    "utilization": ledger.utilization(spend, budget.cap_usd),
                    "alerts_sent": self._alerts.claimed(budget.name, window),
                    "hard": budget.hard, "enforce": budget.enforce,
                })
            return rows

    def state(self) -> dict[str, Any]:
        """Everything health() shows beyond the budgets."""
        with self._state:
            day, total, _ = self._view_locked()
            own = self._ledger.today_nanos()[1]
            since = self._last_success_mono or self._started_mono
            return {
                "date": day.isoformat(),
                "fleet_spend_usd": total,
                "writer_id": self._writer_id,
                "instance_spend_usd": ledger.from_nanos(own),
                "unflushed_usd": ledger.from_nanos(max(0, own - self._checkpointed_nanos)),
                "collections": self._collections,
                "seq": self._seq,
                "last_checkpoint": self._last_checkpoint.as_dict(),
                "checkpoint_failed": self._last_checkpoint_attempted and not self._last_checkpoint.ok,
                "checkpoint_age_s": round(max(0.0, time.monotonic() - since), 3),
                "store_up": self._store_up,
                "restore": dict(self._restore),
                "pending_final_entries": len(self._pending_final),
                "spool_error": self._spool_error,
                "attribute_sets_today": self._ledger.attribute_sets_today(),
            }

    def count_collection(self) -> bool:
        """Count one collection; True when it is a checkpoint one."""
        with self._state:
            self._collections += 1
            return self._collections % self._config.checkpoint_every == 0

    # --- store rounds (I/O, never under _state) ---------------------------------

    def store_round(self, *, checkpoint: bool, wait: bool, timeout_s: float = -1) -> bool:
        """Replay the spool, write closed days' final entries, (re)load the fleet view,
        write this writer's entry when `checkpoint`, claim due alerts. Returns False
        if another round held the I/O lock and `wait` was False (it will go again)."""
        if wait:
            acquired = self._io.acquire(timeout=timeout_s) if timeout_s >= 0 else self._io.acquire()
        else:
            acquired = self._io.acquire(blocking=False)
        if not acquired:
            with self._state:
                self._again = True
                self._again_checkpoint = self._again_checkpoint or checkpoint
            return False
        try:
            while True:
                self._round(checkpoint)
                with self._state:
                    if not self._again:
                        return True
                    checkpoint = self._again_checkpoint
                    self._again = self._again_checkpoint = False
        finally:
            self._io.release()

    def _round(self, checkpoint: bool) -> None:
        with self._state:
            self._ledger.roll_if_due()
            self._sync_day_locked()
            finals = list(self._pending_final)
            day = self._day
            must_load = self._loaded_day != day
        if self._replay_spool():
            must_load = True  # another writer's entries reached the store: read the day again
        for entry in finals:
            if self._write(entry, final=True):
                with self._state:
                    self._pending_final.remove(entry)
        if must_load:
            self._load(day)
        if checkpoint:
            self._checkpoint_today()
        self._claim_alerts()
        for hook in list(self._round_hooks):
            try:
                hook()
            except Exception as exc:
                _log.warning("otel_budget: a store round hook failed: %s", describe(exc))

    def add_round_hook(self, hook: Callable[[], None]) -> None:
        """Run `hook` at the end of every store round (after the checkpoint)."""
        self._round_hooks.append(hook)

    def _send(self, entry: dict[str, Any]) -> Any:
        """merge_writer, or retire_writer for an entry marked final (a store written
        before retire_writer existed merges it)."""
        if entry.get("final") is True:
            retire = getattr(self._store, "retire_writer", None)
            if retire is not None:
                return retire(entry)
        return self._store.merge_writer(entry)

    def _write(self, entry: dict[str, Any], *, final: bool = False) -> bool:
        """Merge (or retire) one entry; on failure spool it. True if the store took it."""
        try:
            result = self._send(entry)
        except Exception as exc:
            message = describe(exc)
            _log.warning("otel_budget: checkpoint %s of %s failed: %s", entry["seq"],
                         entry["date"], message)
            spooled = self._spool_entry(entry)
            with self._state:
                self._store_up = isinstance(exc, CheckpointError)
                self._last_checkpoint = CheckpointResult(
                    ok=False, at=entry["updated_at"], seq=entry["seq"], error=message,
                    spooled=spooled)
                self._last_checkpoint_attempted = True
            return False
        if self._spool is not None:
            self._spool.discard(entry["writer_id"], entry["date"], below_seq=entry["seq"] + 1)
        with self._state:
            self._store_up = True
            self._last_checkpoint = CheckpointResult(ok=True, at=entry["updated_at"],
                                                     seq=entry["seq"])
            self._last_checkpoint_attempted = True
            self._last_success_mono = time.monotonic()
            if not final and entry["date"] == self._day.isoformat():
                self._apply_others_locked(result["others"], entry)
            self._note_stored_locked(entry)
        return True

    def _note_stored_locked(self, entry: Mapping[str, Any]) -> None:
        """Our own entry for today is in the store: the fleet view must not count it
        among the others' when it reads the day again."""
        if entry["date"] != self._day.isoformat():
            return
        if self._stored_own is None or int(self._stored_own["seq"]) < int(entry["seq"]):
            self._stored_own = dict(entry)

    def _spool_entry(self, entry: dict[str, Any]) -> bool:
        if self._spool is None:
            return False
        try:
            self._spool.put(entry)
        except OSError as exc:
            with self._state:
                self._spool_error = describe(exc)
            _log.error("otel_budget: cannot spool checkpoint to %s: %s", self._spool,
                       describe(exc))
            return False
        with self._state:
            self._spool_error = None
        return True

    def _replay_spool(self) -> bool:
        """True if the store took a spooled entry of another writer (one of ours is
        noted as stored, like any checkpoint of ours)."""
        if self._spool is None:
            return False
        try:
            pending = self._spool.pending()
        except OSError:
            return False
        replayed = False
        for item in pending:
            problem = _spooled_entry_problem(item.entry)
            if problem is not None:
                _log.error("otel_budget: spooled entry %s is malformed (%s); set aside",
                           item.path.name, problem)
                with contextlib.suppress(OSError):
                    os.replace(item.path, item.path.with_suffix(".bad"))
                continue
            try:
                self._send(item.entry)
            except Exception:
                # The store is down, or refuses a well-formed entry because of what it
                # holds (a malformed row of the day): keep them all for a later round.
                return replayed
            if item.entry.get("writer_id") == self._writer_id:
                with self._state:
                    self._note_stored_locked(item.entry)
            else:
                replayed = True
            self._spool.remove(item)
            _log.info("otel_budget: replayed spooled checkpoint %s", item.path.name)
        return replayed

    def _checkpoint_today(self) -> None:
        with self._state:
            self._sync_day_locked()
            self._seq += 1
            snapshot = self._ledger.snapshot()
            if snapshot.day != self._day:  # crossed midnight between the two reads
                return
            entry = self._entry(snapshot, self._seq, self._now().isoformat())
        if self._write(entry):
            with self._state:
                if snapshot.day == self._day:
                    self._checkpointed_nanos = snapshot.total_nanos

    def _entry(self, snapshot: DaySnapshot, seq: int, stamp: str, *,
               final: bool = False) -> dict[str, Any]:
        entry = {
            "date": snapshot.day.isoformat(),
            "writer_id": self._writer_id,
            "instance_id": self._instance_id,
            "timezone": self._config.timezone,
            "spend_usd": snapshot.total_usd,
            "seq": seq,
            "updated_at": stamp,
            "started_at": self._started_at.isoformat(),
            "by_attributes": [
                {"attributes": _jsonable(attrs), "spend_usd": ledger.from_nanos(nanos)}
                for attrs, nanos in sorted(snapshot.by_attributes, key=lambda item: -item[1])
            ],
            "by_budget": {name: ledger.from_nanos(n) for name, n in snapshot.by_budget.items()},
        }
        if final:
            # This writer's last entry for the day (shutdown, or a closed day): the
            # store retires its row into the day's summary. Kept by the spool, so a
            # replay retires too.
            entry["final"] = True
        return entry

    def _apply_others_locked(self, others: Mapping[str, Any], own: Mapping[str, Any]) -> None:
        self._others_total = float(others["total_usd"])
        writers = int(others.get("writers", 0))
        counts = others.get("budget_writers") or {}
        reported = others.get("by_budget") or {}
        for budget in self._budgets:
            if int(counts.get(budget.name, 0)) >= writers:
                self._others_budget[budget.name] = float(reported.get(budget.name, 0.0))
            # else: some writer predates this budget; keep the estimate from the load.
        self._inherited = None

    def _load(self, day: date) -> None:
        """Read the fleet's spend for every budget's window up to today (one call for
        all the days), the v1 document of today, and the alerts already claimed."""
        days = {day}
        for budget in self._budgets:
            days.update(ledger.window_days_before(day, budget.period))
        names = sorted(d.isoformat() for d in days)
        at = self._now().isoformat()
        try:
            totals = self._store.day_totals(names)
            incomplete = [
                name for name in names
                if any(int(totals[name]["budget_writers"].get(b.name, 0))
                       < int(totals[name]["writers"]) for b in self._budgets)
            ]
            entries = self._store.writer_entries(incomplete) if incomplete else []
            legacy_name = ledger.budget_name(day)
            legacy = self._store.get(ledger.BUDGET_TYPE, legacy_name)
            if legacy is not None:
                ledger.validate_budget_document(legacy, name=legacy_name)
            claimed = [
                (budget.name, window, ratio)
                for budget in self._budgets
                for window in [ledger.window_id(day, budget.period)]
                for ratio in budget.alert_ratios
                if self._store.get(ledger.NUDGE_TYPE,
                                   ledger.budget_nudge_name(budget.name, window, ratio))
                is not None
            ]
        except Exception as exc:
            message = describe(exc)
            with self._state:
                self._restore = {"ok": False, "at": at, "error": message}
                self._store_up = isinstance(exc, CheckpointError)
            _log.warning("otel_budget: reading the budgets of %s failed (will retry): %s",
                         day, message)
            return
        by_day_entries: dict[str, list[dict[str, Any]]] = {}
        for entry in entries:
            if entry.get("writer_id") != self._writer_id:
                by_day_entries.setdefault(str(entry.get("date")), []).append(entry)
        legacy_items = [item for e in ((legacy or {}).get("instances") or {}).values()
                        for item in e.get("by_attributes", [])]

        def spend_on(budget: Budget, name: str) -> float:
            day_totals = totals[name]
            if name not in incomplete:
                return float(day_totals["by_budget"].get(budget.name, 0.0))
            return sum(
                float(e["by_budget"][budget.name]) if budget.name in (e.get("by_budget") or {})
                else ledger.spend_of_breakdown(e.get("by_attributes") or [], budget.matches)
                for e in by_day_entries.get(name, [])
            )

        today = day.isoformat()
        with self._state:
            if self._day != day:
                return  # the day moved on while we read; the next round loads again
            own = self._stored_own or {}
            own_budget = own.get("by_budget") or {}
            self._others_total = max(0.0, float(totals[today]["total_usd"])
                                     - float(own.get("spend_usd", 0.0)))
            self._legacy_total = ledger.document_total(legacy) if legacy else 0.0
            for budget in self._budgets:
                name = budget.name
                self._prior[name] = ledger.round_usd(sum(
                    spend_on(budget, d.isoformat())
                    for d in ledger.window_days_before(day, budget.period)))
                own_share = 0.0 if today in incomplete else float(own_budget.get(name, 0.0))
                self._others_budget[name] = max(0.0, spend_on(budget, today) - own_share)
                self._legacy_budget[name] = (
                    ledger.document_total(legacy) if legacy and budget.match is None
                    else ledger.spend_of_breakdown(legacy_items, budget.matches))
            for key in claimed:
                self._alerts.mark_claimed(*key)
            self._loaded_day = day
            self._restore = {"ok": True, "at": at, "error": None,
                             "days_read": len(names), "legacy_document": legacy is not None}
            self._store_up = True

    def restore(self, *, strict: bool) -> None:
        """The first load, at start(): a store that answers with a corrupt row raises
        CheckpointError when `strict`; an unreachable one only degrades health."""
        with self._io:
            self._load(self.day)
        with self._state:
            restore = dict(self._restore)
        if strict and restore.get("ok") is False and self._store_up:
            raise CheckpointError(str(restore.get("error")))

    def _claim_alerts(self) -> None:
        with self._state:
            day, _, spends = self._view_locked()
            due = []
            for budget, spend in zip(self._budgets, spends, strict=True):
                window = ledger.window_id(day, budget.period)
                for ratio in self._alerts.due(budget, window, spend):
                    due.append((budget, window, ratio, spend))
        for budget, window, ratio, spend in due:
            nudge = build_nudge(
                sibling=self._config.sibling, budget=budget, window=window, ratio=ratio,
                spend_usd=spend, instance_id=self._instance_id, now=self._now(),
                day=day.isoformat(),
            )
            name = ledger.budget_nudge_name(budget.name, window, ratio)
            try:
                inserted = self._store.insert_if_absent(ledger.NUDGE_TYPE, name, nudge)
            except Exception as exc:
                with self._state:
                    self._store_up = False
                _log.warning("otel_budget: claiming %s failed (will retry): %s", name,
                             describe(exc))
                continue
            with self._state:
                self._alerts.mark_claimed(budget.name, window, ratio)
            if inserted:
                _log.info("otel_budget: %s%% of budget %r (%s) reached; nudging %s",
                          ledger.ratio_pct(ratio), budget.name, window, self._config.sibling)
                self._submit_nudge(nudge)

    def final_entries(self) -> list[dict[str, Any]]:
        """Shutdown: every entry this writer still owes the store (closed days and today),
        built now, with fresh seqs."""
        with self._state:
            self._ledger.roll_if_due()
            self._sync_day_locked()
            entries = list(self._pending_final)
            self._seq += 1
            entries.append(self._entry(self._ledger.snapshot(), self._seq,
                                       self._now().isoformat(), final=True))
            return entries

    def spool_entries(self, entries: Iterable[dict[str, Any]]) -> None:
        for entry in entries:
            self._spool_entry(entry)

    def write_entries(self, entries: Iterable[dict[str, Any]]) -> bool:
        ok = True
        for entry in entries:
            ok = self._write(entry, final=True) and ok
        return ok

    def spool_summary(self) -> dict[str, Any] | None:
        if self._spool is None:
            return None
        try:
            return self._spool.summary()
        except OSError as exc:
            return {"entries": None, "error": describe(exc)}


def _spooled_entry_problem(entry: dict[str, Any]) -> str | None:
    """What makes a spooled entry one no store would take (a hand-edited file, one from
    another version), or None: only such entries are set aside."""
    problem = writer_entry_problem(entry)
    if problem is None and "retired" in entry:
        problem = "retired is set by the store, not by a writer"
    return problem


def _jsonable(attributes: Mapping[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in attributes.items()}


def _merge_snapshots(a: DaySnapshot | None, b: DaySnapshot) -> DaySnapshot:
    if a is None or a.day != b.day:
        return b
    names = set(a.by_budget) | set(b.by_budget)
    return DaySnapshot(
        day=b.day, total_nanos=a.total_nanos + b.total_nanos,
        by_attributes=a.by_attributes + b.by_attributes,
        by_budget={n: a.by_budget.get(n, 0) + b.by_budget.get(n, 0) for n in names},
    )


__all__ = ["BudgetTracker", "CheckpointResult", "StoreError", "describe", "new_writer_id"]
