"""BudgetTracker: the coordinator of this writer's view of every budget and of its
rounds of store I/O.

It composes the exact ledger (what this process recorded), the FleetView (what the
other writers had stored, as last read: immutable, swapped whole; read by
fleet_read.py, built by fleet.py), the Checkpointer (this writer's entry to the
store, or the spool; checkpoint.py), the alert claims (claims.py) and the round gate
(rounds.py). A round, in order: replay the spool, write closed days' final entries,
load the day when needed, checkpoint, keep the local copy, claim alerts, run hooks.

Locks: `_state` guards the numbers that `daily_spend()`, `budgets()` and `health()`
read and is only ever held for arithmetic. Store rounds take turns at the RoundGate;
nothing on the hot path or on a reader of the state ever waits for it, and a
collection that finds a round running asks it to go again instead of waiting.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import date, datetime, timezone
from typing import Any

from . import fleet, fleet_cache, fleet_read, ledger, live, money, rounds
from .budgets import Budget
from .checkpoint import Checkpointer, CheckpointResult, describe, new_writer_id
from .claims import AlertClaims, read_claims
from .config import BudgetConfig
from .errors import CheckpointError, CorruptRowError, StoreError
from .fleet import FleetView
from .rounds import RoundGate
from .spend import DaySnapshot, SpendLedger
from .spool import Spool, store_locator
from .stores.base import PatchStore
from .stores.entries import MergeResult

_log = logging.getLogger("otel_budget")

Nudge = dict[str, Any]


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


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
        pending_nudges: Callable[[], list[dict[str, Any]]] | None = None,
    ) -> None:
        self._config = config
        self._store = store
        self._budgets = config.all_budgets
        self._instance_id = instance_id
        self._clock = clock or utc_now
        self._ledger = SpendLedger(
            self._budgets, tz=config.tzinfo, max_attribute_sets=config.max_attribute_sets,
            clock=clock,
        )
        self._checkpointer = Checkpointer(store, spool, instance_id=instance_id,
                                          timezone=config.timezone, started_at=self._now())
        self._cache_path = (fleet_cache.cache_path(spool.root, store_locator(store))
                            if spool is not None and spool.root is not None else None)
        self._state = threading.Lock()
        self._rounds = RoundGate(self._round)
        self._claims = AlertClaims(
            store, sibling=config.sibling, instance_id=instance_id,
            writer_id=lambda: self._checkpointer.writer_id, now=self._now,
            submit_nudge=submit_nudge, pending_nudges=pending_nudges,
            delivery_timeout_s=config.alert_delivery_timeout_s)
        self._init_state()

    def _init_state(self) -> None:
        self._day = self._ledger.day
        self._started_mono = time.monotonic()
        self._collections = 0
        self._fleet = FleetView()
        self._inherited: DaySnapshot | None = None
        self._stored_own: dict[str, Any] | None = None
        self._pending_final: list[dict[str, Any]] = []
        self._restore: dict[str, Any] = {"ok": None, "at": None, "error": None}
        self._checkpointed_nanos = 0
        self._read_up = True

    # --- identity ---------------------------------------------------------------

    @property
    def writer_id(self) -> str:
        return self._checkpointer.writer_id

    @property
    def instance_id(self) -> str:
        return self._instance_id

    @property
    def ledger(self) -> SpendLedger:
        return self._ledger

    @property
    def budgets_config(self) -> tuple[Budget, ...]:
        return self._budgets

    @property
    def fleet_view(self) -> FleetView:
        """The fleet view as last read (immutable)."""
        return self._fleet

    def _now(self) -> datetime:
        now = self._clock()
        if now.tzinfo is None:
            raise ValueError("the clock must return an aware datetime")
        return now

    def now(self) -> datetime:
        """The tracker's clock (aware), for the reader's day-boundary timer."""
        return self._now()

    # --- fork -------------------------------------------------------------------

    def after_fork_in_child(self) -> None:
        """A forked child is a new writer: it counts only what it records from now on;
        what the parent had counted stays the parent's (to checkpoint) and is part of
        the others in the child's view until the child's first merge reads the store."""
        self._state = threading.Lock()
        self._rounds.after_fork_in_child()
        inherited = self._ledger.reset_after_fork()
        view, restore = self._fleet, dict(self._restore)
        parent_inherited = self._inherited
        self._checkpointer.new_writer(self._now())
        self._claims.after_fork_in_child()
        self._init_state()
        self._fleet, self._restore = view, restore
        self._inherited = live.inherited_spend(parent_inherited, inherited)

    # --- live reads (no I/O) ----------------------------------------------------

    def _sync_day_locked(self) -> None:
        """Apply day boundaries the ledger crossed: the closed day's final entry is
        queued for the store, the windows move on. Memory only."""
        closed = self._ledger.take_closed_days()
        if not closed:
            return
        now = self._now().isoformat()
        for snapshot in closed:
            seq = self._checkpointer.next_seq()
            self._pending_final.append(self._checkpointer.entry(snapshot, seq, now, final=True))
        old_day, new_day = self._day, self._ledger.day
        prior = fleet_read.prior_after_roll(
            self._fleet, self._budgets, old_day=old_day, new_day=new_day,
            inherited=self._inherited,
            last_own=closed[-1] if closed[-1].day == old_day else None)
        self._day = new_day
        self._fleet = fleet.rolled(self._fleet, new_day, prior)
        self._inherited = None
        self._stored_own = None
        self._checkpointed_nanos = 0
        self._claims.forget_except(self._windows_locked())
        _log.info("otel_budget: new budget day %s", new_day)

    def _windows_locked(self) -> list[tuple[str, str]]:
        return [(b.name, ledger.window_id(self._day, b.period)) for b in self._budgets]

    def _view_locked(self) -> tuple[date, float, list[float]]:
        """(day, fleet spend today, each budget's spend in its window), live."""
        self._ledger.roll_if_due()
        self._sync_day_locked()
        day, own_total, own_budgets = self._ledger.today_nanos()
        total, spends = live.live_spend(self._fleet, self._budgets, own_total_nanos=own_total,
                                        own_budget_nanos=own_budgets, inherited=self._inherited)
        return day, total, spends

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
            windows = [ledger.window_id(day, b.period) for b in self._budgets]
            return [live.budget_row(b, window=w, spend_usd=spend,
                                    alerts_sent=self._claims.claimed(b.name, w))
                    for b, w, spend in zip(self._budgets, windows, spends, strict=True)]

    def state(self) -> dict[str, Any]:
        """Everything health() shows beyond the budgets."""
        checkpoints = self._checkpointer.status()
        with self._state:
            day, total, _ = self._view_locked()
            own = self._ledger.today_nanos()[1]
            view = self._fleet
            return {
                "date": day.isoformat(),
                "fleet_spend_usd": total,
                "writer_id": self._checkpointer.writer_id,
                "instance_spend_usd": money.from_nanos(own),
                "unflushed_usd": money.from_nanos(max(0, own - self._checkpointed_nanos)),
                "collections": self._collections,
                "seq": checkpoints["seq"],
                "last_checkpoint": checkpoints["last_checkpoint"],
                "checkpoint_failed": checkpoints["checkpoint_failed"],
                "checkpoint_age_s": checkpoints["checkpoint_age_s"],
                "uptime_s": round(max(0.0, time.monotonic() - self._started_mono), 3),
                "store_up": self._checkpointer.store_up and self._read_up,
                "restore": dict(self._restore),
                "pending_final_entries": len(self._pending_final),
                "spool_error": checkpoints["spool_error"],
                "attribute_sets_today": self._ledger.attribute_sets_today(),
                "quarantined_rows": list(view.quarantined),
                "alert_claim_error": self._claims.error,
                "fleet_view": fleet_read.view_info(view, self._now()),
            }

    def count_collection(self) -> bool:
        """Count one collection; True when it is a checkpoint one."""
        with self._state:
            self._collections += 1
            return self._collections % self._config.checkpoint_every == 0

    # --- store rounds (I/O, never under _state) ---------------------------------

    def store_round(self, *, checkpoint: bool, wait: bool, timeout_s: float = -1) -> bool:
        """Replay the spool, write closed days' final entries, (re)load the fleet view,
        write this writer's entry when `checkpoint`, claim due alerts (one round at a
        time: rounds.py). Returns False if another round held the turn and `wait` was
        False (it will go again)."""
        if not wait and not self.store_answers():
            # The store failed last time: a collection must not wait for it to fail
            # again (a hung server can take the whole statement timeout). What the
            # round would have written goes to the spool now; a background round
            # probes the store (and replays the spool once it answers).
            self._local_round(checkpoint)
            self._rounds.in_background(lambda: self.store_round(checkpoint=False, wait=True))
            return True
        return self._rounds.run(checkpoint=checkpoint, wait=wait, timeout_s=timeout_s)

    def within(self, work: Callable[[], bool], timeout_s: float) -> bool:
        """Run `work` (a round that checkpoints) for at most `timeout_s`; past it this
        writer's entry is spooled now and False returned (rounds.within)."""
        return rounds.within(work, timeout_s, lambda: self._local_round(checkpoint=True))

    def store_answers(self) -> bool:
        """False after a store round failed on the store (not on a refused entry)."""
        return self._checkpointer.store_up and self._read_up

    def _local_round(self, checkpoint: bool) -> None:
        """A round without the store: closed days' final entries and (when
        `checkpoint`) this writer's entry go to the spool."""
        with self._state:
            self._ledger.roll_if_due()
            self._sync_day_locked()
            finals = list(self._pending_final)
            entry = None
            if checkpoint:
                snapshot = self._ledger.snapshot()
                if snapshot.day == self._day:
                    entry = self._checkpointer.entry(snapshot, self._checkpointer.next_seq(),
                                                     self._now().isoformat())
        for final in finals:
            self._checkpointer.spool_entry(final)
        if entry is not None:
            self._checkpointer.defer(entry)

    def _round(self, checkpoint: bool) -> None:
        with self._state:
            self._ledger.roll_if_due()
            self._sync_day_locked()
            finals = list(self._pending_final)
            day = self._day
            must_load = self._fleet.day != day or self._fleet.source != fleet.SOURCE_STORE
        # After a store failure the read is the probe that sees the store again.
        must_load = must_load or not self.store_answers()
        replayed, own = self._checkpointer.replay_spool()
        if own:
            with self._state:
                for entry in own:
                    self._note_stored_locked(entry)
        if replayed:
            must_load = True  # another writer's entries reached the store: read the day again
        for entry in finals:
            if self._write(entry, final=True):
                with self._state:
                    self._pending_final.remove(entry)
        if must_load:
            self._load(day)
        if checkpoint:
            self._checkpoint_today()
        if must_load or checkpoint:
            self._save_local_copy()
        self._claim_alerts()

    def add_entry_field(self, key: str, value_for_day: Callable[[str], Any]) -> None:
        """Every entry this writer stores for a day carries `key` = value_for_day(day)."""
        self._checkpointer.add_entry_field(key, value_for_day)

    def add_round_hook(self, hook: Callable[[], None]) -> None:
        """Run `hook` at the end of every store round (after the checkpoint)."""
        self._rounds.add_hook(hook)

    def _write(self, entry: dict[str, Any], *, final: bool = False) -> bool:
        """Merge (or retire) one entry (spooled on failure); a merge of today's entry
        moves the fleet view to the others' totals it answered. True if stored."""
        result = self._checkpointer.write(entry)
        if result is None:
            return False
        with self._state:
            self._note_stored_locked(entry)
            today = entry["date"] == self._day.isoformat()
        if not final and today:
            self._apply_merge(result, entry)
        return True

    def _apply_merge(self, result: MergeResult, entry: Mapping[str, Any]) -> None:
        """The next fleet view from a merge's answer. When some other writer left a
        budget out (a rolling deploy: its configuration is older), today's entries are
        read to compute that budget from its breakdown: never blind to that writer."""
        others = result["others"]
        entries: list[dict[str, Any]] | None = None
        if fleet.incomplete(others, self._budgets):
            try:
                entries = self._entries_of(str(entry["date"]))
            except Exception as exc:
                _log.warning("otel_budget: reading the entries of %s failed (the budgets "
                             "some writers lack stay estimated): %s", entry["date"],
                             describe(exc))
        at = self._now().isoformat()
        with self._state:
            if self._day.isoformat() != entry["date"]:
                return
            self._fleet = fleet.after_merge(
                self._fleet, day=self._day, budgets=self._budgets, others=others,
                entries=entries, writer_id=self._checkpointer.writer_id, read_at=at)
            self._inherited = None

    def _entries_of(self, day: str) -> list[dict[str, Any]]:
        """Today's other writers' entries, every budget's figure in each (fleet_read)."""
        with self._state:
            view = self._fleet
        return fleet_read.entries_of(self._store, day, view, self._budgets,
                                     self._checkpointer.writer_id)

    def _note_stored_locked(self, entry: Mapping[str, Any]) -> None:
        """Our own entry for today is in the store: the fleet view must not count it
        among the others' when it reads the day again."""
        if entry["date"] != self._day.isoformat():
            return
        if self._stored_own is None or int(self._stored_own["seq"]) < int(entry["seq"]):
            self._stored_own = dict(entry)

    def _checkpoint_today(self) -> None:
        with self._state:
            self._sync_day_locked()
            snapshot = self._ledger.snapshot()
            if snapshot.day != self._day:  # crossed midnight between the two reads
                return
            entry = self._checkpointer.entry(snapshot, self._checkpointer.next_seq(),
                                             self._now().isoformat())
        if self._write(entry):
            with self._state:
                if snapshot.day == self._day:
                    self._checkpointed_nanos = snapshot.total_nanos

    def _load(self, day: date) -> None:
        """Read the fleet's spend for every budget's window up to `day` and the alerts
        already claimed (fleet_read, claims); swap the view in if the day is still
        `day`. A malformed row is quarantined (left out, named), never fatal."""
        at = self._now().isoformat()
        try:
            read = fleet_read.read_day(self._store, day, self._budgets)
            claimed, undelivered = read_claims(self._store, day, self._budgets)
        except Exception as exc:
            message = describe(exc)
            with self._state:
                self._restore = fleet_read.restore_failed(at, message)
                self._read_up = isinstance(exc, CheckpointError)
            _log.warning("otel_budget: reading the budgets of %s failed (will retry): %s",
                         day, message)
            return
        with self._state:
            if self._day != day:
                return  # the day moved on while we read; the next round loads again
            view = fleet_read.view_of(self._fleet, read, budgets=self._budgets,
                                      writer_id=self._checkpointer.writer_id,
                                      own=self._stored_own, read_at=at)
            if view.quarantined:
                _log.error("otel_budget: malformed stored rows left out of the fleet view "
                           "(quarantined): %s", ", ".join(view.quarantined))
            self._fleet = view
            self._claims.apply_read(claimed, undelivered)
            self._restore = fleet_read.restore_ok(at, read)
            self._read_up = True
        self._checkpointer.mark_up()

    # --- the local copy of the fleet view (fleet_cache.py) -------------------------

    def _save_local_copy(self) -> None:
        """Keep what the fleet had spent beside the spool, for a process that starts
        while the store does not answer."""
        if self._cache_path is None:
            return
        with self._state:
            if self._fleet.source != fleet.SOURCE_STORE:
                return
            day, total, spends = self._view_locked()
            windows = {b.name: (ledger.window_id(day, b.period), spend)
                       for b, spend in zip(self._budgets, spends, strict=True)}
            read_at = self._fleet.read_at
        try:
            fleet_cache.save(self._cache_path, day=day, total_usd=total, windows=windows,
                             read_at=read_at)
        except OSError as exc:
            _log.debug("otel_budget: cannot keep the fleet view beside the spool: %s",
                       describe(exc))

    def _use_local_copy(self) -> bool:
        """Start from the local copy while the store has not answered. True if used."""
        if self._cache_path is None:
            return False
        with self._state:
            if self._fleet.source == fleet.SOURCE_STORE:
                return False
            day = self._day
            windows = {b.name: ledger.window_id(day, b.period) for b in self._budgets}
        view = fleet_cache.load(self._cache_path, day=day, windows=windows)
        if view is None:
            return False
        with self._state:
            if self._fleet.source == fleet.SOURCE_STORE or self._day != day:
                return False
            self._fleet = view
        _log.warning("otel_budget: the store has not answered; enforcing from the local "
                     "copy of the fleet view (read at %s)", view.read_at)
        return True

    def start(self, *, strict: bool, timeout_s: float) -> None:
        """The first load and store round, bounded: returns within `timeout_s` when
        the store does not answer (the round goes on in the background, the timer's
        rounds retry), enforcing from the local copy meanwhile. With `strict`, a
        malformed stored row raises CheckpointError (when the store answered in time)."""
        done = threading.Event()
        errors: list[BaseException] = []

        def first() -> None:
            try:
                self.restore(strict=strict)
                self.store_round(checkpoint=False, wait=True)  # spooled entries
            except BaseException as exc:
                errors.append(exc)
            finally:
                done.set()

        worker = threading.Thread(target=first, name="OtelBudgetStart", daemon=True)
        worker.start()
        if not done.wait(max(0.0, timeout_s)):
            _log.warning("otel_budget: the store did not answer within %.1f s at start; "
                         "starting degraded (retried every collection)", timeout_s)
            with self._state:
                self._restore = {"ok": False, "at": self._now().isoformat(),
                                 "error": f"the store did not answer within {timeout_s:g} s"}
                # Collections spool instead of waiting on the store until it answers.
                self._read_up = False
            self._use_local_copy()
            return
        if errors:
            raise errors[0]
        with self._state:
            loaded = self._fleet.source == fleet.SOURCE_STORE
        if not loaded:
            self._use_local_copy()

    def restore(self, *, strict: bool) -> None:
        """The first load, at start(). Malformed rows are quarantined and an unreachable
        store only degrades health; with `strict`, a corrupt row (or a store that answers
        with an error) raises CheckpointError naming it."""
        with self._rounds.turn():
            self._load(self.day)
        with self._state:
            restore = dict(self._restore)
            quarantined = list(self._fleet.quarantined)
        if not strict:
            return
        if restore.get("ok") is False and self._read_up:
            raise CheckpointError(str(restore.get("error")))
        if quarantined:
            raise CorruptRowError("malformed stored rows (quarantined): " + ", ".join(quarantined))

    def _claim_alerts(self) -> None:
        with self._state:
            day, _, spends = self._view_locked()
        rows = [(b, ledger.window_id(day, b.period), spend)
                for b, spend in zip(self._budgets, spends, strict=True)]
        store_up = self._claims.claim_due(day, rows)
        if store_up is not None:
            with self._state:
                self._read_up = store_up

    def watch_claim(self, name: str, nudge: dict[str, Any] | None) -> None:
        """Watch a claim made outside the tracker's own budgets (see AlertClaims.watch)."""
        self._claims.watch(name, nudge)

    def final_entries(self) -> list[dict[str, Any]]:
        """Shutdown: every entry this writer still owes the store (closed days and today),
        built now, with fresh seqs."""
        with self._state:
            self._ledger.roll_if_due()
            self._sync_day_locked()
            entries = list(self._pending_final)
            entries.append(self._checkpointer.entry(
                self._ledger.snapshot(), self._checkpointer.next_seq(),
                self._now().isoformat(), final=True))
            return entries

    def spool_entries(self, entries: Iterable[dict[str, Any]]) -> None:
        for entry in entries:
            self._checkpointer.spool_entry(entry)

    def write_entries(self, entries: Iterable[dict[str, Any]]) -> bool:
        ok = True
        for entry in entries:
            ok = self._write(entry, final=True) and ok
        return ok

    def spool_summary(self) -> dict[str, Any] | None:
        return self._checkpointer.spool_summary()


__all__ = ["BudgetTracker", "CheckpointResult", "StoreError", "describe", "new_writer_id"]
