"""The health report: a JSON-serialisable dict built from a BudgetSnapshot (no I/O)."""

from __future__ import annotations

from typing import Any

from . import ledger
from .reader import BudgetSnapshot


def build_health(
    snapshot: BudgetSnapshot, *, daily_cap_usd: float, instance_id: str, timezone: str
) -> dict[str, Any]:
    """`status` is "degraded" while the last checkpoint or the restore failed."""
    checkpoint_failed = snapshot.last_checkpoint.get("ok") is False
    restore_failed = snapshot.restore.get("ok") is False
    spend = snapshot.daily_spend_usd
    return {
        "status": "degraded" if checkpoint_failed or restore_failed else "ok",
        "date": snapshot.day.isoformat(),
        "timezone": timezone,
        "daily_spend_usd": spend,
        "daily_cap_usd": daily_cap_usd,
        "utilization": ledger.utilization(spend, daily_cap_usd),
        "remaining_usd": ledger.remaining_usd(spend, daily_cap_usd),
        "alerts_sent": list(snapshot.alerts_sent),
        "instance_id": instance_id,
        "instance_spend_usd": snapshot.own_spend_usd,
        "collections": snapshot.collections,
        "last_checkpoint": snapshot.last_checkpoint,
        "checkpoint_age_s": snapshot.checkpoint_age_s,
        "unflushed_usd": snapshot.unflushed_usd,
        "store_up": snapshot.store_up,
        "restore": snapshot.restore,
    }
