"""Budgets per key: ``Budget(name, cap_usd, per="customer")`` gives every distinct
value of the `per` attribute(s) its own cap, window, alerts and refusals, fleet-wide.

Where a key's spend lives:

- **This writer, today** (`KeyBook`): integer nano-USD per key, per per-key budget.
  A writer's entry carries, under ``by_key``, ``{budget: {key: usd}}`` for the keys
  it saw that day: at most ``BudgetConfig.max_keys_per_budget`` keys per budget; the
  rest fold into one ``"(overflow)"`` item there (the entry grows with the keys the
  writer saw, never with all keys). Beyond the bound a key is still known exactly
  in memory (up to ``EXTRA_FACTOR`` times the bound), and always counts toward its
  own cap through its lease (below): never silently $0.
- **The fleet** (`KeyFleet`): the sum of the stored entries' ``by_key`` over the
  budget's window (every writer's rows of the earlier days, read once a day; the
  other writers' rows of today, read at most every `refresh_s`), plus this writer's
  own today. That is what alerts, `meter.budget()` and ``top_keys`` show, and what
  a key's lease is told the fleet has seen (its ``seen_usd``).
- **Hard caps** (`KeyLeases`): a hard per-key budget's key is a fleet lease of its
  own, row ``budget_lease/lease_{budget}~{hash}_{window}`` (`hash`: 16 hex digits of
  the key's SHA-256), created when a call for that key is first reserved in a
  window and given back when idle: rows exist only for keys used. The escrow
  invariant of `otel_budget.leases` holds per key, so one customer is refused across
  the fleet while another passes.

A call without a `per` attribute is not free: it counts under the value None there
(shown ``"(unset)"``). Alerts are claimed once per (budget, key, window, ratio):
``sibling_nudge`` rows named ``budget_alert_{budget}~{hash}_{window}_{pct}``.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import logging
import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import date, datetime
from typing import Any

from . import ledger, money
from .alerts import build_nudge
from .budgets import Budget
from .errors import BudgetError
from .leases import FleetLease
from .stores import layout
from .stores.base import SummingStore
from .stores.keysums import add_entry_keys, sum_entry_keys
from .stores.layout import KEY_FIELD
from .stores.layout import KEY_SEP as SEP

_log = logging.getLogger("otel_budget")

#: The item of a writer entry's by_key that sums the keys beyond the bound.
OVERFLOW_KEY = "(overflow)"
#: How a key's missing attribute (None) is shown.
UNSET = "(unset)"
#: Keys known exactly in memory, per budget per day, as a multiple of the entry bound.
EXTRA_FACTOR = 10
#: Claims of per-key alerts tried per store round (a wave of keys crossing at once
#: is claimed over the next rounds instead of holding up this one).
MAX_CLAIMS_PER_ROUND = 200
TOP_KEYS = 10
TOP_KEYS_TTL_S = 1.0


# --- keys ---------------------------------------------------------------------------


def _printable(value: Any) -> Any:
    """A value fit for a JSON key stored in PostgreSQL (jsonb refuses NUL and lone
    surrogates): unfit text is replaced by a stable, hashed stand-in."""
    if isinstance(value, str):
        if "\x00" in value or any(0xD800 <= ord(c) <= 0xDFFF for c in value):
            digest = hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:16]
            return f"(unprintable:{digest})"
        return value
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if isinstance(value, tuple):
        return [_printable(v) for v in value]
    return value


def key_json(values: Sequence[Any]) -> str:
    """A key's canonical text: the JSON list of its values in `per`'s order."""
    values = tuple(values)
    try:
        return _key_json(values)
    except TypeError:  # unhashable: not cached
        return _key_json.__wrapped__(values)


@functools.lru_cache(maxsize=65_536)
def _key_json(values: tuple[Any, ...]) -> str:
    # Cached: every recorded and reserved call of a per-key budget asks (json.dumps
    # was a third of a reservation's cost).
    return json.dumps([_printable(v) for v in values], separators=(",", ":"),
                      ensure_ascii=False)


def key_hash(kjson: str) -> str:
    return hashlib.sha256(kjson.encode("utf-8")).hexdigest()[:16]


def key_budget_name(budget: str, kjson: str) -> str:
    """The name a key goes by in lease and alert rows: ``{budget}~{hash}``."""
    return f"{budget}{SEP}{key_hash(kjson)}"


def key_dict(budget: Budget, kjson: str) -> dict[str, Any]:
    per = budget.per or ()
    try:
        values = json.loads(kjson)
    except ValueError:
        values = None
    if not isinstance(values, list) or len(values) != len(per):
        return {name: None for name in per}
    return dict(zip(per, values, strict=True))


def key_label(key: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={UNSET if v is None else v}" for k, v in key.items())


# --- this writer's spend per key, today -----------------------------------------------------


class KeyBook:
    """This process's spend per key of each per-key budget, for the day it is on
    (the meter's day, passed in). Thread-safe; one lock, held for a dict update."""

    def __init__(self, budgets: Sequence[Budget], *, max_keys: int) -> None:
        self.budgets = tuple(b for b in budgets if b.per is not None)
        self._max = max_keys
        self._lock = threading.Lock()
        self._day: date | None = None
        self._start(None)
        #: Fields of days that ended, until their final entry has been built.
        self._closed: dict[str, dict[str, dict[str, float]]] = {}

    def _start(self, day: date | None) -> None:
        self._day = day
        n = len(self.budgets)
        self._keys: list[dict[str, int]] = [{} for _ in range(n)]
        self._extra: list[dict[str, int]] = [{} for _ in range(n)]
        self._overflow = [0] * n  # beyond the in-memory bound too

    def add(self, nanos: int, attributes: Mapping[str, Any] | None, day: date) -> None:
        """Count a recorded call (attributes already validated)."""
        for index, budget in enumerate(self.budgets):
            if not budget.matches(attributes):
                continue
            values = budget.key_of(attributes)
            assert values is not None
            kjson = key_json(values)
            with self._lock:
                if day != self._day:
                    self._roll_locked(day)
                keys = self._keys[index]
                if kjson in keys:
                    keys[kjson] += nanos
                elif len(keys) < self._max:
                    keys[kjson] = nanos
                else:
                    extra = self._extra[index]
                    if kjson in extra:
                        extra[kjson] += nanos
                    elif len(extra) < self._max * EXTRA_FACTOR:
                        extra[kjson] = nanos
                    else:
                        self._overflow[index] += nanos

    def _roll_locked(self, day: date) -> None:
        if self._day is not None and day > self._day:
            self._closed[self._day.isoformat()] = self._field_locked()
            # Only the last few closed days are waited for (their final entries are
            # written at the next store round).
            for old in sorted(self._closed)[:-3]:
                del self._closed[old]
        elif self._day is not None and day < self._day:
            return  # a clock step back: stay on the later day
        self._start(day)

    def _field_locked(self) -> dict[str, dict[str, float]]:
        out: dict[str, dict[str, float]] = {}
        for index, budget in enumerate(self.budgets):
            # Integer nanos / 1e9 is the float nearest the exact amount already (what
            # from_nanos's rounding gives, at a third of the cost for 10,000 keys).
            per_usd = money.NANOS_PER_USD
            items = {k: n / per_usd for k, n in self._keys[index].items()}
            folded = sum(self._extra[index].values()) + self._overflow[index]
            if folded:
                items[OVERFLOW_KEY] = money.from_nanos(folded)
            if items:
                out[budget.name] = items
        return out

    def entry_field(self, day: str) -> dict[str, dict[str, float]] | None:
        """The ``by_key`` field of this writer's entry for `day` (None: no such spend)."""
        with self._lock:
            if self._day is not None and day == self._day.isoformat():
                field = self._field_locked()
            else:
                field = self._closed.get(day) or {}
        return field or None

    def own_usd(self, budget: Budget, kjson: str, day: date) -> float:
        """This writer's spend on the key today (0 beyond the in-memory bound: such a
        key's spend is then counted by its lease only)."""
        index = self.budgets.index(budget)
        with self._lock:
            if day != self._day:
                return 0.0
            nanos = self._keys[index].get(kjson)
            if nanos is None:
                nanos = self._extra[index].get(kjson, 0)
        return money.from_nanos(nanos)

    def own_keys(self, budget: Budget, day: date) -> dict[str, int]:
        index = self.budgets.index(budget)
        with self._lock:
            if day != self._day:
                return {}
            return {**self._extra[index], **self._keys[index]}

    def only_unset(self, day: date) -> list[str]:
        """The budgets every call of which, today, lacked a `per` attribute (all counted
        under the "(unset)" key: a typo in `per`, or calls not tagged)."""
        with self._lock:
            if day != self._day:
                return []
            out = []
            for index, budget in enumerate(self.budgets):
                keys = self._keys[index]
                unset = key_json((None,) * len(budget.per or ()))
                if keys and set(keys) == {unset} and not self._extra[index]:
                    out.append(budget.name)
            return out

    def keys_today(self) -> dict[str, int]:
        """Keys per budget in this writer's entry today (health, tests)."""
        with self._lock:
            return {b.name: len(self._keys[i]) for i, b in enumerate(self.budgets)}

    def after_fork_in_child(self) -> None:
        """What the parent counted is the parent's to checkpoint."""
        self._lock = threading.Lock()
        self._closed = {}
        self._start(self._day)


# --- the fleet's spend per key ---------------------------------------------------------------


def read_key_sums(store: Any, days: Sequence[str], budgets: Sequence[str],
                  exclude_writer: str = "") -> tuple[dict[str, dict[str, float]], list[str]]:
    """Each budget's spend per key over the writer rows of `days` (leaving out the
    rows of `exclude_writer`), and the rows left out as malformed: summed by the
    store where it can (SummingStore.key_sums), else here over its entries."""
    if not days or not budgets:
        return {}, []
    if isinstance(store, SummingStore):
        return store.key_sums(days, budgets, exclude_writer=exclude_writer)
    return sum_entry_keys(store.writer_entries(list(days), breakdown=False), budgets,
                          exclude_writer=exclude_writer)


class KeyFleet:
    """The fleet's spend per key, as last read: the earlier days of each budget's
    window (read once a day) and today's other writers (read at most every
    `refresh_s`). Swapped whole under a lock."""

    def __init__(self, budgets: Sequence[Budget], *, refresh_s: float) -> None:
        self.budgets = tuple(b for b in budgets if b.per is not None)
        self.refresh_s = refresh_s
        self._lock = threading.Lock()
        self._day: date | None = None
        self._prior: dict[str, dict[str, float]] = {}
        self._today: dict[str, dict[str, float]] = {}
        self._read_at = -math.inf
        self._prior_read = False
        #: Writer rows whose by_key was malformed at the last read (named, not summed).
        self.quarantined: tuple[str, ...] = ()
        self.reads = 0
        self.last_error: str | None = None

    def due(self, day: date) -> bool:
        with self._lock:
            return (day != self._day or not self._prior_read
                    or time.monotonic() - self._read_at >= self.refresh_s)

    def invalidate(self) -> None:
        """Make the next store round read the fleet's keys (`meter.checkpoint()`)."""
        with self._lock:
            self._read_at = -math.inf

    def refresh(self, store: Any, day: date, writer_id: str) -> None:
        """One read of the store (two on a new day). Raises what the store raises."""
        with self._lock:
            need_prior = day != self._day or not self._prior_read
        names = [b.name for b in self.budgets]
        bad: list[str] = []
        prior: dict[str, dict[str, float]] | None = None
        if need_prior:
            prior = {}
            # One read per period: the budgets of a period share their earlier days.
            for period in sorted({b.period for b in self.budgets}):
                days = [d.isoformat() for d in ledger.window_days_before(day, period)]
                sums, left_out = read_key_sums(
                    store, days, [b.name for b in self.budgets if b.period == period])
                prior.update(sums)
                bad.extend(left_out)
        # This writer's today is its book's, exact and newer than its stored entry.
        today, left_out = read_key_sums(store, [day.isoformat()], names, writer_id)
        bad.extend(left_out)
        with self._lock:
            if prior is not None:
                self._prior = prior
                self._prior_read = True
            self._day = day
            self._today = today
            self._read_at = time.monotonic()
            self.quarantined = tuple(sorted(set(bad)))
            self.reads += 1
            self.last_error = None

    def after_fork_in_child(self) -> None:
        self._lock = threading.Lock()

    def others_usd(self, budget: str, kjson: str, day: date) -> float:
        with self._lock:
            if day != self._day:
                return 0.0
            return (self._prior.get(budget, {}).get(kjson, 0.0)
                    + self._today.get(budget, {}).get(kjson, 0.0))

    def others_keys(self, budget: str, day: date) -> dict[str, float]:
        with self._lock:
            if day != self._day:
                return {}
            out = dict(self._prior.get(budget, {}))
            for key, usd in self._today.get(budget, {}).items():
                out[key] = out.get(key, 0.0) + usd
            return out


# --- the whole: what the meter composes -----------------------------------------------------


class PerKey:
    """Per-key budgets for one meter: the book (hot path), the fleet's sums, the
    hard budgets' key leases and the alerts per key."""

    def __init__(
        self, budgets: Sequence[Budget], *, max_keys: int, store: Any,
        writer_id: Callable[[], str], day: Callable[[], date], now: Callable[[], datetime],
        window_of: Callable[[str], str], ttl_s: float, idle_s: float, refresh_s: float,
        sibling: str, instance_id: str, submit_nudge: Callable[[dict[str, Any]], object],
        first_wait_s: float = 5.0,
        watch_claim: Callable[[str, dict[str, Any] | None], None] | None = None,
    ) -> None:
        self.book = KeyBook(budgets, max_keys=max_keys)
        self.fleet = KeyFleet(budgets, refresh_s=refresh_s)
        self.budgets = self.book.budgets
        self._by_name = {b.name: b for b in self.budgets}
        self._max = max_keys
        self._store = store
        self._writer_id = writer_id
        self._day = day
        self._now = now
        self._window_of = window_of
        self._ttl_s = ttl_s
        self._idle_s = idle_s
        self._sibling = sibling
        self._instance_id = instance_id
        self._submit = submit_nudge
        #: The tracker's claim watch (delivery recorded, takeover when undelivered):
        #: given each claim this writer made (with its nudge) or found made.
        self._watch_claim = watch_claim
        self._lock = threading.Lock()
        #: key budget name -> (parent, key json, the key budget).
        self._resolved: dict[str, tuple[Budget, str, Budget]] = {}
        #: (budget, key json) -> its name in _resolved (no hashing per call).
        self._names: dict[tuple[str, str], str] = {}
        self._leases: dict[str, FleetLease] = {}
        #: key lease name -> when a reservation last looked it up (monotonic).
        self._touched: dict[str, float] = {}
        self._claimed: set[tuple[str, str, str, float]] = set()
        self.claim_error: str | None = None
        self._closed = False
        self._first_started = False
        self._first_read = threading.Event()
        self._first_wait_s = first_wait_s
        self._warned_unset: set[tuple[str, date]] = set()
        self._top: dict[tuple[str, int], tuple[float, tuple[list[dict[str, Any]], int,
                                                            float]]] = {}

    # --- the hot path: only called when a per-key budget exists ------------------------

    def add(self, nanos: int, attributes: Mapping[str, Any] | None, day: date) -> None:
        self.book.add(nanos, attributes, day)

    # --- keys as budgets (for the reservation book) -------------------------------------

    @staticmethod
    def owns(name: str) -> bool:
        return SEP in name

    def resolve(self, budget: Budget, attributes: Mapping[str, Any] | None) -> Budget:
        """The budget a call's key is checked against: a copy of `budget` named
        ``{budget}~{hash}`` (its lease's name), whose spend is the key's."""
        values = budget.key_of(attributes)
        if values is None:
            return budget
        kjson = key_json(values)
        with self._lock:
            name = self._names.get((budget.name, kjson))
            known = self._resolved.get(name) if name is not None else None
            if known is not None:
                return known[2]
        name = key_budget_name(budget.name, kjson)
        with self._lock:
            known = self._resolved.get(name)
            if known is not None:
                return known[2]
            keyed = copy.copy(budget)
            object.__setattr__(keyed, "name", name)
            object.__setattr__(keyed, "per", None)
            if len(self._resolved) >= 4 * self._max:
                # Forget keys not holding a lease (a new call resolves them again).
                self._resolved = {n: v for n, v in self._resolved.items() if n in self._leases}
                self._names = {(v[0].name, v[1]): n for n, v in self._resolved.items()}
            self._resolved[name] = (budget, kjson, keyed)
            self._names[(budget.name, kjson)] = name
            return keyed

    def _parent(self, name: str) -> tuple[Budget, str] | None:
        with self._lock:
            known = self._resolved.get(name)
        return (known[0], known[1]) if known is not None else None

    def key(self, name: str) -> dict[str, Any] | None:
        known = self._parent(name)
        return key_dict(known[0], known[1]) if known is not None else None

    def spend(self, name: str) -> float:
        """The key's spend in its window, fleet-wide as known now."""
        known = self._parent(name)
        if known is None:
            return 0.0
        return self.key_spend(known[0], known[1])

    def key_spend(self, budget: Budget, kjson: str) -> float:
        day = self._day()
        return money.round_usd(self.fleet.others_usd(budget.name, kjson, day)
                                + self.book.own_usd(budget, kjson, day))

    def window(self, name: str) -> str:
        known = self._parent(name)
        if known is None:
            raise KeyError(name)
        return self._window_of(known[0].name)

    def lease(self, name: str) -> FleetLease | None:
        """The key's fleet lease (created on first use; None for a soft budget)."""
        with self._lock:
            lease = self._leases.get(name)
            if lease is not None or self._closed:
                if lease is not None:
                    self._touched[name] = time.monotonic()
                return lease
            known = self._resolved.get(name)
            if known is None or not known[0].hard:
                return None
            parent, kjson, _ = known
            lease = FleetLease(
                budget=name, cap_usd=parent.cap_usd, store=self._store,
                writer_id=self._writer_id,
                window_of=lambda: self._window_of(parent.name),
                seen_of=lambda: self.key_spend(parent, kjson),
                ttl_s=self._ttl_s, idle_s=self._idle_s,
            )
            self._leases[name] = lease
            self._touched[name] = time.monotonic()
            return lease

    def budget_named(self, name: str) -> Budget | None:
        with self._lock:
            known = self._resolved.get(name)
        return known[2] if known is not None else None

    def leases(self) -> list[FleetLease]:
        with self._lock:
            return list(self._leases.values())

    # --- store rounds ------------------------------------------------------------------

    def on_round(self, interval_s: float, *, store_suspect: bool) -> None:
        """Renew, report or give back the key leases (dropping the ones given back),
        re-read the fleet's keys when due, and claim the alerts that came due."""
        for name, lease in list(self._leases_items()):
            try:
                lease.on_round(interval_s, store_suspect=store_suspect)
            except Exception as exc:
                _log.warning("otel_budget: renewing the lease on %r failed: %s", name,
                             exc if isinstance(exc, BudgetError) else type(exc).__name__)
            if lease.holds_nothing():
                with self._lock:
                    # Dropped only when untouched for a while: a reservation that just
                    # looked it up must find it still here. One dropped anyway is
                    # closed, so it can never take a lease nobody renews (a call
                    # holding it is refused: the safe side).
                    quiet = time.monotonic() - self._touched.get(name, 0.0) >= 2 * self._idle_s
                    if self._leases.get(name) is lease and quiet and lease.holds_nothing():
                        del self._leases[name]
                        self._touched.pop(name, None)
                        drop = True
                    else:
                        drop = False
                if drop:
                    lease.close()
        day = self._day()
        self._warn_unset(day)
        with self._lock:
            first, self._first_started = not self._first_started, True
        if first:
            # The first read (start()'s round) runs beside the round: enforcement
            # does not wait on it (each key's lease row holds the fleet's use), and
            # start() need not wait on summing every key of the window.
            threading.Thread(target=self._first_refresh, args=(day,), daemon=True,
                             name="OtelBudgetKeys").start()
            return
        self._first_read.wait(self._first_wait_s)
        if self.fleet.due(day):
            self._refresh(day)

    def _warn_unset(self, day: date) -> None:
        for name in self.book.only_unset(day):
            if (name, day) in self._warned_unset:
                continue
            self._warned_unset.add((name, day))
            budget = self._by_name[name]
            _log.warning(
                "otel_budget: budget %r is per %s, which no call recorded today carries: "
                "every call counts under its (unset) key (a typo in `per`, or calls not "
                "tagged?)", name, ", ".join(repr(p) for p in budget.per or ()))

    def _first_refresh(self, day: date) -> None:
        try:
            self._refresh(day)
        finally:
            self._first_read.set()

    def _refresh(self, day: date) -> None:
        try:
            self.fleet.refresh(self._store, day, self._writer_id())
        except Exception as exc:
            self.fleet.last_error = (str(exc) if isinstance(exc, BudgetError)
                                     else type(exc).__name__)[:300]
            if not self._closed:
                _log.warning("otel_budget: reading the fleet's spend per key failed: %s",
                             self.fleet.last_error)
            return
        # The ranking kept for the gauges is of the keys as read before.
        self._top.clear()
        self._claim_alerts(day)

    def wait_first_read(self) -> bool:
        """Wait (at most the start timeout) for the first read of the fleet's keys, once
        it has begun: what `meter.budget()` and `budgets()` show includes the rest of
        the fleet from then on. True when it has completed."""
        with self._lock:
            started = self._first_started
        return started and self._first_read.wait(self._first_wait_s)

    def _leases_items(self) -> list[tuple[str, FleetLease]]:
        with self._lock:
            return list(self._leases.items())

    def key_spends(self, budget: Budget, day: date | None = None) -> dict[str, float]:
        """Every known key's spend in the budget's window (fleet + this writer)."""
        day = day or self._day()
        out = self.fleet.others_keys(budget.name, day)
        for key, nanos in self.book.own_keys(budget, day).items():
            out[key] = out.get(key, 0.0) + nanos / money.NANOS_PER_USD
        out.pop(OVERFLOW_KEY, None)  # no key's: the keys folded there count by their leases
        return out

    def _claim_alerts(self, day: date) -> None:
        due: list[tuple[Budget, str, str, float, float]] = []
        for budget in self.budgets:
            if not budget.alert_ratios:
                continue
            window = self._window_of(budget.name)
            floor = min(budget.alert_ratios) * budget.cap_usd
            for kjson, spend in self.key_spends(budget, day).items():
                if spend < floor - money.USD_EPSILON:
                    continue
                for ratio in budget.alert_ratios:
                    if money.threshold_reached(spend, ratio, budget.cap_usd) and \
                            (budget.name, window, kjson, ratio) not in self._claimed:
                        due.append((budget, window, kjson, ratio, spend))
        current = {(b.name, self._window_of(b.name)) for b in self.budgets}
        self._claimed = {c for c in self._claimed if (c[0], c[1]) in current}
        for budget, window, kjson, ratio, spend in due[:MAX_CLAIMS_PER_ROUND]:
            name = layout.nudge_row_name(key_budget_name(budget.name, kjson), window, ratio)
            nudge = build_nudge(
                sibling=self._sibling, budget=budget, window=window, ratio=ratio,
                spend_usd=spend, instance_id=self._instance_id, now=self._now(),
                day=day.isoformat(), row_name=name, claimed_by=self._writer_id())
            nudge["key"] = key_dict(budget, kjson)
            nudge["per"] = list(budget.per or ())
            try:
                inserted = self._store.insert_if_absent(layout.NUDGE_TYPE, name, nudge)
            except Exception as exc:
                self.claim_error = f"{name}: " + (str(exc) if isinstance(exc, BudgetError)
                                                  else type(exc).__name__)[:300]
                _log.warning("otel_budget: claiming %s failed (will retry): %s", name,
                             self.claim_error)
                continue
            self.claim_error = None
            self._claimed.add((budget.name, window, kjson, ratio))
            if self._watch_claim is not None:
                self._watch_claim(name, nudge if inserted else None)
            if inserted:
                _log.info("otel_budget: %s%% of budget %r for %s (%s) reached; nudging %s",
                          layout.ratio_pct(ratio), budget.name,
                          key_label(nudge["key"]), window, self._sibling)
                self._submit(nudge)

    # --- reading -------------------------------------------------------------------------

    def key_state(self, budget: Budget, attributes: Mapping[str, Any] | None) -> dict[str, Any]:
        """The fields of one key's state (`meter.budget(name, attributes)`)."""
        values = budget.key_of(attributes)
        assert values is not None
        kjson = key_json(values)
        spend = self.key_spend(budget, kjson)
        window = self._window_of(budget.name)
        name = key_budget_name(budget.name, kjson)
        claimed = sorted(r for (b, w, k, r) in self._claimed
                         if b == budget.name and w == window and k == kjson)
        with self._lock:
            lease = self._leases.get(name)
        out: dict[str, Any] = {
            "key": key_dict(budget, kjson), "spend_usd": spend,
            "remaining_usd": money.remaining_usd(spend, budget.cap_usd),
            "utilization": money.utilization(spend, budget.cap_usd),
            "alerts_sent": claimed, "lease_row": name,
        }
        if lease is not None:
            info = lease.describe()
            out["leased_usd"] = info["leased_usd"]
            out["lease"] = info
        return out

    def top_keys(self, budget: Budget, limit: int = TOP_KEYS) -> tuple[list[dict[str, Any]], int,
                                                                        float]:
        """(the `limit` biggest keys in the window, how many keys are known, their sum);
        kept for a second (each gauge of a collection asks, and a window may hold
        10,000 keys)."""
        now = time.monotonic()
        cached = self._top.get((budget.name, limit))
        if cached is not None and now - cached[0] < TOP_KEYS_TTL_S:
            return copy.deepcopy(cached[1])
        result = self._top_keys(budget, limit)
        self._top[(budget.name, limit)] = (now, result)
        return copy.deepcopy(result)

    def _top_keys(self, budget: Budget, limit: int) -> tuple[list[dict[str, Any]], int, float]:
        spends = self.key_spends(budget)
        ranked = sorted(spends.items(), key=lambda kv: (-kv[1], kv[0]))[:limit]
        rows = [{"key": key_dict(budget, k), "spend_usd": money.round_usd(usd),
                 "cap_usd": budget.cap_usd,
                 "remaining_usd": money.remaining_usd(usd, budget.cap_usd),
                 "utilization": money.utilization(usd, budget.cap_usd)} for k, usd in ranked]
        return rows, len(spends), money.round_usd(sum(spends.values()))

    def describe(self) -> dict[str, Any]:
        return {"keys_today": self.book.keys_today(), "key_leases": len(self._leases_items()),
                "only_unset_key": self.book.only_unset(self._day()),
                "fleet_reads": self.fleet.reads, "fleet_error": self.fleet.last_error,
                "quarantined": list(self.fleet.quarantined), "claim_error": self.claim_error}

    # --- lifecycle -------------------------------------------------------------------------

    def close(self) -> None:
        with self._lock:
            self._closed = True
            leases = list(self._leases.values())
            self._leases = {}
        for lease in leases:
            try:
                lease.close()
            except Exception as exc:  # it expires after its TTL instead
                _log.warning("otel_budget: giving back the lease on %r failed: %s",
                             lease.budget, type(exc).__name__)

    def after_fork_in_child(self) -> None:
        self._lock = threading.Lock()
        self.fleet.after_fork_in_child()
        self.book.after_fork_in_child()
        self._leases = {}  # the parent's leases stay the parent's
        self._touched = {}
        self._first_started = False  # the child's first round reads for itself
        self._first_read = threading.Event()
        self._claimed = set()


__all__ = [
    "EXTRA_FACTOR", "KEY_FIELD", "OVERFLOW_KEY", "UNSET", "KeyBook", "KeyFleet", "PerKey",
    "add_entry_keys", "key_budget_name", "key_dict", "key_hash", "key_json", "key_label",
]
