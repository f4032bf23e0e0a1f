"""The hard cap: a guard and a thread-safe reservation book.

Independent of the meter: the book is given a ``spend_now()`` callable (the fleet's spend
today, live), the cap, and a ``record(usd, attributes)`` callable used when a reservation
is settled. One lock makes "check the cap, then hold the amount" atomic, so concurrent
callers in one process cannot all pass the check and overshoot together.

Cap semantics are those of :func:`otel_budget.ledger.passes_cap`: landing exactly on the
cap is allowed, exceeding it by more than 1e-9 USD is not, and a zero-cost call is always
allowed, even past the cap.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

from . import ledger
from .errors import BudgetExceeded

Attributes = Mapping[str, Any]
RecordFn = Callable[[float, Attributes | None], object]


def check_usd(value: object, name: str) -> float:
    """A caller-supplied USD amount: a finite number >= 0 (not a bool or a string)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    amount = float(value)
    if not math.isfinite(amount) or amount < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return amount


def would_pass_cap(
    spend_usd: float, reserved_usd: float, estimate_usd: float, cap_usd: float
) -> bool:
    """True when spending `estimate_usd` on top of spend and reservations passes the cap."""
    if estimate_usd <= 0.0:
        return False
    return ledger.passes_cap(spend_usd + reserved_usd + estimate_usd, cap_usd)


def _utc_day() -> str:
    return datetime.now(UTC).date().isoformat()


class ReservationBook:
    """Holds in-flight maximum costs against the daily cap."""

    def __init__(
        self,
        *,
        spend_now: Callable[[], float],
        cap_usd: float | Callable[[], float],
        record: RecordFn,
        day: Callable[[], str] = _utc_day,
    ) -> None:
        self._spend_now = spend_now
        self._cap = cap_usd if callable(cap_usd) else (lambda: float(cap_usd))
        self._record = record
        self._day = day
        # Re-entrant: `record` may call back into held_usd() (e.g. a health snapshot).
        self._lock = threading.RLock()
        self._held = 0.0
        self._open: dict[int, float] = {}
        self._next_id = 0

    def held_usd(self) -> float:
        """Total USD held by open reservations."""
        with self._lock:
            return ledger.round_usd(self._held)

    def open_reservations(self) -> int:
        with self._lock:
            return len(self._open)

    def guard(self, estimated_usd: float = 0.0) -> None:
        """Raise BudgetExceeded if spend + held reservations + the estimate passes the cap."""
        estimate = check_usd(estimated_usd, "estimated_usd")
        with self._lock:
            self._check(estimate)

    def reserve(self, max_usd: float, attributes: Attributes | None = None) -> Reservation:
        """Check the cap and hold `max_usd` in one step; raise BudgetExceeded if it would pass.

        Use the result as a context manager; see :class:`Reservation`.
        """
        amount = check_usd(max_usd, "max_usd")
        with self._lock:
            self._check(amount)
            self._next_id += 1
            token = self._next_id
            self._open[token] = amount
            self._held += amount
        return Reservation(self, token, amount, dict(attributes) if attributes else None)

    def _check(self, estimate: float) -> None:
        spend = float(self._spend_now())
        cap = float(self._cap())
        held = ledger.round_usd(self._held)
        if would_pass_cap(spend, held, estimate, cap):
            raise BudgetExceeded(
                date=self._day(), daily_spend_usd=ledger.round_usd(spend), reserved_usd=held,
                estimated_usd=estimate, daily_cap_usd=cap,
            )

    def _close(self, token: int, actual: float | None, attributes: Attributes | None) -> None:
        with self._lock:
            amount = self._open.get(token)
            if amount is None:
                raise RuntimeError("this reservation was already settled or cancelled")
            if actual is not None:
                # Record before releasing the hold (both under the lock): a concurrent
                # check sees the amount at least once, never zero times.
                self._record(actual, attributes)
            del self._open[token]
            self._held -= amount
            if not self._open:
                self._held = 0.0  # no float residue once nothing is held


class Reservation:
    """An amount held against the cap while a call is in flight.

    ``settle(actual_usd)`` records the actual cost and releases the hold; ``cancel()``
    releases it without recording. Leaving the ``with`` block without either (including
    by an exception) records the held maximum: the call may have been paid for, and
    over-counting is the safe side of a cap.
    """

    def __init__(
        self, book: ReservationBook, token: int, max_usd: float,
        attributes: Attributes | None,
    ) -> None:
        self._book = book
        self._token = token
        self.max_usd = max_usd
        self._attributes = attributes
        self.settled_usd: float | None = None
        self.closed = False

    @property
    def book(self) -> ReservationBook:
        """The book this reservation is held in."""
        return self._book

    def __repr__(self) -> str:
        state = "open" if not self.closed else f"settled={self.settled_usd!r}"
        return f"Reservation(max_usd={self.max_usd!r}, {state})"

    def settle(self, actual_usd: float, attributes: Attributes | None = None) -> float:
        """Record the actual cost (even if above the hold) and release the hold."""
        actual = check_usd(actual_usd, "actual_usd")
        attrs = attributes if attributes is not None else self._attributes
        self._book._close(self._token, actual, attrs)
        self.settled_usd = actual
        self.closed = True
        return actual

    def cancel(self) -> None:
        """Release the hold without recording anything (the call did not happen)."""
        self._book._close(self._token, None, None)
        self.closed = True

    def close(self) -> None:
        """Settle at the held maximum unless already settled or cancelled."""
        if not self.closed:
            self.settle(self.max_usd)

    def __enter__(self) -> Reservation:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
