"""Writer rows: their validation, and the sum of a day (their types and names:
layout.py).

Pure: no I/O. Every store validates with `validate_writer_entry` before it writes,
and `summarize` is the reference the SQL aggregates are tested against.

A *writer* is one recording process (a fresh random id at each start and after a
fork); it owns exactly one row per day, `(WRITER_TYPE, writer_row_name(day, id))`,
and nobody else ever writes it. An *instance* is the human label grouping writers.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Callable, Iterable, Mapping
from datetime import date as _date
from decimal import Decimal
from typing import Any, NamedTuple, TypedDict, TypeGuard

from ..errors import CheckpointError, CorruptRowError, InvalidEntryError
from ..money import MAX_STORED_USD as MAX_STORED_USD
from ..money import is_stored_amount, round_usd

# The row types and names live in layout.py; importable from here as before.
from .layout import LEGACY_TYPE as LEGACY_TYPE
from .layout import SUMMARY_TYPE as SUMMARY_TYPE
from .layout import WRITER_TYPE as WRITER_TYPE
from .layout import summary_row_name as summary_row_name
from .layout import writer_row_name as writer_row_name

MAX_ID_CHARS = 200
_DECIMALS = 9
_DAY = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")


class DayTotals(TypedDict):
    date: str
    total_usd: float
    writers: int
    updated_at: str | None
    by_budget: dict[str, float]
    budget_writers: dict[str, int]
    #: Names of the day's writer rows left out of the sums because an amount they
    #: hold is not one (quarantined: named, never counted as 0, never fatal).
    quarantined: list[str]


class MergeResult(TypedDict):
    applied: bool
    stored_seq: int
    others: DayTotals


def is_day(value: Any) -> bool:
    if not isinstance(value, str) or not _DAY.match(value):
        return False
    try:
        _date.fromisoformat(value)
    except ValueError:
        return False
    return True


#: A stored amount: a finite number >= 0 and <= MAX_STORED_USD (not a bool).
is_amount = is_stored_amount


def _string_problem(value: str) -> str | None:
    if "\x00" in value:
        return "contains a NUL character"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "contains a lone surrogate"
    return None


#: The types `_plainly_clean` knows (exactly these: a subclass is left to the walk).
_KNOWN = frozenset({dict, list, tuple, str, float, int, bool, type(None)})
_TEXT = frozenset({str})
#: Beyond these, `_plainly_clean` leaves the entry to the walk (no entry is so deep
#: or so big; a structure holding itself is).
_MAX_DEPTH = 64
_MAX_ITEMS = 4_000_000


def _plainly_clean(value: Any) -> bool:
    """True if `_strings_walk` would find nothing in `value`, found with C-level
    passes: a writer entry of 10,000 per-key items holds 20,000 strings, and the
    walk costs a microsecond a string (a sixth of a checkpoint). The containers are
    entered a depth at a time (all dicts and lists of a depth together); every
    string is joined into one text, searched for NUL and encoded once; the floats
    are summed (a NaN or an infinity makes the sum non-finite). False means "look
    closer", never "bad": anything unusual (a subclass, another type, a sum that
    overflows, a depth or size no entry has) is left to the walk, which names it."""
    chain = itertools.chain.from_iterable
    texts: list[str] = []
    level: list[Any] = [value]
    for _ in range(_MAX_DEPTH):
        kinds = set(map(type, level))
        if not kinds <= _KNOWN:
            return False
        if str in kinds:
            texts += filter(str.__instancecheck__, level)
        if float in kinds and not math.isfinite(
                sum(filter(float.__instancecheck__, level), 0.0)):
            return False
        deeper: list[Any] = []
        if dict in kinds:
            dicts = list(filter(dict.__instancecheck__, level))
            if not set(map(type, chain(dicts))) <= _TEXT:
                return False
            texts += chain(dicts)
            deeper += chain(map(dict.values, dicts))
        if list in kinds:
            deeper += chain(filter(list.__instancecheck__, level))
        if tuple in kinds:
            deeper += chain(filter(tuple.__instancecheck__, level))
        if not deeper:
            break
        if len(deeper) > _MAX_ITEMS:
            return False
        level = deeper
    else:
        return False
    text = "".join(texts)
    if "\x00" in text:
        return False
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            return False
    return True


def _strings_problem(value: Any, path: str) -> str | None:
    """The first string (key or value, at any depth) PostgreSQL's jsonb would refuse."""
    if _plainly_clean(value):
        return None
    return _strings_walk(value, path)


