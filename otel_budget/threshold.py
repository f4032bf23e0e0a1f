"""Alert bookkeeping for one day, without I/O: which ratios are due, which are
already claimed by someone in the fleet, and which deliveries this instance owes."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from . import ledger


@dataclass
class PendingDelivery:
    nudge: dict[str, Any]
    #: indexes of the notifiers that have not yet succeeded
    remaining: set[int] = field(default_factory=set)


class AlertBook:
    def __init__(self, ratios: tuple[float, ...]) -> None:
        self._ratios = ratios
        self._claimed: set[float] = set()
        self._pending: dict[tuple[str, float], PendingDelivery] = {}

    @property
    def ratios(self) -> tuple[float, ...]:
        return self._ratios

    def reset(self) -> None:
        """A new day re-arms every threshold; deliveries still owed for the old day
        are kept, so a nudge claimed at 23:59 is still delivered after midnight."""
        self._claimed.clear()

    def due(self, spend_usd: float, cap_usd: float) -> list[float]:
        return [
            ratio for ratio in self._ratios
            if ratio not in self._claimed and ledger.threshold_reached(spend_usd, ratio, cap_usd)
        ]

    def mark_claimed(self, ratio: float) -> None:
        self._claimed.add(ratio)

    def owe(self, ratio: float, nudge: dict[str, Any], notifier_count: int) -> None:
        self._claimed.add(ratio)
        if notifier_count:
            self._pending[(nudge["date"], ratio)] = PendingDelivery(
                nudge, set(range(notifier_count))
            )

    def pending(self) -> list[PendingDelivery]:
        return list(self._pending.values())

    def settle(self) -> None:
        """Forget deliveries every notifier has acknowledged."""
        for key in [k for k, p in self._pending.items() if not p.remaining]:
            del self._pending[key]

    def claimed(self) -> list[float]:
        return sorted(self._claimed)


def build_nudge(
    *, sibling: str, day: date, ratio: float, daily_spend_usd: float, daily_cap_usd: float,
    instance_id: str, now: datetime,
) -> dict[str, Any]:
    return {
        "to": sibling,
        "kind": "budget_alert",
        "date": day.isoformat(),
        "ratio": ratio,
        "daily_spend_usd": ledger.round_usd(daily_spend_usd),
        "daily_cap_usd": daily_cap_usd,
        "instance_id": instance_id,
        "created_at": now.isoformat(),
    }
