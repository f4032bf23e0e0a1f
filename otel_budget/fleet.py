"""FleetView: what the rest of the fleet had spent, as last read. Immutable.

Built by pure functions from store reads (a day's totals, writer entries, the
version 1 document) and swapped whole by the tracker under its state lock, so a
reader never sees half of one read and half of another. No I/O here: tests build
views from plain dicts.

The rules it keeps:

- *Never blind.* A writer's entry without a budget (a writer with an older
  configuration, in a rolling deploy) still counts for that budget, from the
  entry's breakdown, at every read: load and merge alike.
- *Quarantine, never zero.* A stored row whose amounts are not amounts is left
  out and named; the rest of the fleet counts. What that writer was last known to
  have spent is carried while its row stays quarantined (from its last good entry
  when one was read, else from how much the others' sum fell when the row went
  bad), so a hard cap does not forget it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import date
from types import MappingProxyType
from typing import Any

from . import ledger, money
from .budgets import Budget
from .stores import legacy
from .stores.entries import DayTotals, amounts_problem, summary_quarantine_name, writer_row_name

_EMPTY: Mapping[str, float] = MappingProxyType({})

#: Where a view's numbers came from.
SOURCE_NONE = "none"
SOURCE_STORE = "store"
SOURCE_LOCAL = "local copy"


def _frozen(values: Mapping[str, float]) -> Mapping[str, float]:
    return MappingProxyType({k: money.round_usd(v) for k, v in sorted(values.items())})


@dataclass(frozen=True)
class Spend:
    """One writer's (or a group's) spend on a day: the total and each budget's."""

    total_usd: float = 0.0
    by_budget: Mapping[str, float] = field(default_factory=lambda: _EMPTY)
    #: The writer entry's seq it was computed from (one writer's spend), else None.
    seq: int | None = None

    @staticmethod
    def of(total_usd: float, by_budget: Mapping[str, float]) -> Spend:
        return Spend(money.round_usd(total_usd), _frozen(by_budget))

    def budget(self, name: str) -> float:
        return float(self.by_budget.get(name, 0.0))

    def plus(self, other: Spend) -> Spend:
        names = set(self.by_budget) | set(other.by_budget)
        return Spend.of(self.total_usd + other.total_usd,
                        {n: self.budget(n) + other.budget(n) for n in names})

    def as_json(self) -> dict[str, Any]:
        return {"total_usd": self.total_usd, "by_budget": dict(self.by_budget)}


@dataclass(frozen=True)
class FleetView:
    """Every budget's spend by the fleet's other writers, for the windows of `day`."""

    day: date | None = None
    #: Today's other writers, as stored (quarantined rows left out).
    others: Spend = field(default_factory=Spend)
    #: Today's version 1 day document, if any.
    legacy: Spend = field(default_factory=Spend)
    #: Each budget's spend on the days of its window before today (every writer).
    prior: Mapping[str, float] = field(default_factory=lambda: _EMPTY)
    #: Today's other writers one by one (row name -> spend), when their entries were read.
    writers: Mapping[str, Spend] = field(default_factory=lambda: MappingProxyType({}))
    #: Row names left out of the sums because they are malformed.
    quarantined: tuple[str, ...] = ()
    #: Today's quarantined rows' last known good spend, kept while they stay bad.
    carried: Mapping[str, Spend] = field(default_factory=lambda: MappingProxyType({}))
    source: str = SOURCE_NONE
    #: Wall-clock time (ISO) the numbers were read from the store.
    read_at: str | None = None
    #: True when today's numbers hold budgets some writer left out and whose
    #: breakdowns were not read (an estimate until they are).
    estimated: bool = False

    def others_total(self) -> float:
        carried = sum(s.total_usd for s in self.carried.values())
        return money.round_usd(self.others.total_usd + self.legacy.total_usd + carried)

    def others_budget(self, name: str) -> float:
        carried = sum(s.budget(name) for s in self.carried.values())
        return money.round_usd(self.others.budget(name) + self.legacy.budget(name) + carried)

    def prior_budget(self, name: str) -> float:
        return float(self.prior.get(name, 0.0))

    def window_budget(self, name: str) -> float:
        """The others' spend on budget `name` over its whole window up to today."""
        return money.round_usd(self.prior_budget(name) + self.others_budget(name))


# --- pieces ---------------------------------------------------------------------------


def entry_budget_spend(entry: Mapping[str, Any], budget: Budget) -> float:
    """What a writer entry spent on `budget`: its own figure when it has one, else its
    share of the entry's breakdown (the writer's configuration lacked the budget)."""
    by_budget = entry.get("by_budget") or {}
    if budget.name in by_budget:
        return float(by_budget[budget.name])
    return ledger.spend_of_breakdown(entry.get("by_attributes") or [], budget.matches)


