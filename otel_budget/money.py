"""Money: the one place for how USD is rounded, held as integer nano-USD, checked at
the door and compared with a cap.

Floats drift (0.001 added 400,000 times is 399.99999999745), so sums are kept in
integer nano-USD, stored and reported amounts are rounded to 1e-9, and every cap
comparison allows that tolerance: $8.00 of a $10.00 cap is 80% (DESIGN decision 8).
"""

from __future__ import annotations

import math
from decimal import Decimal
from fractions import Fraction
from numbers import Real
from typing import Any, TypeAlias, TypeGuard

from .errors import AmountTypeError

__all__ = [
    "MAX_STORED_USD", "NANOS_PER_USD", "USD_EPSILON", "UsdAmount", "check_amount",
    "from_nanos", "is_amount", "is_number", "is_stored_amount", "passes_cap", "remaining_usd", "round_usd",
    "threshold_reached", "to_nanos", "utilization",
]

#: Money is stored and compared to this precision.
USD_EPSILON = 1e-9
_DECIMALS = 9
NANOS_PER_USD = 1_000_000_000
#: No stored amount is larger (a row claiming more is corrupt, not rich).
MAX_STORED_USD = 1e12

#: What the API takes as an amount of USD: any real number but bool (int is a float
#: to type checkers). Decimal and Fraction keep a caller's exact prices exact.
UsdAmount: TypeAlias = float | Decimal | Fraction


def round_usd(value: float) -> float:
    """Round to 1e-9 USD so float drift (0.1 + 0.2) never reaches a document.

    A value rounded already (most are: from_nanos) skips round()'s decimal
    conversion, which was most of a writer entry's checking. It is rounded already
    when n = value * 1e9 is a whole number and n / 1e9 is value again: value is then
    the float nearest to n / 1e9, within half its ulp of it; below 2**23 in size that
    is at most 2**-31 (< 5e-10), so n / 1e9 is the 9-decimal number nearest to value,
    whose nearest float, what round() returns, is value. From 2**23 on, the ulp is at
    least 2**-29: rounding to 9 decimals moves value by at most 5e-10, less than half
    an ulp, so round() returns value itself. (inf and nan are never whole: round().)"""
    amount = float(value)
    nanos = amount * 1e9
    if nanos.is_integer() and nanos / 1e9 == amount:
        return amount + 0.0  # + 0.0 folds -0.0 into 0.0
    return round(amount, _DECIMALS) + 0.0


def to_nanos(usd: float) -> int:
    return round(usd * NANOS_PER_USD)


def from_nanos(nanos: int) -> float:
    return round_usd(nanos / NANOS_PER_USD)


def check_amount(value: Any, name: str, max_usd: float) -> float:
    """A caller's USD amount: a real number, finite, >= 0 and at most `max_usd`.
    Decimal and Fraction are accepted (they are real numbers); bool and str are not."""
    if isinstance(value, bool) or not isinstance(value, (Real, Decimal)):
        raise AmountTypeError(f"{name} must be a real number of USD, got {type(value).__name__}")
    try:
        amount = float(value)
    except (OverflowError, ValueError):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r:.40}") from None
    if not (0.0 <= amount < math.inf):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r:.40}")
    if amount > max_usd:
        raise ValueError(
            f"{name}={amount!r} is more than max_call_usd={max_usd!r}: refused as a likely "
            "unit error (raise BudgetConfig(max_call_usd=...) if it is real)"
        )
    return amount


def is_number(value: Any) -> bool:
    """An int or a float, not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_amount(value: Any) -> TypeGuard[float]:
    """An amount read from a row or a request: a finite number >= 0 (not a bool)."""
    return is_number(value) and math.isfinite(value) and value >= 0


def is_stored_amount(value: Any) -> TypeGuard[float]:
    """A stored amount: a finite number >= 0 and <= MAX_STORED_USD (not a bool)."""
    return is_amount(value) and value <= MAX_STORED_USD


def threshold_reached(spend_usd: float, ratio: float, cap_usd: float) -> bool:
    return spend_usd >= ratio * cap_usd - USD_EPSILON


def passes_cap(spend_usd: float, cap_usd: float) -> bool:
    """Landing exactly on the cap is allowed; only exceeding it by > 1e-9 passes it."""
    return spend_usd > cap_usd + USD_EPSILON


def remaining_usd(spend_usd: float, cap_usd: float) -> float:
    return round_usd(max(0.0, cap_usd - spend_usd))


def utilization(spend_usd: float, cap_usd: float) -> float:
    return round(spend_usd / cap_usd, 6) if cap_usd > 0 else 0.0
