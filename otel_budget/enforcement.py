"""The hard budgets of one meter and what holds them: fleet leases (leases.py), the
per-key books (perkey.py) and the reservation book (reservations.py), wired to the
tracker's spend, windows and store rounds.

`BudgetMeter` owns one `Enforcement` and delegates `guard`/`reserve`/`areserve`,
`budgets()`/`budget()` and `lease_stats()` to it. Lease upkeep runs in the
tracker's round hooks (off the hot path) until `stop_rounds()`; `release()` gives
every lease back at shutdown.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from datetime import date
from typing import Any

from . import ledger, money
from .budgets import Budget
from .config import BudgetConfig
from .errors import BudgetError, BudgetExceeded, ConfigError
from .leases import FleetLease
from .money import UsdAmount
from .perkey import KEY_FIELD, PerKey
from .refusals import RefusalLog
from .reservations import RESERVE_ATTEMPTS, Reservation, ReservationBook
from .stores.base import LeaseStore, PatchStore
from .tracker import BudgetTracker

_log = logging.getLogger("otel_budget")

Attributes = Mapping[str, Any]


def lease_timing(config: BudgetConfig) -> tuple[float, float]:
    """(lease TTL, idle time after which a writer gives its lease back)."""
    ttl = config.resolved_lease_ttl_s
    # An idle writer's lease goes back within seconds: its surplus is what a busy
    # writer would otherwise be refused.
    return ttl, max(2 * config.collect_interval_s, min(ttl / 3, 5.0))


def make_leases(config: BudgetConfig, store: PatchStore,
                tracker: BudgetTracker) -> dict[str, FleetLease]:
    fleet = [b for b in config.all_budgets if b.hard and b.enforce == "fleet"]
    if not fleet:
        return {}
    if not isinstance(store, LeaseStore):
        raise ConfigError(
            f"budget {fleet[0].name!r}: enforce='fleet' (the default of a hard budget) "
            f"needs a store that grants leases (memory, SQLite, PostgreSQL or Supabase), "
            f"got {type(store).__name__}; pass enforce='process' for a per-process cap")
    ttl, idle = lease_timing(config)
    leases = {}
    for budget in fleet:
        if budget.per is not None:
            continue  # each key has its own lease (perkey.PerKey), made when used
        name = budget.name
        leases[name] = FleetLease(
            budget=name, cap_usd=budget.cap_usd, store=store,
            writer_id=lambda: tracker.writer_id,
            window_of=lambda name=name: tracker.window_of(name),  # type: ignore[misc]
            seen_of=lambda name=name: tracker.budget_spend(name),  # type: ignore[misc]
            ttl_s=ttl, idle_s=idle,
        )
    return leases


def make_perkey(config: BudgetConfig, store: PatchStore, tracker: BudgetTracker, *,
                instance_id: str, submit_nudge: Callable[[dict[str, Any]], None],
                current_day: Callable[[], date]) -> PerKey | None:
    """None without a per-key budget: record() then pays nothing for them."""
    if not any(b.per is not None for b in config.all_budgets):
        return None
    ttl, idle = lease_timing(config)
    return PerKey(
        config.all_budgets, max_keys=config.max_keys_per_budget, store=store,
        writer_id=lambda: tracker.writer_id, day=current_day, now=tracker.now,
        window_of=tracker.window_of, ttl_s=ttl, idle_s=idle,
        # Other writers' entries change at their checkpoints: re-read no more often
        # (and at least every 30 s, whatever the collection interval).
        refresh_s=min(30.0, max(0.5, config.checkpoint_every * config.collect_interval_s)),
        sibling=config.sibling, instance_id=instance_id,
        submit_nudge=submit_nudge, first_wait_s=config.start_timeout_s,
        watch_claim=tracker.watch_claim,
    )


class Enforcement:
    def __init__(
        self, config: BudgetConfig, store: PatchStore, tracker: BudgetTracker, *,
        instance_id: str, submit_nudge: Callable[[dict[str, Any]], None],
        record: Callable[[float, Attributes | None], None],
        check_amount: Callable[[object, str], float], refusals: RefusalLog,
        current_day: Callable[[], date],
    ) -> None:
        self._config = config
        self._tracker = tracker
        self._index = {b.name: b for b in config.all_budgets}
        self._rounds_on = True
        self.leases = make_leases(config, store, tracker)
        self.perkey = make_perkey(config, store, tracker, instance_id=instance_id,
                                  submit_nudge=submit_nudge, current_day=current_day)
        self.book = ReservationBook(
            budgets=config.all_budgets, spend_of=self.spend_of,
            window_of=self.window_of, record=record,
            check_amount=check_amount, leases=self.leases,
            on_refusal=refusals.record_exception,
            day=lambda: tracker.day, keyed=self.perkey,
        )
        if self.leases:
            tracker.add_round_hook(self._lease_round)
        if self.perkey is not None:
            tracker.add_entry_field(KEY_FIELD, self.perkey.book.entry_field)
            tracker.add_round_hook(self._perkey_round)

    # --- what the book asks ---------------------------------------------------------

    def spend_of(self, name: str) -> float:
        if self.perkey is not None and PerKey.owns(name):
            return self.perkey.spend(name)
        return self._tracker.budget_spend(name)

    def window_of(self, name: str) -> str:
        if self.perkey is not None and PerKey.owns(name):
            return self.perkey.window(name)
        return self._tracker.window_of(name)

    # --- rounds, fork, shutdown ------------------------------------------------------

    def _lease_round(self) -> None:
        """At each store round (after the checkpoint): renew, report, give back. Not
        in shutdown's round: its view of the fleet is mid-update (the spool replay
        reloads the day before the final entry is stored), and release follows."""
        if not self._rounds_on:
            return
        # The round failed on the store: probe it now, so that the next fleet call is
        # refused at once if it is down instead of waiting on it.
        suspect = not self._tracker.store_answers()
        for lease in self.leases.values():
            try:
                lease.on_round(self._config.collect_interval_s, store_suspect=suspect)
            except Exception as exc:
                _log.warning("otel_budget: renewing the lease on budget %r failed: %s",
                             lease.budget, type(exc).__name__ if not isinstance(exc, BudgetError)
                             else exc)

    def _perkey_round(self) -> None:
        if not self._rounds_on or self.perkey is None:
            return
        self.perkey.on_round(self._config.collect_interval_s,
                             store_suspect=not self._tracker.store_answers())

    def stop_rounds(self) -> None:
        """Shutdown began: the round hooks leave the leases alone (release follows)."""
        self._rounds_on = False

    def release(self) -> None:
        """Give every lease back (else each expires after its TTL)."""
        if self.perkey is not None:
            self.perkey.close()
        for lease in self.leases.values():
            try:
                lease.close()
            except Exception as exc:  # it expires after its TTL instead
                _log.warning("otel_budget: giving back the lease on budget %r failed: %s",
                             lease.budget, type(exc).__name__)

    def after_fork_in_child(self) -> None:
        for lease in self.leases.values():
            lease.after_fork_in_child()  # the parent's lease stays the parent's
        if self.perkey is not None:
            self.perkey.after_fork_in_child()

    # --- rows -------------------------------------------------------------------------

    def budgets(self) -> list[dict[str, Any]]:
        """The tracker's rows with what is held: reservations, leases, per-key rows."""
        if self.perkey is not None:
            self.perkey.wait_first_read()  # the fleet's keys, read beside start()
        rows = self._tracker.budgets()
        for row in rows:
            row["reserved_usd"] = self.book.held_usd(row["name"]) if row["hard"] else 0.0
            row["unsettled_usd"] = self.book.unsettled_usd(row["name"])
            lease = self.leases.get(row["name"])
            if lease is not None:
                info = lease.describe()
                row["leased_usd"] = info["leased_usd"]
                row["lease"] = info
            budget = self._index.get(row["name"])
            if self.perkey is not None and budget is not None and budget.per is not None:
                self._per_key_row(row, budget)
        return rows

    def gauge_rows(self) -> list[dict[str, Any]]:
        """The rows the gauges read once per collection (no reservations, no waiting)."""
        rows = self._tracker.budgets()
        if self.perkey is not None:
            for row in rows:
                budget = self._index.get(row["name"])
                if budget is not None and budget.per:
                    self._per_key_row(row, budget)  # its biggest key against the cap
        return rows

    def _per_key_row(self, row: dict[str, Any], budget: Budget) -> None:
        """A per-key budget's row: its cap is each key's, so its spend, remaining and
        utilization are those of its biggest key (what health and the gauges compare
        with the cap); `top_keys` the 10 biggest, fleet-wide as known; `key_count` how
        many keys are known in the window and `total_spend_usd` their sum."""
        assert self.perkey is not None and budget.per is not None
        top, count, total = self.perkey.top_keys(budget)
        biggest = top[0]["spend_usd"] if top else 0.0
        row.update({
            "per": list(budget.per), "top_keys": top, "key_count": count,
            "total_spend_usd": total, "spend_usd": biggest,
            "remaining_usd": money.remaining_usd(biggest, budget.cap_usd),
            "utilization": money.utilization(biggest, budget.cap_usd),
            "alerts_sent": [],
        })

    def budget(self, name: str, attributes: Attributes | None = None) -> dict[str, Any]:
        """See BudgetMeter.budget."""
        budget = self._index.get(name) if isinstance(name, str) else None
        if budget is None:
            raise ConfigError(f"no budget named {name!r:.120} (configured: "
                              f"{', '.join(self._index) or 'none'})")
        if attributes is not None:
            attributes = ledger.check_attributes(attributes)
        row = next(r for r in self.budgets() if r["name"] == name)
        if budget.per is None or attributes is None or self.perkey is None:
            return row
        state = self.perkey.key_state(budget, attributes)
        for drop in ("top_keys", "key_count", "total_spend_usd", "lease", "leased_usd"):
            row.pop(drop, None)
        row.update(state)
        row["reserved_usd"] = self.book.held_usd(state.pop("lease_row"))
        row.pop("lease_row", None)
        return row

    def lease_stats(self) -> dict[str, Any]:
        leases = list(self.leases.values())
        if self.perkey is not None:
            leases += self.perkey.leases()  # the keys' leases held now
        trips = sum(lease.round_trips for lease in leases)
        draws = sum(lease.draws for lease in leases)
        return {"round_trips": trips, "reservations": draws,
                "round_trips_per_reservation": round(trips / draws, 4) if draws else None}


@asynccontextmanager
async def areserve(book: ReservationBook, max_usd: UsdAmount, attributes: Attributes | None,
                   *, on_error: str) -> AsyncIterator[Reservation]:
    """`reserve` for asyncio (see BudgetMeter.areserve)."""
    amount, budgets = book.prepare(max_usd, attributes, on_error)
    try:
        for _ in range(RESERVE_ATTEMPTS):
            result = book.try_reserve(amount, budgets, attributes, on_error=on_error)
            if isinstance(result, Reservation):
                reservation = result
                break
            # A fleet lease needs a store round trip: in a thread, never on the loop.
            await asyncio.to_thread(book.fill, result, amount)
        else:  # the lease kept being drawn by others between our round trips
            raise book.refusal(budgets, amount)
    except BudgetExceeded as exc:
        book.refused(exc)
        raise
    try:
        yield reservation
    except BaseException as exc:
        reservation.close(exc)
        raise
    else:
        reservation.close()


__all__ = ["Enforcement", "areserve", "lease_timing", "make_leases", "make_perkey"]