def entry_problem(entry: Any) -> str | None:
    """What makes a read writer entry unfit to count (amounts or breakdown), or None."""
    problem = amounts_problem(entry)
    if problem is not None:
        return problem
    items = entry.get("by_attributes")
    if items is None:
        return None
    if not isinstance(items, list):
        return "by_attributes must be a list"
    for item in items:
        if (not isinstance(item, Mapping) or not isinstance(item.get("attributes", {}), Mapping)
                or amounts_problem({"spend_usd": item.get("spend_usd")}) is not None):
            return "a by_attributes item is malformed"
    return None


def entry_row_name(entry: Mapping[str, Any]) -> str | None:
    day, writer = entry.get("date"), entry.get("writer_id")
    if isinstance(day, str) and isinstance(writer, str):
        return writer_row_name(day, writer)
    return None


def sort_entries(
    entries: Iterable[Any], *, exclude_writer: str | None = None,
) -> tuple[dict[str, list[Mapping[str, Any]]], list[str]]:
    """Entries by date, well-formed ones only, leaving `exclude_writer` out; and the
    row names of the malformed ones."""
    by_day: dict[str, list[Mapping[str, Any]]] = {}
    bad: list[str] = []
    for entry in entries:
        if not isinstance(entry, Mapping):
            continue
        if exclude_writer is not None and entry.get("writer_id") == exclude_writer:
            continue
        if entry_problem(entry) is not None:
            name = entry_row_name(entry)
            if name is not None:
                bad.append(name)
            continue
        by_day.setdefault(str(entry.get("date")), []).append(entry)
    return by_day, bad


def spend_of_entry(entry: Mapping[str, Any], budgets: Sequence[Budget]) -> Spend:
    seq = entry.get("seq")
    spend = Spend.of(float(entry["spend_usd"]),
                     {b.name: entry_budget_spend(entry, b) for b in budgets})
    if isinstance(seq, int) and not isinstance(seq, bool):
        spend = replace(spend, seq=seq)
    return spend


def lacks_budgets(entry: Mapping[str, Any], budgets: Sequence[Budget]) -> bool:
    """True when the entry has no figure of its own for one of `budgets`."""
    own = entry.get("by_budget")
    return not isinstance(own, Mapping) or any(b.name not in own for b in budgets)


def fill_from_cache(
    entry: Mapping[str, Any], view: FleetView, budgets: Sequence[Budget],
) -> dict[str, Any] | None:
    """`entry` (read without its breakdown) with every budget's figure from the view's
    copy of the same writer at the same seq (the same seq is the same content), or
    None when the view has no such copy."""
    name = entry_row_name(entry)
    cached = view.writers.get(name) if name is not None else None
    if cached is None or cached.seq is None or cached.seq != entry.get("seq"):
        return None
    return {**entry, "by_budget": {b.name: cached.budget(b.name) for b in budgets}}


def incomplete(totals: DayTotals, budgets: Sequence[Budget]) -> bool:
    """True when some writer of the day has no figure of its own for some budget."""
    counts = totals.get("budget_writers") or {}
    return any(int(counts.get(b.name, 0)) < int(totals["writers"]) for b in budgets)


def spend_of_totals(totals: DayTotals, budgets: Sequence[Budget]) -> Spend:
    return Spend.of(float(totals["total_usd"]),
                    {b.name: float(totals["by_budget"].get(b.name, 0.0)) for b in budgets})


def legacy_spend(document: Mapping[str, Any] | None, budgets: Sequence[Budget]) -> Spend:
    """A version 1 day document (validated) as spend: every budget from its breakdown,
    a budget without `match` from its total."""
    if not document:
        return Spend()
    total = legacy.document_total(document)
    items = [item for e in (document.get("instances") or {}).values()
             for item in e.get("by_attributes", [])]
    return Spend.of(total, {
        b.name: total if b.match is None else ledger.spend_of_breakdown(items, b.matches)
        for b in budgets})


def _minus(a: Spend, b: Spend) -> Spend:
    names = set(a.by_budget) | set(b.by_budget)
    return Spend.of(max(0.0, a.total_usd - b.total_usd),
                    {n: max(0.0, a.budget(n) - b.budget(n)) for n in names})


def carry_quarantined(
    prev: FleetView, day: date, others: Spend, quarantined: Sequence[str],
) -> dict[str, Spend]:
    """What to keep counting for today's quarantined rows. A row carried before keeps
    what it carried. A row newly quarantined carries its last good entry when one was
    read, and at least the fall of the others' sum since the last read (a lower bound
    of what the rows going bad held: the rest of the fleet only grows)."""
    today = f"budget_{day.isoformat()}/"
    names = [n for n in quarantined if n.startswith(today)]
    if prev.source != SOURCE_STORE:
        return {}  # nothing read of the store to carry (a local copy holds no rows)
    if prev.day != day:
        return {n: prev.writers[n] for n in names if n in prev.writers}
    carried = {n: prev.carried[n] for n in names if n in prev.carried}
    new = [n for n in names if n not in prev.carried]
    if not new:
        return carried
    known = {n: prev.writers[n] for n in new if n in prev.writers}
    carried.update(known)
    fell = _minus(_minus(prev.others, others), _sum(known.values()))
    if fell.total_usd > 0 or any(v > 0 for v in fell.by_budget.values()):
        carried[new[0]] = carried.get(new[0], Spend()).plus(fell)
    return carried


