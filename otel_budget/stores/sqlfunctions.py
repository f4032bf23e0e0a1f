"""What the PostgreSQL and Supabase stores share: both call the SQL functions of
`schema.sql`, so both check and shape their arguments the same way first."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from ..errors import CheckpointError, CorruptRowError, StoreError
from .base import dumps_jsonb, jsonb_text
from .entries import (
    DayTotals,
    MergeResult,
    empty_totals,
    normalize_writer_entry,
    plain_writer_entry,
    totals_from_json,
)
from .shares import budget_spec, check_spend_answer

if TYPE_CHECKING:
    from ..budgets import Budget

_log = logging.getLogger(__name__)

#: SQLSTATEs schema.sql raises on purpose: a malformed argument, a malformed stored
#: document. Both mean CheckpointError; neither is worth a retry.
BAD_ARGUMENT = "OB001"
BAD_DOCUMENT = "OB002"
CHECKPOINT_SQLSTATES = frozenset({BAD_ARGUMENT, BAD_DOCUMENT})

MIGRATE_HINT = "apply the schema first: otel-budget migrate, or schema.sql in the SQL editor"


#: In jsonb_text's output (ASCII: every other character is escaped, in lowercase
#: hex), what a string jsonb refuses leaves: NUL, and a surrogate (lone, or half of a
#: pair: a character beyond the BMP is written as two of them, and looked at closer).
_REFUSED_ESCAPE = re.compile(r"\\u(?:0000|d[89a-f])")


def prepare_writer_entry(entry: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """Check and round the entry as every store does, before any I/O (the same
    CheckpointError as the other stores). Rounded here: the SQL rounds a decimal,
    Python a binary float, and the two differ on exact ties. Returns the entry and
    its JSON text for a jsonb argument (serialised once).

    The usual entry takes plain_writer_entry's shorter checks, the rest of them done
    on its JSON text: json refuses NaN and inf anywhere, and a string jsonb would
    refuse shows as an escape. Anything it does not take (unusual or malformed)
    takes normalize_writer_entry, which gives the same result or names the problem."""
    checked = plain_writer_entry(entry)
    if checked is not None:
        try:
            text = jsonb_text(checked)
        except (TypeError, ValueError):  # NaN or inf, say: named below
            pass
        else:
            if "\\u" not in text or _REFUSED_ESCAPE.search(text) is None:
                return checked, text
    checked = normalize_writer_entry(entry, where="writer entry")
    return checked, dumps_jsonb(checked)


def days_totals(days: list[str], value: Any) -> dict[str, DayTotals]:
    """The answer of otel_budget_day_totals as {day: DayTotals}, every day present."""
    if not isinstance(value, dict):
        raise CorruptRowError(
            f"otel_budget_day_totals answered {type(value).__name__}, expected an object"
        )
    return {day: totals_from_json(day, value.get(day, empty_totals(day))) for day in days}


def merge_result(value: Any, day: str) -> MergeResult:
    """The answer of otel_budget_merge_writer as a MergeResult."""
    if not isinstance(value, dict) or not isinstance(value.get("applied"), bool):
        raise CorruptRowError(
            f"otel_budget_merge_writer answered {str(value)[:80]!r}, expected an object"
        )
    return {
        "applied": value["applied"],
        "stored_seq": int(value["stored_seq"]),
        "others": totals_from_json(day, value.get("others")),
    }


def entry_list(value: Any) -> list[dict[str, Any]]:
    """The answer of otel_budget_writer_entries: a list of objects."""
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise CorruptRowError(
            f"otel_budget_writer_entries answered {str(value)[:80]!r}, expected a list of objects"
        )
    return value


def entry_list_of_names(value: Any) -> list[str]:
    """The answer of otel_budget_reap: a list of row names."""
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise CorruptRowError(
            f"otel_budget_reap answered {str(value)[:80]!r}, expected a list of row names"
        )
    return value


def reap_one_at_a_time(reap_one: Callable[[], Any], limit: int) -> list[str]:
    """reap_stale over either transport: `reap_one` calls otel_budget_reap for one
    row (its answer: the names it retired), until none is left or `limit` are.
    One row per transaction: the lock order of retire_writer (the writer's row, its
    shard, the day's summary row), so a reaper never deadlocks a shutdown."""
    reaped: list[str] = []
    for _ in range(limit):
        names = entry_list_of_names(reap_one())
        if not names:
            break
        reaped += names
    return reaped


def reap_quietly(reap: Callable[[float], list[str]], stale_after_s: float) -> None:
    """The reaper piggybacked on a merge: a merge never fails because the reaper
    did (it runs again next time)."""
    try:
        reaped = reap(stale_after_s)
    except (StoreError, CheckpointError) as exc:
        _log.info("otel_budget: reaping stale writer rows failed: %s", exc)
        return
    if reaped:
        _log.info("otel_budget: retired %d writer rows not written for %g s",
                  len(reaped), stale_after_s)


def budget_specs(budgets: Sequence[Budget]) -> list[dict[str, Any]]:
    """The budgets as otel_budget_budget_spend takes them; NotImplementedError for a
    match SQL cannot mirror (the caller reads the entries instead)."""
    specs: list[dict[str, Any]] = []
    for budget in budgets:
        spec = budget_spec(budget)
        if spec is None:
            raise NotImplementedError("a budget's match has a [...] pattern")
        specs.append(spec)
    return specs


def spend_in_rounds(ask: Callable[[list[str]], Any], days: list[str],
                    names: list[str]) -> dict[str, dict[str, float]]:
    """budget_day_spend over either transport: `ask(days)` calls
    otel_budget_budget_spend for the days still missing. Each call computes for about
    a second and keeps what it computed; the days it left (null) are asked again, so
    a long window never meets the statement timeout."""
    out: dict[str, dict[str, float]] = {}
    while len(out) < len(days):
        left = [d for d in days if d not in out]
        got = check_spend_answer(ask(left), left, names)
        if not got:
            raise CheckpointError("otel_budget_budget_spend computed no day")
        out.update(got)
    return {d: out[d] for d in days}


def as_object(value: Any, *, patch_type: str, name: str) -> dict[str, Any]:
    """A row's content as returned by the database, or CheckpointError naming the row."""
    if not isinstance(value, dict):
        raise CorruptRowError(
            f"row {patch_type}/{name} holds {type(value).__name__}, expected a JSON object"
        )
    return value
