"""Reading the fleet's spend from the store, for the tracker's FleetView.

The I/O is in three functions (`read_day`, `read_legacy`, `entries_of`); everything
they decide is a pure function beside them (which days to read, which entries need
their breakdown, what a new day carries over, what health shows of a view), so the
rules are unit-tested without a store. The view itself is built by fleet.py.

A malformed row is quarantined (left out, named), never fatal: `read_legacy` sets
a bad version 1 document aside; writer entries are sorted by fleet.py. A store that
fails raises: the tracker keeps its last view and says so in health.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from . import fleet, ledger, money
from .budgets import Budget
from .checkpoint import describe
from .errors import CheckpointError
from .fleet import FleetView
from .spend import DaySnapshot
from .stores import layout
from .stores import legacy as legacy_rows
from .stores.base import PatchStore
from .stores.entries import WRITER_TYPE, DayTotals
from .stores.shares import incomplete_day_entries

_log = logging.getLogger("otel_budget")

#: Past this many entries to complete, the day's breakdowns are read in one call.
WHOLE_DAY_AFTER = 8


@dataclass(frozen=True)
class DayRead:
    """What one load read of the store for `day` (a FleetView is built from it)."""

    day: date
    #: The days read: every budget's window up to `day` (ISO dates).
    names: Sequence[str]
    totals: Mapping[str, DayTotals]
    #: The entries of the days some writer left a budget out of.
    entries: Sequence[Any]
    #: Today's version 1 day document (validated), if any.
    legacy: Mapping[str, Any] | None
    #: The version 1 document's name when it was malformed (set aside).
    legacy_quarantined: Sequence[str] = ()


def days_to_read(day: date, budgets: Iterable[Budget]) -> list[str]:
    """`day` and the days before it in each budget's window (ISO dates, sorted)."""
    days = {day}
    for budget in budgets:
        days.update(ledger.window_days_before(day, budget.period))
    return sorted(d.isoformat() for d in days)


def read_legacy(store: PatchStore, day: date) -> tuple[dict[str, Any] | None, list[str]]:
    """Today's version 1 document and, when it is malformed, its name (quarantined)."""
    name = legacy_rows.document_name(day)
    try:
        legacy = store.get(layout.LEGACY_TYPE, name)
        if legacy is not None:
            legacy_rows.validate_budget_document(legacy, name=name)
    except CheckpointError as exc:
        _log.error("otel_budget: quarantined %s: %s", name, describe(exc))
        return None, [name]
    return legacy, []


def read_day(store: PatchStore, day: date, budgets: Sequence[Budget]) -> DayRead:
    """Every budget's window up to `day` (one call for all the days' totals), the
    entries of the days some writer left a budget out of (closed days as the store
    computed them), and today's version 1 document. Store failures raise."""
    names = days_to_read(day, budgets)
    totals = store.day_totals(names)
    incomplete = [n for n in names if fleet.incomplete(totals[n], budgets)]
    entries = incomplete_day_entries(store, incomplete, totals, budgets,
                                     today=day.isoformat())
    legacy, legacy_bad = read_legacy(store, day)
    return DayRead(day=day, names=names, totals=totals, entries=entries, legacy=legacy,
                   legacy_quarantined=legacy_bad)


def view_of(prev: FleetView, read: DayRead, *, budgets: Sequence[Budget], writer_id: str,
            own: Mapping[str, Any] | None, read_at: str) -> FleetView:
    """The fleet view after `read` (see fleet.from_load); `own` is this writer's entry
    as the store holds it, left out of the others."""
    return fleet.from_load(
        prev, day=read.day, budgets=budgets, totals=read.totals, entries=read.entries,
        legacy=read.legacy, writer_id=writer_id, own=own, read_at=read_at,
        legacy_quarantined=read.legacy_quarantined)


def restore_ok(at: str, read: DayRead) -> dict[str, Any]:
    """Health's `restore` after a load that answered."""
    return {"ok": True, "at": at, "error": None, "days_read": len(read.names),
            "legacy_document": read.legacy is not None}


