"""Alert claims: the one step between the fleet view and the notifiers.

A due threshold is claimed by inserting its row (`budget_nudge_name`) if absent:
exactly one writer of the fleet wins and hands the nudge to its notifiers. Claims are
then watched until delivered (at least once): this writer records the delivery of its
own once the notifiers took them, and takes over, by compare and set so that exactly
one writer does, a claim still undelivered `alert_delivery_timeout_s` after it was
made (its writer died before delivering it). The rules without I/O (what is due, the
nudge document, the claim fields) are alerts.py's.

Lock: `_lock` guards the book and the watch lists and is held only for dict work,
never across a store call; it never takes another lock, so a caller may hold its own.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Sequence
from datetime import date, datetime, timedelta
from typing import Any

from . import alerts, ledger
from .alerts import AlertBook, AlertKey, build_nudge
from .budgets import Budget
from .checkpoint import describe
from .errors import CheckpointError
from .stores import layout
from .stores.base import ClaimStore, PatchStore

_log = logging.getLogger("otel_budget")

Nudge = dict[str, Any]

#: (budget, window, spend in that window) for each of the tracker's budgets.
WindowSpend = tuple[Budget, str, float]


def claim_state(store: PatchStore, name: str) -> tuple[bool, bool]:
    """(the claim row exists, it is not known delivered)."""
    try:
        content = store.get(layout.NUDGE_TYPE, name)
    except CheckpointError:
        return True, False  # a row is there, however malformed: someone claimed it
    return content is not None, alerts.claim_undelivered(content)


def read_claims(
    store: PatchStore, day: date, budgets: Sequence[Budget],
) -> tuple[list[AlertKey], list[str]]:
    """The alerts of `day`'s windows already claimed in the fleet, and the row names of
    those not known delivered (to watch). Store errors propagate."""
    claimed: list[AlertKey] = []
    undelivered: list[str] = []
    for budget in budgets:
        window = ledger.window_id(day, budget.period)
        for ratio in budget.alert_ratios:
            name = layout.nudge_row_name(budget.name, window, ratio)
            exists, open_claim = claim_state(store, name)
            if exists:
                claimed.append((budget.name, window, ratio))
            if open_claim:
                undelivered.append(name)
    return claimed, undelivered


class AlertClaims:
    def __init__(
        self, store: PatchStore, *, sibling: str, instance_id: str,
        writer_id: Callable[[], str], now: Callable[[], datetime],
        submit_nudge: Callable[[Nudge], None], delivery_timeout_s: float,
        pending_nudges: Callable[[], list[dict[str, Any]]] | None = None,
    ) -> None:
        self._store = store
        self._sibling = sibling
        self._instance_id = instance_id
        self._writer_id = writer_id
        self._now = now
        self._submit = submit_nudge
        self._timeout = timedelta(seconds=delivery_timeout_s)
        #: The nudges the notifiers have not yet taken (the dispatcher's queue).
        self._pending_nudges = pending_nudges
        self._book = AlertBook()
        self._lock = threading.Lock()
        self._reset()

    def _reset(self) -> None:
        #: Claims not known delivered: row name -> when to look again (None: now).
        self._watch: dict[str, datetime | None] = {}
        #: Claims of this writer its notifiers have not yet taken: row name -> content.
        self._mine: dict[str, Nudge] = {}
        #: The last alert claim the store refused or could not take (None: none).
        self._error: str | None = None

    def after_fork_in_child(self) -> None:
        """A new writer: what is claimed stays known; the parent's watch is the parent's."""
        self._lock = threading.Lock()
        self._reset()

    # --- reads and bookkeeping (memory only) ----------------------------------------

    @property
    def error(self) -> str | None:
        return self._error

    def claimed(self, budget: str, window: str) -> list[float]:
        with self._lock:
            return self._book.claimed(budget, window)

    def forget_except(self, current: Iterable[tuple[str, str]]) -> None:
        with self._lock:
            self._book.forget_except(current)

    def apply_read(self, claimed: Iterable[AlertKey], undelivered: Iterable[str]) -> None:
        """What `read_claims` found: known claimed, and watched until delivered."""
        with self._lock:
            for key in claimed:
                self._book.mark_claimed(*key)
            for name in undelivered:
                self._watch.setdefault(name, None)

    def watch(self, name: str, nudge: Nudge | None) -> None:
        """Watch a claim made outside the tracker's own budgets (a per-key budget's):
        `nudge` when this writer made it (its delivery is recorded), None when it found
        the row already there (taken over if it stays undelivered)."""
        with self._lock:
            self._watch.setdefault(name, None)
            if nudge is not None:
                self._mine[name] = nudge

    # --- rounds (store I/O) ---------------------------------------------------------

    def claim_due(self, day: date, spends: Iterable[WindowSpend]) -> bool | None:
        """Claim every threshold now due, nudge for those this writer won, then watch
        the claims. Returns None when every claim went through, else whether the last
        failure was a refused row (True: the store answers) or a store failure."""
        with self._lock:
            due = [(budget, window, ratio, spend) for budget, window, spend in spends
                   for ratio in self._book.due(budget, window, spend)]
        store_up: bool | None = None
        for budget, window, ratio, spend in due:
            answered = self._claim(day, budget, window, ratio, spend)
            if answered is not None:
                store_up = answered
        self.watch_round()
        return store_up

    def _claim(self, day: date, budget: Budget, window: str, ratio: float,
               spend: float) -> bool | None:
        name = layout.nudge_row_name(budget.name, window, ratio)
        nudge = build_nudge(
            sibling=self._sibling, budget=budget, window=window, ratio=ratio,
            spend_usd=spend, instance_id=self._instance_id, now=self._now(),
            day=day.isoformat(), row_name=name, claimed_by=self._writer_id(),
        )
        try:
            inserted = self._store.insert_if_absent(layout.NUDGE_TYPE, name, nudge)
        except Exception as exc:
            with self._lock:
                # A refused claim (a row the store will not take) is not an outage,
                # but it is an alert nobody gets: health says so.
                self._error = f"{name}: {describe(exc)}"
            _log.warning("otel_budget: claiming %s failed (will retry): %s", name,
                         describe(exc))
            return isinstance(exc, CheckpointError)
        with self._lock:
            self._error = None
            self._book.mark_claimed(budget.name, window, ratio)
            self._watch.setdefault(name, None)
            if inserted:
                self._mine[name] = nudge
        if inserted:
            _log.info("otel_budget: %s%% of budget %r (%s) reached; nudging %s",
                      layout.ratio_pct(ratio), budget.name, window, self._sibling)
            self._submit(nudge)
        return None

    def watch_round(self) -> None:
        """Alerts at least once: record the delivery of this writer's claims once its
        notifiers took them; take over a claim left undelivered past the timeout."""
        # Without compare and set (no ClaimStore) each alert is delivered by its claimer only.
        replace = self._store.replace_claim if isinstance(self._store, ClaimStore) else None
        with self._lock:
            now = self._now()
            due = [n for n, at in self._watch.items() if at is None or at <= now]
            mine = {n: self._mine[n] for n in due if n in self._mine}
        if not due or replace is None:
            return
        pending: set[Any] = set()
        if mine and self._pending_nudges is not None:
            pending = {n.get("id") for n in self._pending_nudges()}
        for name in due:
            try:
                if name in mine:
                    if name not in pending:  # else the notifiers have not taken it yet
                        self._record_delivery(replace, name, mine[name], now)
                else:
                    self._check_delivered(replace, name, now)
            except Exception as exc:
                _log.warning("otel_budget: checking the delivery of %s failed (will retry): %s",
                             name, describe(exc))

    def _record_delivery(self, replace: Callable[..., bool], name: str, nudge: Nudge,
                         now: datetime) -> None:
        done = replace(layout.NUDGE_TYPE, name, nudge, alerts.delivered(nudge, now))
        with self._lock:
            self._mine.pop(name, None)
            if done:
                self._watch.pop(name, None)

    def _check_delivered(self, replace: Callable[..., bool], name: str, now: datetime) -> None:
        """Another writer's claim: forget it once delivered, look again at its timeout,
        take it over (compare and set) past it."""
        row = self._store.get(layout.NUDGE_TYPE, name)
        if not alerts.claim_undelivered(row):
            with self._lock:
                self._watch.pop(name, None)
            return
        assert row is not None
        stamp = alerts.claimed_at(row)
        if stamp is not None and now - stamp < self._timeout:
            with self._lock:
                self._watch[name] = stamp + self._timeout
            return
        nudge = alerts.taken_over(row, writer_id=self._writer_id(), now=now)
        if not replace(layout.NUDGE_TYPE, name, row, nudge):
            return  # another writer took it over first: look again later
        _log.warning("otel_budget: alert %s was claimed by %s but not delivered "
                     "within %g s; delivering it", name, row.get("claimed_by"),
                     self._timeout.total_seconds())
        with self._lock:
            self._mine[name] = nudge
            self._watch[name] = None
        self._submit(nudge)


__all__ = ["AlertClaims", "WindowSpend", "claim_state", "read_claims"]