def _sum(spends: Iterable[Spend]) -> Spend:
    out = Spend()
    for spend in spends:
        out = out.plus(spend)
    return out


# --- building views --------------------------------------------------------------------


def from_load(
    prev: FleetView, *, day: date, budgets: Sequence[Budget],
    totals: Mapping[str, DayTotals], entries: Iterable[Any], legacy: Mapping[str, Any] | None,
    writer_id: str, own: Mapping[str, Any] | None, read_at: str,
    legacy_quarantined: Sequence[str] = (),
) -> FleetView:
    """The view after reading every budget's window up to `day`: `totals` for each of
    those days, `entries` of the days some writer left a budget out of (any writer,
    ours included: left out here for today only), `legacy` today's version 1
    document, `own` this writer's entry as the store holds it (or None)."""
    by_day, bad = sort_entries(entries)
    quarantined = sorted({n for t in totals.values() for n in t.get("quarantined", [])}
                         | set(bad) | set(legacy_quarantined))
    today = day.isoformat()

    def day_spend(name: str, *, others_only: bool) -> tuple[Spend, dict[str, Spend]]:
        day_totals = totals[name]
        if not incomplete(day_totals, budgets):
            spend = spend_of_totals(day_totals, budgets)
            if others_only and own:
                spend = _minus(spend, spend_of_entry(own, budgets))
            return spend, {}
        writers = {
            str(entry_row_name(e)): spend_of_entry(e, budgets)
            for e in by_day.get(name, [])
            if not (others_only and e.get("writer_id") == writer_id)
        }
        return _sum(writers.values()), writers

    prior: dict[str, float] = {}
    for budget in budgets:
        prior[budget.name] = sum(
            day_spend(d.isoformat(), others_only=False)[0].budget(budget.name)
            for d in ledger.window_days_before(day, budget.period))
    others, writers = day_spend(today, others_only=True)
    carried = carry_quarantined(prev, day, others, quarantined)
    return FleetView(
        day=day, others=others, legacy=legacy_spend(legacy, budgets), prior=_frozen(prior),
        writers=MappingProxyType(writers), quarantined=tuple(quarantined),
        carried=MappingProxyType(carried), source=SOURCE_STORE, read_at=read_at,
    )


def after_merge(
    prev: FleetView, *, day: date, budgets: Sequence[Budget], others: DayTotals,
    entries: Iterable[Any] | None, writer_id: str, read_at: str,
) -> FleetView:
    """The view after a merge of this writer's entry for `day` answered with the day's
    other writers' totals `others`. When some of them left a budget out, `entries`
    (today's writer entries, read after the merge) give every budget exactly; without
    them the last figure of such a budget is kept (and the view marked estimated)."""
    if prev.day != day:
        return prev  # the view moved to another day; the next load reads this one
    quarantined = set(others.get("quarantined", []))
    writers: Mapping[str, Spend] = prev.writers
    estimated = False
    if not incomplete(others, budgets):
        spend = spend_of_totals(others, budgets)
    elif entries is not None:
        by_day, bad = sort_entries(entries, exclude_writer=writer_id)
        quarantined |= set(bad)
        per_writer = {str(entry_row_name(e)): spend_of_entry(e, budgets)
                      for e in by_day.get(day.isoformat(), [])}
        spend = _sum(per_writer.values())
        writers = MappingProxyType(per_writer)
    else:
        complete = spend_of_totals(others, budgets)
        counts = others.get("budget_writers") or {}
        spend = Spend.of(complete.total_usd, {
            b.name: complete.budget(b.name)
            if int(counts.get(b.name, 0)) >= int(others["writers"])
            else max(complete.budget(b.name), prev.others.budget(b.name))
            for b in budgets})
        estimated = True
    names = sorted(quarantined)
    carried = carry_quarantined(prev, day, spend, names)
    # A merge answers for today's rows (writer rows and the summary row); what a
    # load named of other days stays until the next load.
    todays = (f"budget_{day.isoformat()}/", summary_quarantine_name(day.isoformat()))
    return replace(prev, others=spend, writers=writers, quarantined=tuple(
        sorted(set(names) | {n for n in prev.quarantined if not n.startswith(todays)})),
        carried=MappingProxyType(carried), source=SOURCE_STORE, read_at=read_at,
        estimated=estimated)


def rolled(prev: FleetView, new_day: date, prior: Mapping[str, float]) -> FleetView:
    """The view on the first day after `prev.day`, before anything was read of it:
    `prior` is each budget's spend carried over in its window (zero for a new one)."""
    return FleetView(day=new_day, prior=_frozen(prior), source=SOURCE_NONE,
                     read_at=prev.read_at)


__all__ = [
    "SOURCE_LOCAL", "SOURCE_NONE", "SOURCE_STORE", "FleetView", "Spend", "after_merge",
    "carry_quarantined", "entry_budget_spend", "fill_from_cache", "from_load", "incomplete",
    "lacks_budgets", "legacy_spend", "rolled", "sort_entries", "spend_of_entry",
]
