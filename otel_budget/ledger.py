"""Pure budget arithmetic: calendar days, document names, rounding, thresholds and
the per-instance merge. No I/O here, so all of it is tested without a store."""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Mapping
from datetime import date, datetime, time, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

from .errors import CheckpointError

#: Money is stored and compared to this precision (DESIGN decision 8).
USD_EPSILON = 1e-9
_DECIMALS = 9

BUDGET_TYPE = "budget"
NUDGE_TYPE = "sibling_nudge"

AttributesKey = tuple[tuple[str, Any], ...]


def round_usd(value: float) -> float:
    """Round to 1e-9 USD so float drift (0.1 + 0.2) never reaches a document."""
    rounded = round(float(value), _DECIMALS)
    return rounded + 0.0  # folds -0.0 into 0.0


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


def budget_name(day: date) -> str:
    return f"budget_{day.isoformat()}"


def ratio_pct(ratio: float) -> str:
    """0.8 -> '80', 0.825 -> '82.5' (the nudge row's suffix)."""
    return format(round(ratio * 100, 2), "g")


def nudge_name(day: date, ratio: float) -> str:
    return f"budget_alert_{day.isoformat()}_{ratio_pct(ratio)}"


def threshold_reached(spend_usd: float, ratio: float, cap_usd: float) -> bool:
    return spend_usd >= ratio * cap_usd - USD_EPSILON


def passes_cap(spend_usd: float, cap_usd: float) -> bool:
    """Landing exactly on the cap is allowed; only exceeding it by > 1e-9 passes it."""
    return spend_usd > cap_usd + USD_EPSILON


def remaining_usd(spend_usd: float, cap_usd: float) -> float:
    return round_usd(max(0.0, cap_usd - spend_usd))


def utilization(spend_usd: float, cap_usd: float) -> float:
    return round(spend_usd / cap_usd, 6) if cap_usd > 0 else 0.0


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


# --- documents ---------------------------------------------------------------------

def _is_amount(value: Any) -> bool:
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value >= 0
    )


def validate_entry(entry: Any, *, where: str) -> dict[str, Any]:
    """Check one instance entry's shape; raise CheckpointError naming `where`."""
    if not isinstance(entry, dict):
        raise CheckpointError(f"{where}: entry is {type(entry).__name__}, expected an object")
    if not _is_amount(entry.get("spend_usd")):
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
            or not _is_amount(item.get("spend_usd"))
        ):
            raise CheckpointError(f"{where}: malformed by_attributes item {item!r:.200}")
    return entry


def validate_budget_document(content: Any, *, name: str) -> dict[str, Any]:
    """Check a stored budget document; raise CheckpointError naming the row."""
    where = f"budget row {name!r}"
    if not isinstance(content, dict):
        raise CheckpointError(f"{where}: content is {type(content).__name__}, expected an object")
    instances = content.get("instances", {})
    if not isinstance(instances, dict):
        raise CheckpointError(f"{where}: 'instances' must be an object")
    for instance_id, entry in instances.items():
        validate_entry(entry, where=f"{where}, instance {instance_id!r}")
    return content


def document_total(content: Mapping[str, Any]) -> float:
    instances = content.get("instances") or {}
    return round_usd(sum(float(e["spend_usd"]) for e in instances.values()))


def merge_entry(
    existing: Mapping[str, Any] | None,
    instance_id: str,
    entry: Mapping[str, Any],
    *,
    name: str,
    day_meta: Mapping[str, Any],
) -> tuple[dict[str, Any], bool]:
    """Return (document, applied): `entry` replaces this instance's entry only if its
    seq is newer. The total is recomputed from the entries, never accumulated."""
    entry = validate_entry(dict(entry), where=f"entry for {instance_id!r}")
    doc: dict[str, Any] = (
        copy.deepcopy(validate_budget_document(dict(existing), name=name)) if existing else {}
    )
    instances: dict[str, Any] = doc.setdefault("instances", {})
    current = instances.get(instance_id)
    if current is not None and current["seq"] >= entry["seq"]:
        return doc, False
    stored = dict(entry)
    stored["spend_usd"] = round_usd(stored["spend_usd"])
    instances[instance_id] = stored
    doc.update(day_meta)
    doc["instances"] = instances
    doc["total_usd"] = document_total(doc)
    return doc, True


def other_instances_total(content: Mapping[str, Any] | None, instance_id: str) -> float:
    if not content:
        return 0.0
    instances = content.get("instances") or {}
    return round_usd(
        sum(float(e["spend_usd"]) for key, e in instances.items() if key != instance_id)
    )
