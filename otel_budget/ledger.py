"""Pure budget arithmetic: calendar days and budget windows, attribute sets, amounts
checked at the door, the spend of a breakdown. No I/O here, so all of it is tested
without a store."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from datetime import date, datetime, time, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

from .money import round_usd

AttributesKey = tuple[tuple[str, Any], ...]

def day_of(instant: datetime, tz: ZoneInfo) -> date:
    """The calendar day `instant` falls on in `tz`."""
    if instant.tzinfo is None:
        raise ValueError("the clock must return an aware datetime")
    return instant.astimezone(tz).date()


def next_day_start(instant: datetime, tz: ZoneInfo) -> datetime:
    """The first instant (in UTC) of the day after the one `instant` falls on in `tz`.

    Computed through UTC so a DST change on either day cannot shift it by an hour.
    """
    following = day_of(instant, tz) + timedelta(days=1)
    start = datetime.combine(following, time(0), tzinfo=tz).astimezone(timezone.utc)
    # Where midnight does not exist (a DST gap at 00:00) zoneinfo may land before it.
    if start.astimezone(tz).date() != following:
        start += timedelta(hours=1)
    return start


# --- attribute sets --------------------------------------------------------------

def attributes_key(attributes: Mapping[str, Any] | None) -> AttributesKey:
    if not attributes:
        return ()
    return tuple(sorted((str(k), _hashable(v)) for k, v in attributes.items()))


def _hashable(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def _key_to_dict(key: AttributesKey) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in key}


def by_attributes_to_map(items: Iterable[Mapping[str, Any]]) -> dict[AttributesKey, float]:
    totals: dict[AttributesKey, float] = {}
    for item in items:
        key = attributes_key(item.get("attributes") or {})
        totals[key] = totals.get(key, 0.0) + float(item["spend_usd"])
    return totals


def map_to_by_attributes(totals: Mapping[AttributesKey, float]) -> list[dict[str, Any]]:
    """Largest spend first, so a truncated view still shows what matters."""
    ordered = sorted(
        ((round_usd(value), key) for key, value in totals.items() if round_usd(value) > 0.0),
        key=lambda pair: (-pair[0], repr(pair[1])),
    )
    return [{"attributes": _key_to_dict(key), "spend_usd": spend} for spend, key in ordered]


def add_maps(
    base: Mapping[AttributesKey, float], extra: Mapping[AttributesKey, float]
) -> dict[AttributesKey, float]:
    out = dict(base)
    for key, value in extra.items():
        out[key] = out.get(key, 0.0) + value
    return out


# --- version 2: money in integer nano-USD, validated at the door -------------------

OVERFLOW_ATTRIBUTES: dict[str, Any] = {"otel.metric.overflow": True}
MAX_ATTRIBUTE_KEY_LENGTH = 256
MAX_ATTRIBUTE_VALUE_LENGTH = 4096
MAX_ATTRIBUTES = 64


def _check_text(text: str, what: str) -> None:
    if "\x00" in text:
        raise ValueError(f"{what} contains a NUL character")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{what} contains a lone surrogate (not valid Unicode text)") from None


_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


def _check_scalar(value: Any, what: str) -> None:
    if isinstance(value, str):
        if len(value) > MAX_ATTRIBUTE_VALUE_LENGTH:
            raise ValueError(f"{what} is longer than {MAX_ATTRIBUTE_VALUE_LENGTH} characters")
        _check_text(value, what)
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{what} must be finite, got {value!r}")
    elif isinstance(value, int) and not isinstance(value, bool):
        # OTLP carries int64: the exporter drops a larger one, merging two series.
        if not _INT64_MIN <= value <= _INT64_MAX:
            raise ValueError(f"{what} is outside the 64-bit integer range, got {value!r:.40}")
    elif not isinstance(value, bool):
        raise TypeError(f"{what} must be str, bool, int or float, got {type(value).__name__}")


def check_attributes(attributes: Any) -> dict[str, Any]:
    """OpenTelemetry's attribute rules, strictly: str keys; str/bool/int/finite float
    values or homogeneous sequences of them; no NUL, no lone surrogates; bounded
    lengths. Returns a plain dict (sequences become tuples), or raises
    TypeError/ValueError naming the key."""
    if not isinstance(attributes, Mapping):
        raise TypeError(f"attributes must be a mapping, got {type(attributes).__name__}")
    if len(attributes) > MAX_ATTRIBUTES:
        raise ValueError(f"attributes: more than {MAX_ATTRIBUTES} keys")
    out: dict[str, Any] = {}
    for key, value in attributes.items():
        if not isinstance(key, str) or not key:
            raise TypeError(f"attribute keys must be non-empty strings, got {key!r:.80}")
        if len(key) > MAX_ATTRIBUTE_KEY_LENGTH:
            raise ValueError(f"attribute key {key[:40]!r}... is longer than "
                             f"{MAX_ATTRIBUTE_KEY_LENGTH} characters")
        _check_text(key, f"attribute key {key!r:.80}")
        what = f"attribute {key!r}"
        if isinstance(value, (list, tuple)):
            if len({type(v) for v in value}) > 1:
                raise TypeError(f"{what}: a sequence must hold values of one type")
            for item in value:
                _check_scalar(item, what)
            out[key] = tuple(value)
        else:
            _check_scalar(value, what)
            out[key] = value
    return out


# --- budget windows -----------------------------------------------------------------

def window_id(day: date, period: str) -> str:
    """2026-11-25 (day), 2026-W48 (ISO week, from Monday), 2026-11 (month)."""
    if period == "day":
        return day.isoformat()
    if period == "week":
        year, week, _ = day.isocalendar()
        return f"{year}-W{week:02d}"
    if period == "month":
        return f"{day.year}-{day.month:02d}"
    raise ValueError(f"unknown period {period!r}")


def window_start(day: date, period: str) -> date:
    if period == "day":
        return day
    if period == "week":
        return day - timedelta(days=day.weekday())
    if period == "month":
        return day.replace(day=1)
    raise ValueError(f"unknown period {period!r}")


def window_days_before(day: date, period: str) -> list[date]:
    """The days of `day`'s window that come before it (empty for a day budget)."""
    start = window_start(day, period)
    return [start + timedelta(days=i) for i in range((day - start).days)]


