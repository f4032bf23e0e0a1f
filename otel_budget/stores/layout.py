"""The row layout of `quilt_patches`: every row type the library reads or writes, and
how each row is named. Pure: constants and name builders only.

Every store, and every module that names a row (ledger, alerts, leases, per-key
budgets, read), takes them from here; SQL is built from these constants or is
given them as parameters (schema.sql spells them too: a test checks they agree).

| patch_type       | name                                   | content                        |
|------------------|----------------------------------------|--------------------------------|
| `budget_writer`  | `budget_{date}/{writer_id}`            | one writer's entry of a day    |
| `budget_summary` | `budget_{date}`                        | the day's retired writers      |
| `budget`         | `budget_{date}`                        | version 1 day document (read)  |
| `sibling_nudge`  | `budget_alert_[{budget}_]{window}_{pct}` | an alert's claim and nudge   |
| `budget_lease`   | `lease_{budget}_{window}`              | a fleet budget's leases        |
| `budget_share`   | `share_{date}_{key}`                   | a budget's share of a closed day |
| `budget_figures` | `figures_{date}/{writer_id}/{key}`     | a writer row's budgets, kept   |

A per-key budget's key goes by `{budget}~{hash}` in lease and alert rows; a writer
entry carries its keys' spend under `by_key`.
"""

from __future__ import annotations

from ..budgets import DAILY

#: One writer's entry of one day (each writer owns its row; nobody else writes it).
WRITER_TYPE = "budget_writer"
#: One row per day (`name='budget_YYYY-MM-DD'`) summing the day's retired writer rows.
SUMMARY_TYPE = "budget_summary"
#: Version 1 day documents (`name='budget_YYYY-MM-DD'`): still read, never written.
LEGACY_TYPE = "budget"
#: An alert's claim, which is also the nudge sent to the sibling agent.
NUDGE_TYPE = "sibling_nudge"
#: One row per fleet budget and window: its leases (otel_budget.leases).
LEASE_TYPE = "budget_lease"
#: A closed day's spend of one budget, computed in the store and kept (stores.shares).
SHARE_TYPE = "budget_share"
#: A writer row version's answer to otel_budget_writer_budget_entries (its budgets
#: computed from its breakdown), kept in the store so start() reads it once.
FIGURES_TYPE = "budget_figures"

#: A writer entry's spend per key of each per-key budget: {budget: {key_json: usd}}.
KEY_FIELD = "by_key"
#: Between a per-key budget's name and its key's hash in lease and alert rows
#: (budget names cannot hold it, so no budget's rows collide with a key's).
KEY_SEP = "~"

def writer_row_name(day: str, writer_id: str) -> str:
    return f"budget_{day}/{writer_id}"


def summary_row_name(day: str) -> str:
    """The day's summary row; also the name of version 1's day document."""
    return f"budget_{day}"


def lease_row_name(budget: str, window: str) -> str:
    return f"lease_{budget}_{window}"


def share_row_name(day: str, key: str) -> str:
    return f"share_{day}_{key}"


def figures_row_name(day: str, writer_id: str, key: str) -> str:
    """Where otel_budget_writer_budget_entries keeps a writer row's answer (`key`:
    the md5 of the budgets asked, as the SQL spells them)."""
    return f"figures_{day}/{writer_id}/{key}"


def ratio_pct(ratio: float) -> str:
    """0.8 -> '80', 0.825 -> '82.5' (the nudge row's suffix)."""
    return format(round(ratio * 100, 2), "g")


def nudge_row_name(budget: str, window: str, ratio: float) -> str:
    """The "daily" budget keeps version 1's `budget_alert_{date}_{pct}`."""
    if budget == DAILY:
        return f"budget_alert_{window}_{ratio_pct(ratio)}"
    return f"budget_alert_{budget}_{window}_{ratio_pct(ratio)}"


__all__ = [
    "FIGURES_TYPE", "KEY_FIELD", "KEY_SEP", "LEASE_TYPE", "LEGACY_TYPE", "NUDGE_TYPE", "SHARE_TYPE",
    "SUMMARY_TYPE", "WRITER_TYPE", "figures_row_name", "lease_row_name", "nudge_row_name",
    "ratio_pct", "share_row_name", "summary_row_name", "writer_row_name",
]