def _strings_walk(value: Any, path: str) -> str | None:
    if isinstance(value, str):
        problem = _string_problem(value)
        return f"{path} {problem}" if problem else None
    if isinstance(value, Mapping):
        for key, item in value.items():
            if isinstance(key, str) and (problem := _string_problem(key)):
                return f"a key in {path} {problem}"
            if not isinstance(key, str):
                return f"{path} has a non-string key {key!r:.40}"
            if found := _strings_walk(item, f"{path}.{key}"):
                return found
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            if found := _strings_walk(item, f"{path}[{i}]"):
                return found
    elif isinstance(value, float) and not math.isfinite(value):
        return f"{path} is {value}, not JSON"
    return None


def writer_entry_problem(entry: Any) -> str | None:
    """None if `entry` is a well-formed writer entry, else what is wrong with it."""
    if not isinstance(entry, dict):
        return f"entry is {type(entry).__name__}, expected an object"
    if not is_day(entry.get("date")):
        return f"date must be a 'YYYY-MM-DD' string, got {entry.get('date')!r:.60}"
    for key in ("writer_id", "instance_id"):
        value = entry.get(key)
        if not isinstance(value, str) or not value or len(value) > MAX_ID_CHARS:
            return f"{key} must be a non-empty string of at most {MAX_ID_CHARS} characters"
    if not is_amount(entry.get("spend_usd")):
        return f"spend_usd must be a finite number >= 0, got {entry.get('spend_usd')!r:.60}"
    seq = entry.get("seq")
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
        return f"seq must be an integer >= 0, got {seq!r:.60}"
    if not isinstance(entry.get("updated_at"), str):
        return "updated_at must be a string"
    if "timezone" in entry and not isinstance(entry["timezone"], str):
        return "timezone must be a string"
    if "final" in entry and not isinstance(entry["final"], bool):
        return f"final must be true or false, got {entry['final']!r:.60}"
    if "retired" in entry and entry["retired"] is not True:
        return f"retired must be true when present, got {entry['retired']!r:.60}"
    if "by_attributes" in entry:
        items = entry["by_attributes"]
        if not isinstance(items, list):
            return "by_attributes must be a list"
        for i, item in enumerate(items):
            if (
                not isinstance(item, dict)
                or not isinstance(item.get("attributes"), dict)
                or not is_amount(item.get("spend_usd"))
            ):
                return f"by_attributes[{i}] must be {{'attributes': dict, 'spend_usd': number >= 0}}"
    if "by_budget" in entry:
        budgets = entry["by_budget"]
        if not isinstance(budgets, dict):
            return "by_budget must be an object"
        for key, value in budgets.items():
            if not isinstance(key, str) or not is_amount(value):
                return f"by_budget[{key!r:.60}] must be a finite number >= 0, got {value!r:.60}"
    return _strings_problem(entry, "entry")


def validate_writer_entry(entry: Any, *, where: str) -> dict[str, Any]:
    """`entry` itself if well-formed, else CheckpointError naming `where`."""
    problem = writer_entry_problem(entry)
    if problem is not None:
        raise CheckpointError(f"{where}: {problem}")
    assert isinstance(entry, dict)
    return entry


def normalize_writer_entry(entry: Any, *, where: str) -> dict[str, Any]:
    """A validated copy with every amount rounded to 1e-9: what the stores write.
    `retired` is the store's mark (set by retire_writer), never a writer's."""
    checked = dict(validate_writer_entry(entry, where=where))
    if "retired" in checked:
        raise InvalidEntryError(f"{where}: retired is set by the store (retire_writer), "
                              "not by a writer")
    checked["spend_usd"] = round_usd(checked["spend_usd"])
    if "by_attributes" in checked:
        checked["by_attributes"] = [
            {**item, "spend_usd": round_usd(item["spend_usd"])}
            for item in checked["by_attributes"]
        ]
    if "by_budget" in checked:
        checked["by_budget"] = {k: round_usd(v) for k, v in checked["by_budget"].items()}
    return checked


