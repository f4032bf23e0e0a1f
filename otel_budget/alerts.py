"""Alert thresholds per (budget, window, ratio), without I/O: which are due, which
someone in the fleet already claimed, and the nudge document of a claim."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from . import money
from .budgets import DAILY, Budget

AlertKey = tuple[str, str, float]  # (budget, window, ratio)


class AlertBook:
    def __init__(self) -> None:
        self._claimed: set[AlertKey] = set()

    def due(self, budget: Budget, window: str, spend_usd: float) -> list[float]:
        if budget.per is not None:
            return []  # its cap is each key's: alerts per key (otel_budget.perkey)
        return [
            ratio for ratio in budget.alert_ratios
            if (budget.name, window, ratio) not in self._claimed
            and money.threshold_reached(spend_usd, ratio, budget.cap_usd)
        ]

    def mark_claimed(self, budget: str, window: str, ratio: float) -> None:
        self._claimed.add((budget, window, ratio))

    def claimed(self, budget: str, window: str) -> list[float]:
        return sorted(r for (b, w, r) in self._claimed if b == budget and w == window)

    def forget_except(self, current: Iterable[tuple[str, str]]) -> None:
        """Drop claims of windows that have ended (they can never be due again)."""
        keep = set(current)
        self._claimed = {key for key in self._claimed if (key[0], key[1]) in keep}


def build_nudge(
    *, sibling: str, budget: Budget, window: str, ratio: float, spend_usd: float,
    instance_id: str, now: datetime, day: str, row_name: str | None = None,
    claimed_by: str | None = None,
) -> dict[str, Any]:
    """Which budget, period, window and match, and its own `spend_usd`/`cap_usd` (in
    that window); the `"daily"` budget also keeps version 1's `daily_spend_usd` and
    `daily_cap_usd` (a month budget's spend is not a day's); with `row_name`,
    the claim's keys: `id` (the row name, for a receiver to deduplicate: a claim
    taken over is delivered again under the same id), `claimed_by`, `claimed_at`
    and `delivered_at` (None until a notifier took it)."""
    spend = money.round_usd(spend_usd)
    claim: dict[str, Any] = {}
    if row_name is not None:
        claim = {"id": row_name, "claimed_by": claimed_by, "claimed_at": now.isoformat(),
                 "delivered_at": None}
    daily = ({"daily_spend_usd": spend, "daily_cap_usd": budget.cap_usd}
             if budget.name == DAILY else {})
    return claim | daily | {
        "to": sibling,
        "kind": "budget_alert",
        "date": day,
        "ratio": ratio,
        "instance_id": instance_id,
        "created_at": now.isoformat(),
        "budget": budget.name,
        "period": budget.period,
        "window": window,
        "match": dict(budget.match) if budget.match is not None else None,
        "spend_usd": spend,
        "cap_usd": budget.cap_usd,
    }


# --- claims: delivered at least once -------------------------------------------------
#
# A claim row holds the nudge document. `delivered_at` null: claimed, not yet taken by
# the claiming writer's notifiers; a string: delivered. A row without the key predates
# delivery records and counts as delivered (an upgrade must not re-send old alerts).


def claim_undelivered(content: Any) -> bool:
    return isinstance(content, dict) and "delivered_at" in content and \
        content["delivered_at"] is None


def claimed_at(content: dict[str, Any]) -> datetime | None:
    for key in ("claimed_at", "created_at"):
        value = content.get(key)
        if isinstance(value, str):
            try:
                stamp = datetime.fromisoformat(value)
            except ValueError:
                continue
            if stamp.tzinfo is not None:
                return stamp
    return None


def delivered(content: dict[str, Any], now: datetime) -> dict[str, Any]:
    return {**content, "delivered_at": now.isoformat()}


def taken_over(content: dict[str, Any], *, writer_id: str, now: datetime) -> dict[str, Any]:
    """The claim, re-claimed by `writer_id` (its claimer died before delivering)."""
    previous = content.get("takeovers")
    count = previous + 1 if isinstance(previous, int) and not isinstance(previous, bool) else 1
    return {**content, "claimed_by": writer_id, "claimed_at": now.isoformat(),
            "delivered_at": None, "takeovers": count}
