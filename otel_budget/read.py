"""`read_day(store, day)`: one day's spend as a person wants it, whatever the layout
(version 2 writer rows, a version 1 day document, or both on the upgrade day)."""

from __future__ import annotations

from datetime import date
from typing import Any

from . import ledger, money
from .errors import CheckpointError
from .fleet import sort_entries
from .stores import layout
from .stores import legacy as legacy_rows
from .stores.base import PatchStore
from .stores.entries import SUMMARY_TYPE, summary_problem, summary_quarantine_name, summary_row_name


def read_day(store: PatchStore, day: date | str) -> dict[str, Any]:
    """{"date", "total_usd", "writers", "instances": {instance_id: {"spend_usd",
    "writers", "updated_at"}}, "by_budget", "by_attributes", "nudges", "legacy",
    "quarantined"}. A malformed stored row is left out and named in `quarantined`
    (row names), never a reason to fail the whole day."""
    if isinstance(day, date):
        name = day.isoformat()
    else:
        try:
            name = date.fromisoformat(str(day)).isoformat()
        except ValueError:
            raise ValueError(f"day must be a date or 'YYYY-MM-DD', got {day!r:.40}") from None
    quarantined: list[str] = []
    by_day, bad = sort_entries(store.writer_entries([name], breakdown=True))
    quarantined.extend(bad)
    entries = by_day.get(name, [])
    legacy_name = legacy_rows.document_name(date.fromisoformat(name))
    legacy: dict[str, Any] | None
    try:
        legacy = store.get(layout.LEGACY_TYPE, legacy_name)
        if legacy is not None:
            legacy_rows.validate_budget_document(legacy, name=legacy_name)
    except CheckpointError:
        legacy = None
        quarantined.append(legacy_name)
    if summary_malformed(store, name):
        quarantined.append(summary_quarantine_name(name))
    by_budget: dict[str, float] = {}
    breakdown: dict[ledger.AttributesKey, float] = {}
    for entry in entries:
        for budget, usd in (entry.get("by_budget") or {}).items():
            by_budget[budget] = money.round_usd(by_budget.get(budget, 0.0) + float(usd))
        breakdown = ledger.add_maps(breakdown,
                                    ledger.by_attributes_to_map(entry.get("by_attributes", [])))
    for entry in ((legacy or {}).get("instances") or {}).values():
        breakdown = ledger.add_maps(breakdown,
                                    ledger.by_attributes_to_map(entry.get("by_attributes", [])))
    total = sum(float(e["spend_usd"]) for e in entries)
    if legacy:
        total += legacy_rows.document_total(legacy)
    instances = ledger.group_instances(entries, legacy)
    nudges = list_nudges(store, name)
    return {
        "date": name,
        "total_usd": money.round_usd(total),
        "writers": sum(row["writers"] for row in instances.values()),
        "instances": instances,
        "by_budget": dict(sorted(by_budget.items())),
        "by_attributes": ledger.map_to_by_attributes(breakdown),
        "nudges": nudges,
        "legacy": legacy is not None,
        "quarantined": sorted(set(quarantined)),
    }


def summary_malformed(store: PatchStore, day: str) -> bool:
    """Whether the day's summary row is there and malformed (the stores count the
    retired rows in its place; a person should still hear of it)."""
    try:
        content = store.get(SUMMARY_TYPE, summary_row_name(day))
    except CheckpointError:
        return True
    return content is not None and summary_problem(content, day) is not None


def list_nudges(store: PatchStore, day: str) -> list[dict[str, Any]]:
    """Nudge documents claimed on `day` (for any budget and window)."""
    nudges = store.nudges_on(day)
    return sorted(nudges, key=lambda n: (str(n.get("budget", "daily")), float(n.get("ratio", 0))))
