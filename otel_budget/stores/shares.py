"""A budget's share of each CLOSED day, computed once in the store and kept.

A budget some writers of a day did not report (one added mid-window, a rolling
deploy) is that day's sum of their breakdowns' matching items. Version 2 read
every writer's whole breakdown for every such day at every `start()`; stores with
`budget_day_spend(days, budgets, *, closed_before)` give the sums instead:
PostgreSQL and Supabase in SQL (otel_budget_budget_spend), kept per (day, budget)
in a `budget_share` row keyed by a hash of the budget's name and match and
checked against a fingerprint of the day's aggregate, so a late entry of a closed
day is never missed; SQLite and memory compute them in Python.

`incomplete_day_entries` is what the tracker calls: the entries of the days some
writer left a budget out of, where every closed day is one summary entry carrying
every budget's spend (fleet.from_load sums entries, so one entry per day is
exact), and today is read whole as before.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ..errors import CorruptRowError
from .base import BudgetEntriesStore, BudgetStore, SummingStore
from .layout import SHARE_TYPE as SHARE_TYPE  # kept importable here

if TYPE_CHECKING:
    from ..budgets import Budget

#: writer_id of the one entry standing for a closed day's writers.
CLOSED_DAY_WRITER = "(closed day: budgets precomputed in the store)"
_WILDCARDS = frozenset("*?[")


def budget_key(budget: Budget) -> str:
    """The hash a budget's kept shares are found by: its name (a writer's own figure
    is looked up by name) and its match."""
    text = json.dumps([budget.name, _match_pairs(budget)], sort_keys=True, default=repr)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def _match_pairs(budget: Budget) -> list[list[Any]]:
    return [[key, sorted(values, key=repr)] for key, values in budget.match_rules]


def budget_spec(budget: Budget) -> dict[str, Any] | None:
    """The budget as otel_budget_budget_spend takes it: {"name", "key", "match":
    [[attribute, [exact JSON values], [LIKE patterns]], ...]}, or None when SQL
    cannot mirror its match exactly (a `[...]` pattern: read the breakdowns)."""
    rules: list[list[Any]] = []
    for key, values in budget.match_rules:
        exact: list[Any] = []
        likes: list[str] = []
        for value in sorted(values, key=repr):
            exact.extend(_twins(value))
            if isinstance(value, str) and not _WILDCARDS.isdisjoint(value):
                if "[" in value:
                    return None
                likes.append(_glob_to_like(value))
        rules.append([key, exact, likes])
    return {"name": budget.name, "key": budget_key(budget), "match": rules}


def _twins(value: Any) -> list[Any]:
    # Python's `in` finds True for 1 and 1 for True; JSON tells them apart.
    if value is True or (not isinstance(value, (bool, str)) and value == 1):
        return [value, True, 1] if not isinstance(value, bool) else [True, 1]
    if value is False or (not isinstance(value, (bool, str)) and value == 0):
        return [value, False, 0] if not isinstance(value, bool) else [False, 0]
    return [value]


def _glob_to_like(pattern: str) -> str:
    out = []
    for char in pattern:
        if char == "*":
            out.append("%")
        elif char == "?":
            out.append("_")
        elif char in "%_\\":
            out.append("\\" + char)
        else:
            out.append(char)
    return "".join(out)


def day_spend_from_entries(
    entries: Iterable[Mapping[str, Any]], budgets: Sequence[Budget],
) -> dict[str, dict[str, float]]:
    """{day: {budget: spend}} over well-formed entries (a writer's own figure, else
    its breakdown's share): the Python reference of otel_budget_budget_spend."""
    from ..fleet import entry_budget_spend, entry_problem
    from ..money import round_usd

    out: dict[str, dict[str, float]] = {}
    for entry in entries:
        if not isinstance(entry, Mapping) or entry_problem(entry) is not None:
            continue
        day = out.setdefault(str(entry.get("date")), {b.name: 0.0 for b in budgets})
        for budget in budgets:
            day[budget.name] = round_usd(day[budget.name] + entry_budget_spend(entry, budget))
    return out


def check_spend_answer(value: Any, days: Sequence[str], names: Sequence[str]) -> dict[
        str, dict[str, float]]:
    """otel_budget_budget_spend's answer: every day and budget asked, numbers only;
    a day answered null (left for the next call) is left out."""
    if not isinstance(value, dict):
        raise CorruptRowError(f"otel_budget_budget_spend answered {str(value)[:80]!r}")
    out: dict[str, dict[str, float]] = {}
    for day in days:
        row = value.get(day)
        if day in value and row is None:
            continue
        if not isinstance(row, dict) or any(
                isinstance(row.get(n), bool) or not isinstance(row.get(n), (int, float))
                for n in names):
            raise CorruptRowError(f"otel_budget_budget_spend answered {str(row)[:80]!r} "
                                  f"for {day}")
        out[day] = {n: float(row[n]) for n in names}
    return out


def incomplete_day_entries(
    store: BudgetStore, days: Sequence[str], totals: Mapping[str, Mapping[str, Any]],
    budgets: Sequence[Budget], *, today: str,
) -> list[dict[str, Any]]:
    """The writer entries `fleet.from_load` needs for `days` (the days some writer
    left a budget out of): today's writer by writer (`open_day_entries`); each
    closed day as one entry holding every budget's spend, from the store's
    `budget_day_spend` (a SummingStore; else the day's entries, read whole, as
    before)."""
    closed = [d for d in days if d < today]
    rest = [d for d in days if d >= today]
    if closed and isinstance(store, SummingStore):
        try:
            spend = store.budget_day_spend(closed, budgets, closed_before=today)
        except NotImplementedError:
            spend = None
        if spend is not None:
            entries = [_closed_day_entry(d, totals[d], spend[d]) for d in closed]
            return entries + open_day_entries(store, rest, budgets)
    return ((list(store.writer_entries(closed)) if closed else [])
            + open_day_entries(store, rest, budgets))


def open_day_entries(store: BudgetStore, days: Sequence[str],
                     budgets: Sequence[Budget]) -> list[dict[str, Any]]:
    """The writer entries of days still being written (today), one per writer: from
    the store's `writer_budget_entries` (a BudgetEntriesStore: every budget an entry
    lacks computed from its breakdown in the store, the breakdowns not sent), else
    read whole."""
    if not days:
        return []
    if isinstance(store, BudgetEntriesStore):
        try:
            return list(store.writer_budget_entries(days, budgets))
        except NotImplementedError:  # a match SQL cannot mirror
            pass
    return list(store.writer_entries(list(days)))


def _closed_day_entry(day: str, totals: Mapping[str, Any],
                      spend: Mapping[str, float]) -> dict[str, Any]:
    return {"date": day, "writer_id": CLOSED_DAY_WRITER, "instance_id": CLOSED_DAY_WRITER,
            "seq": 0, "updated_at": str(totals.get("updated_at") or ""),
            "spend_usd": float(totals["total_usd"]), "by_budget": dict(spend)}