def restore_failed(at: str, error: str) -> dict[str, Any]:
    """Health's `restore` after a load that failed (the last view is kept)."""
    return {"ok": False, "at": at, "error": error}


# --- today's entries after a merge ---------------------------------------------------


def split_light(
    light: Iterable[Any], view: FleetView, budgets: Sequence[Budget], writer_id: str,
) -> tuple[list[Any], list[str]]:
    """Today's entries read without their breakdowns: those usable as they are (every
    budget's figure, their own or from the view's copy of the same writer at the same
    seq; malformed ones too, for fleet.sort_entries to name), and the row names of
    those that must be read whole. `writer_id`'s own entry is left out."""
    out: list[Any] = []
    missing: list[str] = []
    for item in light:
        if not isinstance(item, dict) or item.get("writer_id") == writer_id:
            continue
        if not fleet.lacks_budgets(item, budgets):
            out.append(item)
            continue
        filled = fleet.fill_from_cache(item, view, budgets)
        name = fleet.entry_row_name(item)
        if filled is not None:
            out.append(filled)
        elif name is not None:
            missing.append(name)
        else:
            out.append(item)
    return out, missing


def unreadable_entry(name: str, day: str) -> dict[str, Any]:
    """Stands for a writer row that could not be read whole: malformed, so quarantined."""
    return {"writer_id": name.rsplit("/", 1)[-1], "date": day, "spend_usd": None}


def entries_of(store: PatchStore, day: str, view: FleetView, budgets: Sequence[Budget],
               writer_id: str) -> list[Any]:
    """Today's other writers' entries, every budget's figure in each: read without the
    breakdowns (most of the bytes); an entry lacking a budget is completed from the
    view, else read whole (one row at a time for a few, the day's breakdowns at once
    for many)."""
    out, missing = split_light(store.writer_entries([day], breakdown=False), view, budgets,
                               writer_id)
    if len(missing) > WHOLE_DAY_AFTER:
        wanted = set(missing)
        return out + [e for e in store.writer_entries([day], breakdown=True)
                      if isinstance(e, dict) and fleet.entry_row_name(e) in wanted]
    for name in missing:
        try:
            whole = store.get(WRITER_TYPE, name)
        except CheckpointError:
            whole = None
        out.append(whole if whole is not None else unreadable_entry(name, day))
    return out


# --- a new day; what health shows -----------------------------------------------------


def prior_after_roll(
    view: FleetView, budgets: Iterable[Budget], *, old_day: date, new_day: date,
    inherited: DaySnapshot | None, last_own: DaySnapshot | None,
) -> dict[str, float]:
    """Each budget's spend carried into `new_day`: for a window that goes on, what the
    fleet had spent in it by the end of `old_day` (the others', the spend inherited
    at a fork, and this writer's last day); zero for a window that starts."""
    prior: dict[str, float] = {}
    for budget in budgets:
        name = budget.name
        if ledger.window_id(old_day, budget.period) != ledger.window_id(new_day, budget.period):
            prior[name] = 0.0
            continue
        prior[name] = (view.window_budget(name)
                       + (inherited.budget_usd(name) if inherited else 0.0)
                       + (last_own.budget_usd(name) if last_own else 0.0))
    return prior


def view_info(view: FleetView, now: datetime) -> dict[str, Any]:
    """Health's `fleet_view`: where the numbers came from, how old, what is carried."""
    age = None
    if view.read_at is not None:
        try:
            age = round(max(0.0, (now - datetime.fromisoformat(view.read_at))
                            .total_seconds()), 3)
        except (TypeError, ValueError):
            age = None
    return {"source": view.source, "read_at": view.read_at, "age_s": age,
            "estimated": view.estimated,
            "carried_usd": money.round_usd(sum(s.total_usd for s in view.carried.values()))}


__all__ = [
    "WHOLE_DAY_AFTER", "DayRead", "days_to_read", "entries_of", "prior_after_roll",
    "read_day", "read_legacy", "restore_failed", "restore_ok", "split_light",
    "unreadable_entry", "view_info", "view_of",
]
