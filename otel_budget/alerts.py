"""Alert thresholds per (budget, window, ratio), without I/O: which are due, which
someone in the fleet already claimed, and the nudge document of a claim."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from . import ledger
from .budgets import Budget

AlertKey = tuple[str, str, float]  # (budget, window, ratio)


class AlertBook:
    def __init__(self) -> None:
        self._claimed: set[AlertKey] = set()

    def due(self, budget: Budget, window: str, spend_usd: float) -> list[float]:
        return [
            ratio for ratio in budget.alert_ratios
            if (budget.name, window, ratio) not in self._claimed
            and ledger.threshold_reached(spend_usd, ratio, budget.cap_usd)
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
    instance_id: str, now: datetime, day: str,
) -> dict[str, Any]:
    """Version 1's keys (daily_spend_usd / daily_cap_usd hold the budget's window
    spend and cap), plus which budget, period, window and match."""
    spend = ledger.round_usd(spend_usd)
    return {
        "to": sibling,
        "kind": "budget_alert",
        "date": day,
        "ratio": ratio,
        "daily_spend_usd": spend,
        "daily_cap_usd": budget.cap_usd,
        "instance_id": instance_id,
        "created_at": now.isoformat(),
        "budget": budget.name,
        "period": budget.period,
        "window": window,
        "match": dict(budget.match) if budget.match is not None else None,
        "spend_usd": spend,
        "cap_usd": budget.cap_usd,
    }
