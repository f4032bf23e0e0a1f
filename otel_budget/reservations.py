"""Hard budgets: a guard and a thread-safe reservation book.

Independent of the meter: the book is given the budgets, a ``spend_of(name)`` callable
(a budget's live spend in its window), and a ``record(usd, attributes)`` callable used
when a reservation is settled. One lock makes "check the cap, then hold the amount" atomic, so concurrent
callers in one process cannot all pass the check and overshoot together.

Cap semantics are those of :func:`otel_budget.money.passes_cap`: landing exactly on the
cap is allowed, exceeding it by more than 1e-9 USD is not, and a zero-cost call is always
allowed, even past the cap.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from types import TracebackType
from typing import Any, Protocol

from . import money
from .budgets import Budget
from .errors import BudgetError, BudgetExceeded, LeaseStoreDown
from .leases import Draw, FleetLease
from .money import UsdAmount
from .redact import describe_exception

_log = logging.getLogger("otel_budget")
#: reserve(): store round trips tried before giving up when other callers keep
#: drawing the new chunk first.
RESERVE_ATTEMPTS = 5

Attributes = Mapping[str, Any]
RecordFn = Callable[[float, Attributes | None], object]


def would_pass_cap(
    spend_usd: float, reserved_usd: float, estimate_usd: float, cap_usd: float
) -> bool:
    """True when spending `estimate_usd` on top of spend and reservations passes the cap."""
    if estimate_usd <= 0.0:
        return False
    return money.passes_cap(spend_usd + reserved_usd + estimate_usd, cap_usd)


ON_ERROR = ("record", "release")


class KeyedBudgets(Protocol):
    """Per-key budgets (otel_budget.perkey.PerKey): a call's key checked as a budget
    of its own, named ``{budget}~{hash}``."""

    def resolve(self, budget: Budget, attributes: Attributes | None) -> Budget: ...

    def lease(self, name: str) -> FleetLease | None: ...

    def key(self, name: str) -> dict[str, Any] | None: ...

    def budget_named(self, name: str) -> Budget | None: ...

#: Marks spend that is not a provider's billed usage (the DESIGN's "settlement marks").
SETTLEMENT_ATTR = "otel_budget.settlement"
UNSETTLED = "unsettled"
ESTIMATED = "estimated"

# The provider SDKs' errors that mean the request got no billable response: an HTTP
# error status, or no connection at all. Matched by class name and top-level module
# so neither SDK has to be installed (their classes report `anthropic`/`openai` as
# their module). httpx's (and httpx2's, the SDKs' transport) connect errors never
# reached the server either.
_CONNECT_ERRORS = frozenset({"ConnectError", "ConnectTimeout"})
_NOT_BILLED = {
    "anthropic": frozenset({"APIStatusError", "APIConnectionError", "APITimeoutError"}),
    "openai": frozenset({"APIStatusError", "APIConnectionError", "APITimeoutError"}),
    "httpx": _CONNECT_ERRORS,
    "httpx2": _CONNECT_ERRORS,
}


def provider_did_not_bill(exc: BaseException) -> bool:
    """True for an exception that means the provider did not bill the call: the
    `anthropic`/`openai` SDKs' HTTP status errors (APIStatusError and subclasses) and
    connection errors (APIConnectionError, APITimeoutError), and httpx's or httpx2's
    ConnectError/ConnectTimeout. A status error with a status below 400 is not one: the
    SDKs raise it for an error event inside a stream that had started (200), which may
    be billed. A read timeout (APITimeoutError) may follow a call the provider finished
    and billed; the SDKs give no way to tell, and it is released like the rest."""
    for cls in type(exc).__mro__:
        names = _NOT_BILLED.get(cls.__module__.partition(".")[0])
        if names is None or cls.__name__ not in names:
            continue
        if cls.__name__ == "APIStatusError":
            status = getattr(exc, "status_code", None)
            if isinstance(status, int) and not isinstance(status, bool) and status < 400:
                return False
        return True
    return False


class ReservationBook:
    """Holds in-flight maximum costs against every hard budget they fall under.

    `spend_of(name)` is the budget's live spend in its current window and
    `window_of(name)` its window id; `check_amount(value, name)` validates a USD
    amount (the meter's one validation). One lock makes "check every cap, then hold
    the amount" atomic, so concurrent callers in one process cannot all pass the
    check and overshoot together."""

    def __init__(
        self,
        *,
        budgets: Sequence[Budget],
        spend_of: Callable[[str], float],
        window_of: Callable[[str], str],
        record: RecordFn,
        check_amount: Callable[[object, str], float],
        leases: Mapping[str, FleetLease] | None = None,
        on_refusal: Callable[[BudgetExceeded], None] | None = None,
        day: Callable[[], object] | None = None,
        keyed: KeyedBudgets | None = None,
    ) -> None:
        self._hard = tuple(b for b in budgets if b.hard)
        #: Per-key budgets' keys (None without a per-key budget: nothing to resolve).
        self._keyed = keyed
        # Unsettled spend counts toward soft budgets too: shown per budget.
        self._all = tuple(budgets)
        self._day = day
        self._unsettled_day: object = None
        self._unsettled_nanos = 0
        #: budget name -> (window, nanos) of unsettled spend in that window.
        self._unsettled_by_budget: dict[str, tuple[str, int]] = {}
        #: Told of every refusal guard/reserve raise (the meter's RefusalLog); the
        #: meter's areserve calls `refused` itself.
        self._on_refusal = on_refusal
        #: budget name -> this writer's lease, for the budgets with enforce="fleet".
        self._leases: dict[str, FleetLease] = dict(leases or {})
        self._spend_of = spend_of
        self._window_of = window_of
        self._record = record
        self._check_amount = check_amount
        # Re-entrant: `record` may call back into held_usd() (e.g. a health snapshot).
        self._lock = threading.RLock()
        self._held: dict[str, float] = {}
        self._open: dict[int, tuple[float, tuple[str, ...], tuple[Draw, ...]]] = {}
        self._next_id = 0

    def held_usd(self, budget: str | None = None) -> float:
        """USD held by open reservations (against one budget, or in all)."""
        with self._lock:
            if budget is None:
                return money.round_usd(sum(held[0] for held in self._open.values()))
            return money.round_usd(self._held.get(budget, 0.0))

    def unsettled_usd(self, budget: str | None = None) -> float:
        """Spend recorded at a reservation's maximum because an exception closed it
        (``otel_budget.settlement="unsettled"``): this process's today (`day()`), or
        within one budget's current window."""
        with self._lock:
            if budget is None:
                if self._day is not None and self._unsettled_day != self._day():
                    return 0.0
                return self._unsettled_nanos / money.NANOS_PER_USD
            held = self._unsettled_by_budget.get(budget)
            if held is None or held[0] != self._window_of(budget):
                return 0.0
            return held[1] / money.NANOS_PER_USD

    def _note_unsettled(self, usd: float, attributes: Attributes | None) -> None:
        nanos = round(usd * money.NANOS_PER_USD)
        with self._lock:
            if self._day is not None:
                today = self._day()
                if today != self._unsettled_day:
                    self._unsettled_day, self._unsettled_nanos = today, 0
            self._unsettled_nanos += nanos
            for budget in self._all:
                if not budget.matches(attributes):
                    continue
                window = self._window_of(budget.name)
                held = self._unsettled_by_budget.get(budget.name)
                before = held[1] if held is not None and held[0] == window else 0
                self._unsettled_by_budget[budget.name] = (window, before + nanos)

    def open_reservations(self) -> int:
        with self._lock:
            return len(self._open)

    def guard(self, estimated_usd: UsdAmount = 0.0, attributes: Attributes | None = None) -> None:
        """Raise BudgetExceeded if any hard budget covering `attributes` would pass its
        cap with spend + held reservations + the estimate. A fleet budget also needs
        its lease to cover the estimate (asking the store for more if it does not)."""
        estimate = self._check_amount(estimated_usd, "estimated_usd")
        budgets = self._covering(attributes)
        try:
            with self._lock:
                self._check(estimate, budgets)
            if estimate <= 0.0:
                return
            for budget in budgets:
                lease = self._lease(budget.name)
                if lease is not None and lease.remaining() < estimate - money.USD_EPSILON:
                    self.fill([lease], estimate)
        except BudgetExceeded as exc:
            self.refused(exc)
            raise

    def reserve(self, max_usd: UsdAmount, attributes: Attributes | None = None, *,
                on_error: str = "record") -> Reservation:
        """Check the caps and hold `max_usd` in one step; raise BudgetExceeded if it
        would pass one. See :class:`Reservation`. A fleet budget's hold is drawn from
        this writer's lease; when the lease cannot cover it, one store round trip asks
        for a new chunk (outside the book's lock)."""
        amount, budgets = self.prepare(max_usd, attributes, on_error)
        try:
            for _ in range(RESERVE_ATTEMPTS):
                result = self.try_reserve(amount, budgets, attributes, on_error=on_error)
                if isinstance(result, Reservation):
                    return result
                self.fill(result, amount)
            raise self.refusal(budgets, amount)
        except BudgetExceeded as exc:
            self.refused(exc)
            raise

    def refused(self, exc: BudgetExceeded) -> None:
        """Tell the refusal hook (it must not turn a refusal into another error)."""
        hook = self._on_refusal
        if hook is None:
            return
        try:
            hook(exc)
        except Exception as hook_exc:  # pragma: no cover - RefusalLog.record never raises
            _log.warning("otel_budget: recording a refusal failed: %s", type(hook_exc).__name__)

    def refusal(self, budgets: Sequence[Budget], amount: float) -> BudgetExceeded:
        """The refusal of the first fleet budget among `budgets`."""
        return self._lease_refusal(next(b for b in budgets if self._lease(b.name) is not None),
                                   amount)

    def _lease(self, name: str) -> FleetLease | None:
        lease = self._leases.get(name)
        if lease is None and self._keyed is not None:
            lease = self._keyed.lease(name)
        return lease

    def _named(self, name: str) -> Budget:
        for budget in self._hard:
            if budget.name == name:
                return budget
        keyed = self._keyed.budget_named(name) if self._keyed is not None else None
        if keyed is None:
            raise KeyError(name)
        return keyed

    def _key(self, name: str) -> dict[str, Any] | None:
        return self._keyed.key(name) if self._keyed is not None else None

    def prepare(self, max_usd: UsdAmount, attributes: Attributes | None,
                on_error: str) -> tuple[float, tuple[Budget, ...]]:
        amount = self._check_amount(max_usd, "max_usd")
        if on_error not in ON_ERROR:
            raise ValueError(f"on_error must be one of {', '.join(ON_ERROR)}, got {on_error!r}")
        return amount, self._covering(attributes)

    def try_reserve(self, amount: float, budgets: Sequence[Budget],
                    attributes: Attributes | None, *,
                    on_error: str = "record") -> Reservation | list[FleetLease]:
        """Memory only: the reservation, or the leases that need a store round trip
        first (`fill`). Raises BudgetExceeded at once when a cap (or a pool known
        to be short) refuses."""
        with self._lock:
            self._check(amount, budgets)
            draws: list[Draw] = []
            need: list[FleetLease] = []
            if amount > 0.0:
                for budget in budgets:
                    lease = self._lease(budget.name)
                    if lease is None:
                        continue
                    got = lease.try_draw(amount)
                    if isinstance(got, Draw):
                        draws.append(got)
                    elif got is None:
                        need.append(lease)
                    else:
                        for draw in draws:
                            draw.lease.undo_draw(draw)
                        raise self._lease_refusal(budget, amount,
                                                  store_down=lease.store_down)
            if need:
                for draw in draws:
                    draw.lease.undo_draw(draw)
                return need
            self._next_id += 1
            token = self._next_id
            names = tuple(b.name for b in budgets)
            self._open[token] = (amount, names, tuple(draws))
            for name in names:
                self._held[name] = self._held.get(name, 0.0) + amount
        return Reservation(self, token, amount, dict(attributes) if attributes else None,
                           on_error=on_error)

    def fill(self, leases: Sequence[FleetLease], amount: float) -> None:
        """Ask the store for `amount` on each lease (blocking I/O); BudgetExceeded if
        the fleet's pool cannot grant it or the store cannot be reached (a hard cap
        fails safe: only what a lease already holds may be spent)."""
        for lease in leases:
            try:
                granted = lease.acquire(amount)
            except Exception as exc:
                # LeaseStoreDown: a failure already logged, refused without I/O.
                (_log.debug if isinstance(exc, LeaseStoreDown) else _log.warning)(
                    "otel_budget: lease on budget %r: the store did not answer "
                    "(%s); refusing beyond the lease held", lease.budget,
                    describe_exception(exc) if isinstance(exc, BudgetError)
                    else type(exc).__name__)
                budget = self._named(lease.budget)
                raise self._lease_refusal(budget, amount, store_down=True) from None
            if not granted:
                budget = self._named(lease.budget)
                raise self._lease_refusal(budget, amount)

    def _lease_refusal(self, budget: Budget, amount: float, *,
                       store_down: bool = False) -> BudgetExceeded:
        spend = float(self._spend_of(budget.name))
        held = self.held_usd(budget.name)
        window = self._window_of(budget.name)
        exc = BudgetExceeded(
            date=window, daily_spend_usd=money.round_usd(spend), reserved_usd=held,
            estimated_usd=amount, daily_cap_usd=budget.cap_usd, budget=_public(budget.name),
            window=window, key=self._key(budget.name),
        )
        why = ("the store cannot be reached to extend this writer's lease" if store_down
               else "the fleet's leases and spend leave less than that under the cap")
        of_key = f" for {exc.key!r}" if exc.key is not None else ""
        exc.args = (f"budget {exc.budget!r}{of_key} ({window}, enforced across the fleet): "
                    f"${amount:.6f} refused: {why} (cap ${budget.cap_usd:.6f})",)
        return exc

    def _covering(self, attributes: Attributes | None) -> tuple[Budget, ...]:
        keyed = self._keyed
        if keyed is None:
            return tuple(b for b in self._hard if b.covers(attributes))
        # A per-key budget is checked as its call's key: its own cap, spend and lease.
        return tuple(keyed.resolve(b, attributes) if b.per is not None else b
                     for b in self._hard if b.covers(attributes))

    def _check(self, estimate: float, budgets: Sequence[Budget]) -> None:
        for budget in budgets:
            spend = float(self._spend_of(budget.name))
            held = money.round_usd(self._held.get(budget.name, 0.0))
            if would_pass_cap(spend, held, estimate, budget.cap_usd):
                window = self._window_of(budget.name)
                raise BudgetExceeded(
                    date=window, daily_spend_usd=money.round_usd(spend), reserved_usd=held,
                    estimated_usd=estimate, daily_cap_usd=budget.cap_usd,
                    budget=_public(budget.name), window=window, key=self._key(budget.name),
                )

    def _close(self, token: int, actual: float | None, attributes: Attributes | None) -> None:
        with self._lock:
            held = self._open.get(token)
            if held is None:
                raise RuntimeError("this reservation was already settled or cancelled")
            if actual is not None:
                # Record before releasing the hold (both under the lock): a concurrent
                # check sees the amount at least once, never zero times.
                self._record(actual, attributes)
            amount, names, draws = held
            del self._open[token]
            for draw in draws:
                draw.lease.close_draw(draw, actual)
            for name in names:
                left = self._held.get(name, 0.0) - amount
                if left <= money.USD_EPSILON or not self._open:
                    self._held.pop(name, None)  # no float residue once nothing is held
                else:
                    self._held[name] = left


def _public(name: str) -> str:
    """A per-key budget's key goes by ``{budget}~{hash}`` here; refusals name the
    budget (and carry the key)."""
    return name.partition("~")[0]


class Reservation:
    """An amount held against the hard budgets while a call is in flight.

    ``settle(actual_usd)`` records the actual cost and releases the hold; ``cancel()``
    releases it without recording. Leaving the ``with`` block without either records
    the held maximum (the provider may have billed; over-counting is the safe side
    of a cap). An exception leaving the block releases the hold when it says the
    provider did not bill (:func:`provider_did_not_bill`: the SDKs' HTTP status and
    connection errors), or always with ``on_error="release"``; any other exception
    records the maximum marked ``otel_budget.settlement="unsettled"`` (counted by
    :meth:`ReservationBook.unsettled_usd`), so it can be told from billed spend.
    A settled amount always wins.
    """

    def __init__(
        self, book: ReservationBook, token: int, max_usd: float,
        attributes: Attributes | None, *, on_error: str = "record",
    ) -> None:
        self._book = book
        self._token = token
        self.max_usd = max_usd
        self._attributes = attributes
        self.on_error = on_error
        self.settled_usd: float | None = None
        self.closed = False

    @property
    def book(self) -> ReservationBook:
        """The book this reservation is held in."""
        return self._book

    @property
    def attributes(self) -> Attributes | None:
        return self._attributes

    def __repr__(self) -> str:
        state = "open" if not self.closed else f"settled={self.settled_usd!r}"
        return f"Reservation(max_usd={self.max_usd!r}, {state})"

    def settle(self, actual_usd: UsdAmount, attributes: Attributes | None = None) -> float:
        """Record the actual cost (even if above the hold) and release the hold."""
        actual = self._book._check_amount(actual_usd, "actual_usd")
        attrs = attributes if attributes is not None else self._attributes
        self._book._close(self._token, actual, attrs)
        self.settled_usd = actual
        self.closed = True
        return actual

    def cancel(self) -> None:
        """Release the hold without recording anything (the call did not happen)."""
        self._book._close(self._token, None, None)
        self.closed = True

    def close(self, exc: BaseException | None = None) -> None:
        """Settle at the held maximum unless settled or cancelled already. With `exc`
        (the block failed): release the hold when the provider did not bill or
        on_error="release", else settle at the maximum marked "unsettled"."""
        if self.closed:
            return
        if exc is None:
            self.settle(self.max_usd)
        elif self.on_error == "release" or provider_did_not_bill(exc):
            self.cancel()
        else:
            attrs = dict(self._attributes) if self._attributes else {}
            attrs[SETTLEMENT_ATTR] = UNSETTLED
            self.settle(self.max_usd, attrs)
            self._book._note_unsettled(self.max_usd, attrs)

    def __enter__(self) -> Reservation:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close(exc)
