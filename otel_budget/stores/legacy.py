"""Version 1's day documents: still read (a store upgraded from version 1 keeps its
old days), never written. Pure: no I/O.

One row per day, `(LEGACY_TYPE, 'budget_YYYY-MM-DD')`, holding every instance's
entry of the day::

    {"date", "timezone", "daily_cap_usd", "total_usd", "updated_at",
     "instances": {instance_id: {"spend_usd", "seq", "updated_at", "by_attributes"}}}
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date
from typing import Any

from ..errors import CheckpointError, CorruptRowError
from ..money import is_stored_amount, round_usd
from .layout import LEGACY_TYPE, summary_row_name


def document_name(day: date) -> str:
    """The day document's row name (the day's summary row has the same name)."""
    return summary_row_name(day.isoformat())


def validate_entry(entry: Any, *, where: str) -> dict[str, Any]:
    """Check one instance entry's shape; raise CheckpointError naming `where`."""
    if not isinstance(entry, dict):
        raise CheckpointError(f"{where}: entry is {type(entry).__name__}, expected an object")
    if not is_stored_amount(entry.get("spend_usd")):
        raise CheckpointError(
            f"{where}: spend_usd must be a finite number >= 0, got {entry.get('spend_usd')!r}"
        )
    seq = entry.get("seq")
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
        raise CheckpointError(f"{where}: seq must be an integer >= 0, got {seq!r}")
    items = entry.get("by_attributes", [])
    if not isinstance(items, list):
        raise CheckpointError(f"{where}: by_attributes must be a list")
    for item in items:
        if (
            not isinstance(item, dict)
            or not isinstance(item.get("attributes", {}), dict)
            or not is_stored_amount(item.get("spend_usd"))
        ):
            raise CheckpointError(f"{where}: malformed by_attributes item {item!r:.200}")
    return entry


def validate_budget_document(content: Any, *, name: str) -> dict[str, Any]:
    """Check a stored day document; raise CorruptRowError (a CheckpointError) naming
    the row."""
    where = f"{LEGACY_TYPE} row {name!r}"
    if not isinstance(content, dict):
        raise CorruptRowError(f"{where}: content is {type(content).__name__}, expected an object")
    instances = content.get("instances", {})
    if not isinstance(instances, dict):
        raise CorruptRowError(f"{where}: 'instances' must be an object")
    for instance_id, entry in instances.items():
        validate_entry(entry, where=f"{where}, instance {instance_id!r}")
    return content


def document_total(content: Mapping[str, Any]) -> float:
    """The day's spend: the sum of its instances' entries."""
    instances = content.get("instances") or {}
    return round_usd(sum(float(e["spend_usd"]) for e in instances.values()))


__all__ = ["LEGACY_TYPE", "document_name", "document_total", "validate_budget_document",
           "validate_entry"]