#: The fields writer_entry_problem checks itself (plain_writer_entry checks them
#: the same way, with exact types).
_CHECKED_FIELDS = frozenset({"date", "writer_id", "instance_id", "spend_usd", "seq",
                             "updated_at", "timezone", "final", "retired", "by_attributes",
                             "by_budget"})
#: Values plain_writer_entry takes as they are (exactly these types): their strings
#: and floats are checked on the JSON text (see it).
_SCALARS = frozenset({str, int, float, bool, type(None)})
_STR_ONLY = frozenset({str})


def _plain_amount(value: Any) -> TypeGuard[float]:
    # is_stored_amount for exactly float and int: NaN and inf fail the comparisons.
    kind = type(value)
    return (kind is float or kind is int) and 0 <= value <= MAX_STORED_USD


def plain_writer_entry(entry: Any) -> dict[str, Any] | None:
    """normalize_writer_entry(entry) for an entry of the shape a meter writes, for
    about a third of its cost (a merge's client CPU is part of what bounds a
    fleet's merges per second on a small database host); None for anything else,
    well-formed or not (a subclass, a field of a type it does not expect, `retired`):
    the caller then takes normalize_writer_entry, which names what is wrong.

    Not checked here, to be checked on the entry's JSON text by the caller (see
    sqlfunctions.prepare_writer_entry): the strings (NUL, lone surrogates) and the
    floats outside the amounts (NaN, inf). Every string and float of the entry is in
    that text; every dict key is a str (checked here: json would write an int key as
    a string)."""
    if type(entry) is not dict:
        return None
    get = entry.get
    writer, instance, seq, spend, date = (get("writer_id"), get("instance_id"), get("seq"),
                                          get("spend_usd"), get("date"))
    if not (type(writer) is str and 0 < len(writer) <= MAX_ID_CHARS
            and type(instance) is str and 0 < len(instance) <= MAX_ID_CHARS
            and type(seq) is int and seq >= 0 and _plain_amount(spend)
            and type(get("updated_at")) is str and type(date) is str and is_day(date)):
        return None
    for key in entry.keys() - _CHECKED_FIELDS:  # the fields no check names
        value = entry[key]
        if type(key) is not str or (type(value) not in _SCALARS and not _plainly_clean(value)):
            return None
    if "retired" in entry or ("timezone" in entry and type(entry["timezone"]) is not str) or (
            "final" in entry and type(entry["final"]) is not bool):
        return None
    checked = dict(entry)
    checked["spend_usd"] = round_usd(spend)
    if "by_attributes" in entry:
        items = entry["by_attributes"]
        if type(items) is not list:
            return None
        attribute_sets: list[dict[str, Any]] = []
        amounts: list[float] = []
        for item in items:
            # Exactly the two fields: their keys are strs, and nothing else is in it.
            if type(item) is not dict or len(item) != 2:
                return None
            attributes, amount = item.get("attributes"), item.get("spend_usd", -1)
            kind = type(amount)  # _plain_amount, inlined: it is the loop of the entry
            if type(attributes) is not dict or not (
                    (kind is float or kind is int) and 0 <= amount <= MAX_STORED_USD):
                return None
            attribute_sets.append(attributes)
            amounts.append(amount)
        chain = itertools.chain.from_iterable
        if not set(map(type, chain(attribute_sets))) <= _STR_ONLY:
            return None
        if not set(map(type, chain(map(dict.values, attribute_sets)))) <= _SCALARS and (
                not _plainly_clean(attribute_sets)):  # a sequence value, say
            return None
        checked["by_attributes"] = [
            {**item, "spend_usd": amount}
            for item, amount in zip(items, map(round_usd, amounts), strict=True)]
    if "by_budget" in entry:
        budgets = entry["by_budget"]
        if type(budgets) is not dict:
            return None
        if not (set(map(type, budgets)) <= _STR_ONLY
                and all(map(_plain_amount, budgets.values()))):
            return None
        checked["by_budget"] = {name: round_usd(amount) for name, amount in budgets.items()}
    return checked


