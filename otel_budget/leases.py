"""Budget leases: a hard cap that holds across the fleet (``Budget(enforce="fleet")``).

Escrow, as in the demarcation protocol: the store keeps ONE row per (budget,
window), of type ``LEASE_TYPE`` named ``lease_{budget}_{window}`` (stores.layout)::

    {"budget", "window", "cap_usd",
     "settled_usd":  use of leases that ended (released, or expired),
     "external_usd": spend the fleet checkpointed that no lease accounts for
                     (spend from before leases, record() without a reservation,
                     a dead writer's tail), a running maximum of the estimates,
     "short_until":  epoch seconds; while in the future, the pool is contended,
     "leases": {lease_id: {"writer_id", "granted_usd", "used_usd", "expires_at"}},
     "ended":  {lease_id: {"held_usd", "expired_at"}}: leases that expired, settled
               at held_usd, awaiting a late report (the last hour's, 64 at most)}

Invariant kept by every grant: ``settled + external + sum(max(granted, used)) <= cap``.
A writer draws its reservations from its own lease in memory and talks to the row
only to get a new chunk (when the lease runs low: in the background, ahead of
need), at its store rounds (to report its use and renew), and to give the lease
back (idle, shutdown). An expired lease (a writer killed with SIGKILL, or one that
did not renew in time) is settled at its whole grant: the writer may have drawn all
of it since its last report. If the writer reports it later (its next round trip
asks for the lease by its id), what it did not use returns to the pool.

This module is the per-process client, ``FleetLease``; the row's pure arithmetic
(``apply_acquire``, ``apply_release``: the reference the SQL functions
``otel_budget_lease_acquire``/``_release`` mirror) lives beside the other row
arithmetic, in ``otel_budget.stores.leaserows`` (its names are importable here too).
Times on the row are the store's clock (epoch seconds); the client only ever uses
durations it was answered with.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from .errors import LeaseStoreDown
from .stores.base import LeaseStore
from .stores.leaserows import (
    DEFAULT_SHARE,
    DEFAULT_SURPLUS_SHARE,
    EPS,
    LEASE_TYPE,
    MIN_SHARERS,
    apply_acquire,
    apply_release,
    check_lease_request,
    empty_lease_doc,
    expire_leases,
    grant_size,
    lease_answer,
    lease_doc_problem,
    lease_row_name,
    lease_totals,
    r9,
    surplus_room,
)

_log = logging.getLogger("otel_budget")

#: After a failed round trip, fleet reservations beyond the lease are refused at
#: once (no I/O) until a round trip succeeds: the timer's probe, or a foreground
#: try after this long when no timer runs.
DOWN_RETRY_S = 30.0


# --- the client ---------------------------------------------------------------------------


class Draw:
    """One reservation's hold on a lease (its generation, so a settle after the lease
    ended changes nothing)."""

    __slots__ = ("amount", "generation", "lease")

    def __init__(self, lease: FleetLease, generation: int, amount: float) -> None:
        self.lease = lease
        self.generation = generation
        self.amount = amount


class FleetLease:
    """This writer's lease on one fleet budget. Thread-safe. `try_draw` is memory only;
    `acquire` does one store round trip (serialised per lease); `on_round` renews,
    reports or gives back at the tracker's store rounds."""

    def __init__(
        self, *, budget: str, cap_usd: float, store: LeaseStore, writer_id: Callable[[], str],
        window_of: Callable[[], str], seen_of: Callable[[], float], ttl_s: float,
        idle_s: float, min_chunk_usd: float = 0.0, share: float = DEFAULT_SHARE,
        surplus_share: float | None = DEFAULT_SURPLUS_SHARE,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.budget = budget
        self.cap_usd = cap_usd
        self._store = store
        self._writer_id = writer_id
        self._window_of = window_of
        self._seen_of = seen_of
        self.ttl_s = ttl_s
        self.idle_s = idle_s
        self.min_chunk_usd = min_chunk_usd
        self.share = share
        self.surplus_share = surplus_share
        self._mono = monotonic
        self._closed = False
        self._lock = threading.Lock()
        self._io = threading.Lock()
        self._reset_counters()
        self._reset_lease()

    def close(self) -> None:
        """Shutdown: give the lease back and never take another (a prefetch still
        in flight finds the lease closed)."""
        with self._lock:
            self._closed = True
        self.release()

    def _reset_counters(self) -> None:
        self.round_trips = 0
        self.draws = 0
        self.refusals = 0
        self.errors = 0
        self.last_error: str | None = None
        self._prefetching = False
        self._last: dict[str, Any] = {}
        self._down_until = 0.0  # the store failed: refuse beyond the lease until then

    def _reset_lease(self) -> None:
        self._generation = getattr(self, "_generation", 0) + 1
        self._lease_id: str | None = None
        self._window: str | None = None
        self._granted = 0.0
        self._chunk = 0.0  # what the last grant added beyond the use it was told
        self._used = 0.0  # open holds + settled actuals drawn from this lease
        self._open = 0
        self._reported = 0.0
        self._reported_at = 0.0
        self._valid_until = 0.0
        self._last_draw = 0.0
        self._short_for: float | None = None  # refused want, until the next round
        self._short_until = 0.0

    def after_fork_in_child(self) -> None:
        self._closed = False
        self._lock = threading.Lock()
        self._io = threading.Lock()
        self._reset_counters()
        self._reset_lease()

    # --- memory only ----------------------------------------------------------------

    def _valid_locked(self, now: float) -> bool:
        return (self._lease_id is not None and now < self._valid_until
                and self._window == self._window_of())

    def try_draw(self, amount: float) -> Draw | bool | None:
        """A Draw if the lease covers `amount`; False if the pool is known to be short
        of it (refuse now, no I/O); None if only the store can tell."""
        with self._lock:
            now = self._mono()
            if self._valid_locked(now) and self._granted - self._used >= amount - EPS:
                self._used += amount
                self._open += 1
                self._last_draw = now
                self.draws += 1
                draw = Draw(self, self._generation, amount)
                low = self._granted - self._used < max(amount, 0.25 * self._chunk)
                start_prefetch = (low and not self._prefetching and not self._contended(now)
                                  and not self._down_locked(now))
                if start_prefetch:
                    self._prefetching = True
            elif (self._short_for is not None and amount > self._short_for + EPS
                  and now < self._short_until) or self._down_locked(now):
                # The pool is known short, or the store just failed: refuse at once
                # rather than wait on the store again for every call.
                self.refusals += 1
                return False
            else:
                return None
        if start_prefetch:
            threading.Thread(target=self._prefetch, args=(amount,), daemon=True,
                             name=f"OtelBudgetLease-{self.budget}").start()
        return draw

    def _fair_surplus(self) -> float:
        """This lease's part of the fleet's surplus room, as of the last answer."""
        if self.surplus_share is None:
            return math.inf
        return self.surplus_share * self.cap_usd / max(MIN_SHARERS,
                                                       int(self._last.get("active") or 1))

    def _down_locked(self, now: float) -> bool:
        return now < self._down_until

    @property
    def store_down(self) -> bool:
        """True while the last round trip failed and no later one succeeded (nor
        DOWN_RETRY_S passed): reservations beyond the lease are refused without I/O."""
        with self._lock:
            return self._down_locked(self._mono())

    def _contended(self, now: float) -> bool:
        return bool(self._last.get("contended")) and now < self._short_until

    def close_draw(self, draw: Draw, actual: float | None) -> None:
        """A reservation ended: `actual` recorded (None: cancelled)."""
        with self._lock:
            if draw.generation != self._generation:
                return  # that lease ended; its last report counted the hold at its max
            self._used = max(0.0, self._used - draw.amount + (actual or 0.0))
            self._open = max(0, self._open - 1)

    def undo_draw(self, draw: Draw) -> None:
        """Take back a draw whose reservation was never made."""
        with self._lock:
            if draw.generation == self._generation:
                self._used = max(0.0, self._used - draw.amount)
                self._open = max(0, self._open - 1)
            self.draws -= 1

    def holds_nothing(self) -> bool:
        """No lease, no open draw, no prefetch in flight: the object can be dropped
        (a per-key budget's key leases come and go with the keys in use)."""
        with self._lock:
            return self._lease_id is None and self._open == 0 and not self._prefetching

    def remaining(self) -> float:
        with self._lock:
            if not self._valid_locked(self._mono()):
                return 0.0
            return max(0.0, self._granted - self._used)

    # --- store round trips ------------------------------------------------------------

    def acquire(self, want: float, *, probe: bool = False) -> bool:
        """Ask the store for `want` beyond this lease's use (0: report and renew). True
        if the lease now covers it. Raises StoreError/CheckpointError on failure, and
        LeaseStoreDown without I/O while a failure is fresh (unless `probe`)."""
        with self._io:
            return self._acquire_locked(want, probe=probe)

    def _acquire_locked(self, want: float, *, probe: bool = False) -> bool:
        for _ in range(2):
            with self._lock:
                now = self._mono()
                if not probe and self._down_locked(now):
                    raise LeaseStoreDown(
                        f"budget {self.budget!r}: the store failed {self.last_error or ''}; "
                        "not asking again until a probe reaches it")
                window = self._window_of()
                if self._lease_id is not None and self._window != window:
                    self._reset_lease()  # the window ended: the store settles it at expiry
                # A lease past its time here is still asked for by its id: the store
                # renews it if it has not expired there; else expiry settled its whole
                # grant, this report gives back what it did not use, and the answer
                # is "expired" (a new lease follows).
                if self._closed:
                    return False
                if want > 0 and self._valid_locked(now) and \
                        self._granted - self._used >= want - EPS:
                    return True  # a prefetch or another caller got it meanwhile
                new = self._lease_id is None
                if new:
                    self._lease_id = uuid.uuid4().hex
                    self._window = window
                keep = None
                if want <= 0 and not new and self.surplus_share is not None:
                    # A renewal gives back surplus beyond this lease's fair part of
                    # the fleet's surplus room (writers that joined since it was
                    # granted wait on it); drawn no further from now on, here.
                    keep = min(self._granted, self._used + self._fair_surplus())
                    self._granted = keep
                lid, used, generation = self._lease_id, self._used, self._generation
                # Other threads go on drawing up to the grant while this request is
                # on its way; the store keeps at least that much of it granted.
                floor = self._granted if self._valid_locked(now) else min(self._granted, used)
            assert lid is not None
            request = {
                "budget": self.budget, "window": window, "cap_usd": self.cap_usd,
                "writer_id": self._writer_id(), "lease_id": lid, "new": new,
                "used_usd": r9(used), "want_usd": r9(max(0.0, want - 0.0)),
                "seen_usd": r9(max(0.0, self._seen_of())), "ttl_s": self.ttl_s,
                "min_chunk_usd": self.min_chunk_usd, "share": self.share,
                "floor_usd": r9(floor),
            }
            if self.surplus_share is not None:
                request["surplus_share"] = self.surplus_share
            if keep is not None:
                request["keep_usd"] = r9(keep)
            sent = self._mono()
            try:
                answer = self._store.lease_acquire(request)
            except Exception as exc:
                with self._lock:
                    self.round_trips += 1
                    self.errors += 1
                    self.last_error = f"{type(exc).__name__}: {exc}"[:300]
                    self._down_until = self._mono() + DOWN_RETRY_S
                    if new and generation == self._generation:
                        self._lease_id = None  # may or may not exist: let it expire
                        self._window = None
                raise
            with self._lock:
                self.round_trips += 1
                self.last_error = None
                self._down_until = 0.0
                self._last = answer
                if generation != self._generation:
                    continue
                if answer["expired"]:
                    self._reset_lease()
                    continue
                self._granted = answer["granted_usd"]
                self._chunk = max(0.0, self._granted - used)
                self._reported = used
                self._reported_at = sent
                if answer["expires_in_s"] > 0:
                    # The store's clock started the TTL after we sent: end it earlier here.
                    self._valid_until = sent + answer["expires_in_s"] * 0.9
                else:
                    self._lease_id = None
                    self._window = None
                if answer["contended"] or not answer["ok"]:
                    self._short_until = self._mono() + min(self.ttl_s, self.idle_s)
                if not answer["ok"]:
                    # Until the pool is known to change: refuse what it cannot hold
                    # here, at once (the pool's free part and this lease's rest).
                    free = answer["free_usd"] or 0.0
                    self._short_for = min(want - 2 * EPS,
                                          free + max(0.0, self._granted - self._used))
                    self.refusals += 1
                else:
                    self._short_for = None
                return bool(answer["ok"])
        return False

    def _prefetch(self, amount: float) -> None:
        try:
            with self._io:
                with self._lock:
                    covered = self._granted - self._used >= max(amount, 0.25 * self._chunk)
                if not covered:
                    self._acquire_locked(amount)
        except Exception as exc:  # the next reservation asks again, in the foreground
            _log.debug("otel_budget: prefetching a lease chunk failed: %s", exc)
        finally:
            with self._lock:
                self._prefetching = False

    def release(self) -> None:
        """Give the lease back, settling its exact use (no-op without one)."""
        with self._io:
            with self._lock:
                lid, used = self._lease_id, self._used
                if lid is None:
                    return
                request = {"budget": self.budget, "window": self._window,
                           "writer_id": self._writer_id(), "lease_id": lid,
                           "used_usd": r9(used)}
                self._reset_lease()
            try:
                self._last = self._store.lease_release(request)
            except Exception as exc:
                with self._lock:
                    self.errors += 1
                    self.last_error = f"{type(exc).__name__}: {exc}"[:300]
                    self._down_until = self._mono() + DOWN_RETRY_S
                raise
            else:
                with self._lock:
                    self.last_error = None
                    self._down_until = 0.0
            finally:
                with self._lock:
                    self.round_trips += 1

    def on_round(self, interval_s: float, *, store_suspect: bool = False) -> None:
        """At a store round: probe the store after a failure (this lease's, or the
        round's own when `store_suspect`: the next call then need not be the one
        that waits on a dead store); give an idle lease back
        (its surplus is a busy writer's refusal); report and renew a busy one (before
        a third of its TTL is left, or when its use changed, at most every sixth of
        the TTL); give the surplus back when the pool is contended; clear the 'pool is
        short' note so the next reservation asks again."""
        with self._lock:
            now = self._mono()
            if self._short_until <= now:
                self._short_for = None
            down = self._down_until > 0.0 or store_suspect
            held = self._lease_id is not None
            idle = held and self._open == 0 and now - self._last_draw >= self.idle_s
            stale = held and (now - self._reported_at >= self.ttl_s / 3
                              or self._valid_until - now < self.ttl_s / 2)
            changed = held and abs(self._used - self._reported) > EPS and \
                now - self._reported_at >= max(interval_s * 0.5, self.ttl_s / 6)
            # Contended: give back what this lease holds beyond its use (once).
            contended = held and self._contended(now) and \
                self._granted - self._used > EPS
            hoarding = held and self._granted - self._used > 2 * self._fair_surplus()
        if down and not (held and idle):
            self.acquire(0.0, probe=True)  # a success lifts the refusals at once
        elif idle:
            self.release()
        elif stale or changed or contended or hoarding:
            self.acquire(0.0)
            with self._lock:  # the answer may say more writers share the room now
                again = self._lease_id is not None and \
                    self._granted - self._used > 2 * self._fair_surplus()
            if again:
                self.acquire(0.0)

    def describe(self) -> dict[str, Any]:
        with self._lock:
            now = self._mono()
            valid = self._valid_locked(now)
            draws = self.draws
            return {
                "leased_usd": r9(self._granted) if valid else 0.0,
                "lease_used_usd": r9(self._used) if valid else 0.0,
                "lease_remaining_usd": r9(max(0.0, self._granted - self._used)) if valid else 0.0,
                "lease_expires_in_s": round(max(0.0, self._valid_until - now), 3) if valid else 0.0,
                "lease_round_trips": self.round_trips,
                "lease_reservations": draws,
                "lease_round_trips_per_reservation": (
                    round(self.round_trips / draws, 4) if draws else None),
                "lease_refusals": self.refusals,
                "lease_error": self.last_error,
                # True: calls past this lease are refused without asking the store
                # until a probe (the timer's next round) reaches it again.
                "lease_store_down": self._down_locked(now),
                "fleet_leased_usd": self._last.get("leased_usd"),
                "fleet_free_usd": self._last.get("free_usd"),
                "fleet_active_leases": self._last.get("active"),
            }


__all__ = [
    "DEFAULT_SURPLUS_SHARE", "LEASE_TYPE", "Draw", "FleetLease", "LeaseStore",
    "LeaseStoreDown", "apply_acquire", "apply_release", "check_lease_request",
    "empty_lease_doc", "expire_leases", "grant_size", "lease_answer", "lease_doc_problem",
    "lease_row_name", "lease_totals", "surplus_room",
]