def spend_of_breakdown(
    by_attributes: Iterable[Mapping[str, Any]], matches: Any
) -> float:
    """A budget's share of a stored breakdown (`matches(attributes) -> bool`); the
    overflow bucket cannot be attributed, so it is left out (an estimate)."""
    total = 0.0
    for item in by_attributes:
        attributes = item.get("attributes") or {}
        if attributes.get("otel.metric.overflow") is True:
            continue
        if matches(attributes):
            total += float(item["spend_usd"])
    return round_usd(total)


def group_instances(
    writer_entries: Iterable[Mapping[str, Any]], legacy: Mapping[str, Any] | None
) -> dict[str, dict[str, Any]]:
    """instance_id -> {spend_usd, writers, updated_at} over v2 writer rows and a v1
    day document (whose entries each count as one writer)."""
    out: dict[str, dict[str, Any]] = {}

    def add(instance: str, spend: float, updated: Any) -> None:
        row = out.setdefault(instance, {"spend_usd": 0.0, "writers": 0, "updated_at": None})
        row["spend_usd"] = round_usd(row["spend_usd"] + float(spend))
        row["writers"] += 1
        if isinstance(updated, str) and (row["updated_at"] is None or updated > row["updated_at"]):
            row["updated_at"] = updated

    for entry in writer_entries:
        add(str(entry.get("instance_id") or entry.get("writer_id")), entry["spend_usd"],
            entry.get("updated_at"))
    for instance, entry in ((legacy or {}).get("instances") or {}).items():
        add(instance, entry["spend_usd"], entry.get("updated_at"))
    return dict(sorted(out.items()))