def _exact(value: float) -> Decimal:
    # The decimal the value's JSON text spells: what PostgreSQL's numeric sums.
    return Decimal(repr(value)) if isinstance(value, float) else Decimal(value)


def _to_usd(total: Decimal) -> float:
    return round_usd(float(round(total, _DECIMALS)))


def empty_totals(day: str) -> DayTotals:
    return {"date": day, "total_usd": 0.0, "writers": 0, "updated_at": None,
            "by_budget": {}, "budget_writers": {}, "quarantined": []}


def amounts_problem(entry: Any) -> str | None:
    """What makes a stored writer row unfit for a day's sums (its spend_usd or
    by_budget), or None. Cheaper than writer_entry_problem: only what a sum reads."""
    if not isinstance(entry, Mapping):
        return f"content is {type(entry).__name__}, expected an object"
    if not is_amount(entry.get("spend_usd")):
        return f"spend_usd is {entry.get('spend_usd')!r:.60}, not an amount"
    budgets = entry.get("by_budget")
    if budgets is None:
        return None
    if not isinstance(budgets, Mapping):
        return "by_budget must be an object"
    for key, value in budgets.items():
        if not isinstance(key, str) or not is_amount(value):
            return f"by_budget[{key!r:.60}] is {value!r:.60}, not an amount"
    return None


def summarize(
    day: str, entries: Iterable[Mapping[str, Any]], *, base: Mapping[str, Any] | None = None,
    quarantined: Iterable[str] = (),
) -> DayTotals:
    """The day's totals over `entries` (valid writer entries), plus the summary row
    `base` (valid, see `summary_problem`) if given. Sums are exact decimals of the
    stored JSON numbers, rounded once to 1e-9, as in SQL. `quarantined` names the
    rows the caller left out."""
    total = Decimal(0)
    writers = 0
    updated: str | None = None
    budgets: dict[str, Decimal] = {}
    counts: dict[str, int] = {}
    if base is not None:
        total = _from_nanos(base["spend_nanos"])
        writers = int(base["writers"])
        updated = base.get("updated_at")
        budgets = {k: _from_nanos(v) for k, v in base["by_budget_nanos"].items()}
        counts = {k: int(v) for k, v in base["budget_writers"].items()}
    for entry in entries:
        writers += 1
        total += _exact(entry["spend_usd"])
        stamp = entry.get("updated_at")
        if isinstance(stamp, str) and (updated is None or stamp > updated):
            updated = stamp
        for name, amount in (entry.get("by_budget") or {}).items():
            budgets[name] = budgets.get(name, Decimal(0)) + _exact(amount)
            counts[name] = counts.get(name, 0) + 1
    return {
        "date": day,
        "total_usd": _to_usd(total),
        "writers": writers,
        "updated_at": updated,
        "by_budget": {k: _to_usd(v) for k, v in sorted(budgets.items())},
        "budget_writers": dict(sorted(counts.items())),
        "quarantined": sorted(set(quarantined)),
    }


# --- the day's summary row (retired writers) -----------------------------------------
#
# {"date", "spend_nanos", "writers", "updated_at", "by_budget_nanos", "budget_writers"}:
# the sums of the day's retired writer rows, in integer nano-USD (exact in JSON, in
# SQLite's 64-bit integers and in PostgreSQL's numeric; amounts are rounded to 1e-9
# before they are stored, so a row's nanos are integers). A writer row is added once,
# when retire_writer marks it `"retired": true`; from then on the day's totals are
# the summary row plus the rows not retired.


