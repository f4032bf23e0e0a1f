"""A budget's spend as this writer knows it now, without I/O: the fleet view (the
others, as last read) plus this writer's own ledger plus what it inherited at a fork
and has not yet seen stored; and the row `budgets()` shows for it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from . import money
from .budgets import Budget
from .fleet import FleetView
from .spend import DaySnapshot


def live_spend(
    view: FleetView, budgets: Sequence[Budget], *, own_total_nanos: int,
    own_budget_nanos: Sequence[int], inherited: DaySnapshot | None,
) -> tuple[float, list[float]]:
    """(the fleet's spend today, each budget's spend over its window), rounded."""
    total = (view.others_total() + own_total_nanos / money.NANOS_PER_USD
             + (inherited.total_usd if inherited else 0.0))
    spends = []
    for budget, own in zip(budgets, own_budget_nanos, strict=True):
        name = budget.name
        spends.append(view.window_budget(name) + own / money.NANOS_PER_USD
                      + (inherited.budget_usd(name) if inherited else 0.0))
    return money.round_usd(total), [money.round_usd(s) for s in spends]


def budget_row(budget: Budget, *, window: str, spend_usd: float,
               alerts_sent: list[float]) -> dict[str, Any]:
    """One entry of `budgets()` (the meter adds what is reserved and leased)."""
    return {
        "name": budget.name, "period": budget.period, "window": window,
        "match": dict(budget.match) if budget.match is not None else None,
        "cap_usd": budget.cap_usd, "spend_usd": spend_usd,
        "remaining_usd": money.remaining_usd(spend_usd, budget.cap_usd),
        "utilization": money.utilization(spend_usd, budget.cap_usd),
        "alerts_sent": alerts_sent,
        "hard": budget.hard, "enforce": budget.enforce,
    }


def inherited_spend(earlier: DaySnapshot | None, parent: DaySnapshot) -> DaySnapshot:
    """What a forked child counts as inherited: the parent's spend at the fork, plus
    what the parent had itself inherited on the same day (a fork of a fork)."""
    if earlier is None or earlier.day != parent.day:
        return parent
    names = set(earlier.by_budget) | set(parent.by_budget)
    return DaySnapshot(
        day=parent.day, total_nanos=earlier.total_nanos + parent.total_nanos,
        by_attributes=earlier.by_attributes + parent.by_attributes,
        by_budget={n: earlier.by_budget.get(n, 0) + parent.by_budget.get(n, 0) for n in names},
    )


__all__ = ["budget_row", "inherited_spend", "live_spend"]
