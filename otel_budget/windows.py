"""Each budget's spend over its window up to a day, as the store holds it: the one
computation behind `otel-budget report` and the status page's store rows.

The cheap way, the one the tracker's FleetView takes too: one `day_totals` call for
every day of every window, and more only for the days some writer left a configured
budget out (an older configuration in a rolling deploy: its share is priced from its
breakdown, fleet.entry_budget_spend), as `stores.shares.incomplete_day_entries`
reads them: each closed day's share kept in the store, today's entries with the
budgets computed there, or the breakdowns whole from a store that cannot.
`spend_of_window` is the pure sum over what was read; `read_window_spend` does the
reads it needs and nothing else.

The rules it keeps, as the FleetView does:

- *Never blind.* A writer without a figure for a configured budget counts for it
  from its breakdown. A budget known by name only (`NamedBudget`, the status page
  without configuration) counts what the writers reported.
- *Quarantine, never zero.* Malformed rows are left out and named.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any

from . import ledger, money
from .budgets import Budget
from .errors import CheckpointError
from .fleet import Spend, entry_budget_spend, incomplete, legacy_spend, sort_entries
from .stores import layout
from .stores import legacy as legacy_rows
from .stores.base import PatchStore
from .stores.entries import DayTotals
from .stores.shares import incomplete_day_entries

__all__ = ["NamedBudget", "WindowSpend", "read_window_spend", "spend_of_window",
           "window_days"]


@dataclass(frozen=True)
class NamedBudget:
    """A budget known by its name and period only (no match to price a breakdown by):
    a writer that reported no figure for it counts nothing for it."""

    name: str
    period: str = "day"


@dataclass(frozen=True)
class WindowSpend:
    #: Each budget's spend (USD) over its window up to the day, by budget name.
    spend_usd: Mapping[str, float]
    #: Names of the rows left out because they are malformed.
    quarantined: tuple[str, ...] = ()


#: Called with what could not be read ("the budgets' windows", "<day>'s writers")
#: and why; without one, a failed read raises.
OnError = Callable[[str, Exception], None]


def window_days(day: date, budgets: Iterable[Budget | NamedBudget]) -> list[str]:
    """Every day (ISO) some budget's window up to `day` covers, `day` included."""
    days = {day}
    for budget in budgets:
        days.update(ledger.window_days_before(day, budget.period))
    return sorted(d.isoformat() for d in days)


def _priced(budgets: Iterable[Budget | NamedBudget]) -> list[Budget]:
    return [b for b in budgets if isinstance(b, Budget)]


def breakdown_days(totals: Mapping[str, DayTotals],
                   budgets: Sequence[Budget | NamedBudget]) -> list[str]:
    """The days whose writers' breakdowns are needed: some writer of the day has no
    figure of its own for a configured budget."""
    priced = _priced(budgets)
    return sorted(d for d, t in totals.items() if priced and incomplete(t, priced))


def spend_of_window(
    day: date, budgets: Sequence[Budget | NamedBudget], totals: Mapping[str, DayTotals],
    entries: Iterable[Any] = (), legacy: Mapping[str, Spend] | None = None,
) -> WindowSpend:
    """Each budget's spend over its window up to `day`: a day's `totals` where every
    writer reported the budget, else the sum of that day's `entries` (read with
    their breakdowns), plus the day's version 1 document (`legacy`, by ISO day)
    where one is held. A day missing from `totals` counts nothing."""
    by_day, bad = sort_entries(entries)
    quarantined = set(bad) | {n for t in totals.values() for n in t.get("quarantined", [])}
    spend: dict[str, float] = {}
    for budget in budgets:
        usd = 0.0
        for d in [*ledger.window_days_before(day, budget.period), day]:
            name = d.isoformat()
            day_totals = totals.get(name)
            if day_totals is not None:
                if isinstance(budget, Budget) and incomplete(day_totals, [budget]):
                    usd += sum(entry_budget_spend(e, budget) for e in by_day.get(name, []))
                else:
                    usd += float(day_totals["by_budget"].get(budget.name, 0.0))
            if legacy is not None and name in legacy:
                usd += legacy[name].budget(budget.name)
        spend[budget.name] = money.round_usd(usd)
    return WindowSpend(spend, tuple(sorted(quarantined)))


def read_window_spend(
    store: PatchStore, day: date, budgets: Sequence[Budget | NamedBudget], *,
    read: Mapping[str, Sequence[Any]] | None = None, legacy: bool = False,
    on_error: OnError | None = None,
) -> WindowSpend:
    """`spend_of_window` over the store's reads: one `day_totals` for every window's
    days, the writers' entries of the days `breakdown_days` names (unless `read`
    holds them already, by ISO day), and with `legacy` each day's version 1 document
    (one read a day: the report's, not the status page's)."""
    names = window_days(day, budgets)
    try:
        totals = store.day_totals(names)
    except Exception as exc:
        if on_error is None:
            raise
        on_error("the budgets' windows", exc)
        totals = {}
    entries: list[Any] = []
    missing = []
    for name in breakdown_days(totals, budgets):
        if read is not None and name in read:
            entries.extend(read[name])
        else:
            missing.append(name)
    if missing:
        try:
            # As the tracker's start(): a closed day's shares computed and kept in
            # the store, today's entries with the budgets computed there; the
            # breakdowns are read whole only from a store that cannot.
            entries.extend(incomplete_day_entries(store, missing, totals, _priced(budgets),
                                                  today=day.isoformat()))
        except Exception as exc:
            if on_error is None:
                raise
            on_error(f"the writers of {', '.join(missing)}", exc)
    documents: dict[str, Spend] = {}
    bad: list[str] = []
    if legacy:
        priced = _priced(budgets)
        for name in names:
            row = legacy_rows.document_name(date.fromisoformat(name))
            try:
                document = store.get(layout.LEGACY_TYPE, row)
                if document is not None:
                    legacy_rows.validate_budget_document(document, name=row)
                    documents[name] = legacy_spend(document, priced)
            except CheckpointError:
                bad.append(row)
            except Exception as exc:
                if on_error is None:
                    raise
                on_error(f"the day document {row}", exc)
    spent = spend_of_window(day, budgets, totals, entries, documents)
    if not bad:
        return spent
    return WindowSpend(spent.spend_usd, tuple(sorted({*spent.quarantined, *bad})))