def empty_summary(day: str) -> dict[str, Any]:
    return {"date": day, "spend_nanos": 0, "writers": 0, "updated_at": None,
            "by_budget_nanos": {}, "budget_writers": {}}


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def summary_problem(content: Any, day: str) -> str | None:
    """None if `content` is a well-formed summary row of `day`, else what is wrong."""
    if not isinstance(content, dict):
        return f"content is {type(content).__name__}, expected an object"
    if content.get("date") != day:
        return f"date must be {day!r}, got {content.get('date')!r:.60}"
    for key in ("spend_nanos", "writers"):
        if not _is_count(content.get(key)):
            return f"{key} must be an integer >= 0, got {content.get(key)!r:.60}"
    stamp = content.get("updated_at")
    if stamp is not None and not isinstance(stamp, str):
        return "updated_at must be a string or null"
    for key in ("by_budget_nanos", "budget_writers"):
        value = content.get(key)
        if not isinstance(value, dict):
            return f"{key} must be an object"
        for name, amount in value.items():
            if not _is_count(amount):
                return f"{key}[{name!r:.60}] must be an integer >= 0, got {amount!r:.60}"
    if set(content["by_budget_nanos"]) != set(content["budget_writers"]):
        return "by_budget_nanos and budget_writers must name the same budgets"
    return None


def summary_quarantine_name(day: str) -> str:
    """How a malformed summary row is named among quarantined rows: with its type,
    since a version 1 day document has the same name."""
    return f"{SUMMARY_TYPE}/{summary_row_name(day)}"


class SummaryBase(NamedTuple):
    """The day's summary as a write or a sum should build on it."""

    #: The stored row if well-formed, else the sums rebuilt from the day's retired
    #: writer rows (None when there are none): what the row should hold either way.
    content: dict[str, Any] | None
    #: False when the stored row is malformed: it is quarantined, left as it is
    #: (never overwritten: a person may want to see it), and sums use `content`.
    writable: bool
    quarantined: list[str]


def summary_base(
    day: str, stored: Any, *, present: bool,
    retired: Callable[[], Iterable[tuple[str, Any]]],
) -> SummaryBase:
    """The day's summary to build on: the stored row (`stored`, when `present`) if
    well-formed; else rebuilt from `retired()`, the day's retired writer rows (only
    read then), the stored row quarantined when present (see rebuild_summary)."""
    if present and summary_problem(stored, day) is None:
        return SummaryBase(stored, True, [])
    return rebuild_summary(day, retired(), malformed=present)


def rebuild_summary(
    day: str, retired: Iterable[tuple[str, Any]], *, malformed: bool,
) -> SummaryBase:
    """The summary of the day's retired writer rows `retired` ((name, content)
    pairs), for when the stored row is absent (deleted by hand, or from before any
    retirement) or `malformed`. Rows are never deleted, so the sums are exact; a
    retired row whose amounts are not amounts is left out and named."""
    content: dict[str, Any] | None = None
    bad = [summary_quarantine_name(day)] if malformed else []
    for name, row in retired:
        if amounts_problem(row) is not None:
            bad.append(name)
            continue
        content = summary_add(content or empty_summary(day), add=row)
    return SummaryBase(content, not malformed, bad)


def validate_summary(content: Any, *, day: str, where: str) -> dict[str, Any]:
    problem = summary_problem(content, day)
    if problem is not None:
        raise CorruptRowError(f"{where}: {problem}")
    assert isinstance(content, dict)
    return content


def to_nanos(value: float) -> int:
    """A stored (1e-9-rounded) amount as integer nano-USD, exactly."""
    return int((_exact(value) * 1_000_000_000).to_integral_value())


def _from_nanos(nanos: int) -> Decimal:
    return Decimal(int(nanos)).scaleb(-_DECIMALS)


def summary_add(
    summary: Mapping[str, Any], add: Mapping[str, Any] | None = None,
    sub: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """`summary` with writer entry `add` counted in and `sub` counted out (a retired
    row replaced by a newer seq: out with the old, in with the new). Pure."""
    spend = int(summary["spend_nanos"])
    writers = int(summary["writers"])
    budgets = {k: int(v) for k, v in summary["by_budget_nanos"].items()}
    counts = {k: int(v) for k, v in summary["budget_writers"].items()}
    updated = summary.get("updated_at")
    for entry, sign in ((sub, -1), (add, 1)):
        if entry is None:
            continue
        spend += sign * to_nanos(entry["spend_usd"])
        writers += sign
        for name, amount in (entry.get("by_budget") or {}).items():
            budgets[name] = budgets.get(name, 0) + sign * to_nanos(amount)
            counts[name] = counts.get(name, 0) + sign
    if spend < 0 or writers < 0 or any(v < 0 for v in budgets.values()) or any(
            v < 0 for v in counts.values()):
        writer = sub.get("writer_id") if sub is not None else None
        raise CorruptRowError(
            f"row {SUMMARY_TYPE}/{summary_row_name(summary['date'])} does not hold the "
            f"retired writer {writer!r:.80}")
    if add is not None:
        stamp = add.get("updated_at")
        if isinstance(stamp, str) and (updated is None or stamp > updated):
            updated = stamp
    return {
        "date": summary["date"], "spend_nanos": spend, "writers": writers,
        "updated_at": updated,
        "by_budget_nanos": {k: v for k, v in sorted(budgets.items()) if counts[k] > 0},
        "budget_writers": {k: v for k, v in sorted(counts.items()) if v > 0},
    }


class WritePlan(TypedDict):
    applied: bool
    stored_seq: int
    row: dict[str, Any] | None  # the writer row's new content; None: unchanged
    summary: dict[str, Any] | None  # the summary row's new content; None: unchanged
    others_base: dict[str, Any]  # the summary without this writer: the others' base


def plan_write(
    entry: dict[str, Any], stored: dict[str, Any] | None, summary: dict[str, Any] | None,
    *, retire: bool,
) -> WritePlan:
    """What merge_writer (`retire=False`) or retire_writer (`retire=True`) does with
    the normalized `entry`, given the writer's stored row and the day's summary row
    (both validated, or None if absent). The reference the SQL functions mirror:

    - the usual seq rule picks the row's entry (applied when the seq is newer);
    - retiring a row not yet retired marks it `"retired": true` and adds it to the
      summary, once; retiring a retired row again changes nothing unless its seq is
      newer;
    - a newer seq on a retired row (a late merge_writer or retire_writer) replaces it
      and moves the summary by the difference: it stays retired, counted once.
    """
    base = summary if summary is not None else empty_summary(entry["date"])
    was_retired = stored is not None and stored.get("retired") is True
    applied = stored is None or entry["seq"] > stored["seq"]
    kept = entry if applied else stored
    assert kept is not None
    row: dict[str, Any] | None = None
    new_summary: dict[str, Any] | None = None
    if was_retired:
        assert stored is not None
        others_base = summary_add(base, sub=stored)
        if applied:
            row = {**entry, "retired": True}
            new_summary = summary_add(base, add=entry, sub=stored)
    else:
        others_base = dict(base)
        if retire:
            row = {**kept, "retired": True}
            new_summary = summary_add(base, add=kept)
        elif applied:
            row = entry
    return {"applied": applied, "stored_seq": int(kept["seq"]), "row": row,
            "summary": new_summary, "others_base": others_base}


def totals_from_json(day: str, value: Any) -> DayTotals:
    """A DayTotals as a database returned it (numbers may come back as int)."""
    if not isinstance(value, dict):
        raise CorruptRowError(f"day totals for {day}: got {type(value).__name__}, expected an object")
    try:
        return {
            "date": str(value.get("date", day)),
            "total_usd": round_usd(value["total_usd"]),
            "writers": int(value["writers"]),
            "updated_at": value.get("updated_at"),
            "by_budget": {str(k): round_usd(v) for k, v in sorted((value.get("by_budget") or {}).items())},
            "budget_writers": {
                str(k): int(v) for k, v in sorted((value.get("budget_writers") or {}).items())
            },
            "quarantined": sorted(str(n) for n in (value.get("quarantined") or [])),
        }
    except (KeyError, TypeError, ValueError) as exc:
        raise CorruptRowError(f"day totals for {day} are malformed: {exc!r}") from None


def check_days(days: Iterable[str]) -> list[str]:
    """The days, each a 'YYYY-MM-DD' string (CheckpointError otherwise), deduplicated in order."""
    if isinstance(days, str):
        raise InvalidEntryError("days must be a sequence of 'YYYY-MM-DD' strings, not one string")
    out: list[str] = []
    for day in days:
        if not is_day(day):
            raise InvalidEntryError(f"day must be a 'YYYY-MM-DD' string, got {day!r:.60}")
        if day not in out:
            out.append(day)
    return out
