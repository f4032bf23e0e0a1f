"""RefusalLog: what guard/reserve/areserve refused in this process, bounded.

Counts per budget (cumulative, for the `llm.budget.refusals` counter) and per
(budget, window), plus the last few refusals with their time, budget, key, amount
and writer. Pure memory: recording never does I/O and never raises, so a refusal
is raised to the caller exactly as it would be without the log.

`entry_field(window_ids)` is the JSON-able part of a writer's entry (content key
"refusals") and `merge_entry_fields(fields)` the fleet's recent refusals read back
from several writers' entries, tolerant of entries that lack or garble the field.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timezone
from typing import Any

__all__ = ["ENTRY_KEY", "RefusalLog", "merge_entry_fields"]

#: The content key of a writer's entry holding `RefusalLog.entry_field(...)`.
ENTRY_KEY = "refusals"
#: Refusals kept in memory and written per entry.
DEFAULT_KEEP = 100
ENTRY_LAST = 20
#: Days whose refusal counts are kept for their entries (today and a closed day
#: still owed its final entry).
_DAYS_KEPT = 3
_MAX_TEXT = 200


def _utc_now() -> datetime:
    return datetime.now(timezone.utc)


class RefusalLog:
    """Thread-safe; `record` is called on the refusing caller's thread."""

    def __init__(self, *, writer: Callable[[], str] | None = None, keep: int = DEFAULT_KEEP,
                 clock: Callable[[], datetime] | None = None,
                 day_of: Callable[[datetime], str] | None = None) -> None:
        if not isinstance(keep, int) or keep < 1:
            raise ValueError(f"keep must be an int >= 1, got {keep!r}")
        self._writer = writer
        self._clock = clock or _utc_now
        #: The budget day (in the configured zone) a refusal belongs to: a writer's
        #: entry is per day, so it carries that day's refusals only (a week's
        #: refusals summed over its days' entries then count each one once).
        self._day_of = day_of or (lambda at: at.date().isoformat())
        self._lock = threading.Lock()
        self._keep = keep
        self._reset()

    def _reset(self) -> None:
        self._totals: dict[str, int] = {}
        self._windows: dict[tuple[str, str], int] = {}
        self._by_day: dict[str, dict[tuple[str, str], int]] = {}
        self._last: deque[dict[str, Any]] = deque(maxlen=self._keep)

    def record(self, budget: str, *, amount_usd: float, window: str | None = None,
               key: Mapping[str, Any] | None = None, reason: str | None = None,
               spend_usd: float | None = None, cap_usd: float | None = None) -> None:
        """Count one refusal. Never raises: a refusal must reach its caller unchanged."""
        day: str | None = None
        try:
            writer = self._writer() if self._writer is not None else None
            now = self._clock()
            day = self._day_of(now)
            item: dict[str, Any] = {
                "at": now.isoformat(),
                "budget": str(budget),
                "window": window,
                "key": _jsonable_key(key),
                "amount_usd": _number(amount_usd),
                "spend_usd": _number(spend_usd),
                "cap_usd": _number(cap_usd),
                "writer": writer,
                "reason": str(reason)[:_MAX_TEXT] if reason is not None else None,
            }
        except Exception:  # a broken clock or writer id: keep the count at least
            item = {"at": None, "budget": str(budget), "window": window, "key": None,
                    "amount_usd": None, "spend_usd": None, "cap_usd": None, "writer": None,
                    "reason": None}
        with self._lock:
            self._totals[item["budget"]] = self._totals.get(item["budget"], 0) + 1
            if window is not None:
                pair = (item["budget"], str(window))
                self._windows[pair] = self._windows.get(pair, 0) + 1
                if day is not None:
                    counts = self._by_day.setdefault(day, {})
                    counts[pair] = counts.get(pair, 0) + 1
                    for old in sorted(self._by_day)[:-_DAYS_KEPT]:
                        del self._by_day[old]
            item["_day"] = day
            self._last.append(item)

    def record_exception(self, exc: BaseException, *, reason: str | None = None) -> None:
        """Count a BudgetExceeded (its budget, window, key and amounts)."""
        self.record(
            str(getattr(exc, "budget", "daily")),
            amount_usd=getattr(exc, "estimated_usd", None),  # type: ignore[arg-type]
            window=getattr(exc, "window", None),
            key=getattr(exc, "key", None),
            reason=reason if reason is not None else (str(exc.args[0]) if exc.args else None),
            spend_usd=getattr(exc, "spend_usd", None),
            cap_usd=getattr(exc, "cap_usd", None),
        )

    def totals(self) -> dict[str, int]:
        """Refusals per budget since this process (or fork) started."""
        with self._lock:
            return dict(self._totals)

    def recent(self, limit: int | None = None) -> list[dict[str, Any]]:
        """The last refusals, newest first."""
        with self._lock:
            items = [_public(item) for item in reversed(self._last)]
        return items if limit is None else items[:limit]

    def entry_field(self, window_ids: Iterable[tuple[str, str]] | Mapping[str, str]
                    ) -> dict[str, Any]:
        """The "refusals" field of this writer's entry: counts per budget and window
        for the given (budget, window) pairs (or {budget: window}) and the last
        `ENTRY_LAST` refusals in those windows, newest first. JSON-able."""
        pairs = set(window_ids.items() if isinstance(window_ids, Mapping) else window_ids)
        with self._lock:
            counts: dict[str, dict[str, int]] = {}
            for (budget, window), n in self._windows.items():
                if (budget, window) in pairs:
                    counts.setdefault(budget, {})[window] = n
            last = [_public(item) for item in reversed(self._last)
                    if (item["budget"], item["window"]) in pairs][:ENTRY_LAST]
        return {"counts": counts, "last": last}

    def day_field(self, day: str) -> dict[str, Any] | None:
        """The "refusals" field of this writer's entry for `day`: counts per budget and
        window of the refusals recorded that day and the last `ENTRY_LAST` of them,
        newest first; None when there were none (the entry then has no such key)."""
        with self._lock:
            pairs = self._by_day.get(day)
            if not pairs:
                return None
            counts: dict[str, dict[str, int]] = {}
            for (budget, window), n in pairs.items():
                counts.setdefault(budget, {})[window] = n
            last = [_public(item) for item in reversed(self._last)
                    if item.get("_day") == day][:ENTRY_LAST]
        return {"counts": counts, "last": last}

    def after_fork_in_child(self) -> None:
        """A forked child is a new writer: it counts only its own refusals."""
        self._lock = threading.Lock()
        self._reset()


def _public(item: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in item.items() if not k.startswith("_")}


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _jsonable_key(key: Any) -> dict[str, Any] | None:
    if not isinstance(key, Mapping):
        return None
    return {str(k)[:_MAX_TEXT]: (v if isinstance(v, (str, int, float, bool)) and not (
        isinstance(v, float) and not math.isfinite(v)) else str(v)[:_MAX_TEXT])
            for k, v in key.items()}


def _clean_item(raw: Any, writer: str | None) -> dict[str, Any] | None:
    """A stored refusal in the shape of `RefusalLog.recent()`, or None if unusable."""
    if not isinstance(raw, Mapping):
        return None
    budget, at = raw.get("budget"), raw.get("at")
    if not isinstance(budget, str) or not budget or not isinstance(at, str):
        return None
    try:
        when = datetime.fromisoformat(at)
    except ValueError:
        return None
    stored_writer = raw.get("writer")
    window = raw.get("window")
    reason = raw.get("reason")
    return {
        "at": at,
        "budget": budget[:_MAX_TEXT],
        "window": window[:_MAX_TEXT] if isinstance(window, str) else None,
        "key": _jsonable_key(raw.get("key")),
        "amount_usd": _number(raw.get("amount_usd")),
        "spend_usd": _number(raw.get("spend_usd")),
        "cap_usd": _number(raw.get("cap_usd")),
        "writer": (stored_writer[:_MAX_TEXT] if isinstance(stored_writer, str) else writer),
        "reason": reason[:_MAX_TEXT] if isinstance(reason, str) else None,
        "_when": when if when.tzinfo else when.replace(tzinfo=timezone.utc),
    }


def merge_entry_fields(fields: Iterable[Any], *, limit: int = 50,
                       writers: Iterable[str | None] | None = None) -> list[dict[str, Any]]:
    """The refusals of several writers' entry fields (what `entry_field` wrote),
    newest first, at most `limit`. A missing or malformed field, or item, is
    skipped: a status read must not fail on one writer's odd entry. `writers`
    (parallel to `fields`) names the writer of an item that does not name one."""
    items: list[dict[str, Any]] = []
    names = list(writers) if writers is not None else None
    for i, field in enumerate(fields):
        if not isinstance(field, Mapping):
            continue
        last = field.get("last")
        if not isinstance(last, list):
            continue
        writer = names[i] if names is not None and i < len(names) else None
        for raw in last:
            item = _clean_item(raw, writer)
            if item is not None:
                items.append(item)
    items.sort(key=lambda item: item["_when"], reverse=True)
    out = []
    seen: set[tuple[Any, ...]] = set()
    for item in items:
        del item["_when"]
        ident = (item["at"], item["budget"], item["writer"], item["amount_usd"])
        if ident in seen:
            continue
        seen.add(ident)
        out.append(item)
        if len(out) >= limit:
            break
    return out


def merge_entry_counts(fields: Iterable[Any]) -> dict[str, dict[str, int]]:
    """{budget: {window: refusals}} summed over writers' entry fields; malformed
    parts skipped."""
    total: dict[str, dict[str, int]] = {}
    for field in fields:
        counts = field.get("counts") if isinstance(field, Mapping) else None
        if not isinstance(counts, Mapping):
            continue
        for budget, windows in counts.items():
            if not isinstance(budget, str) or not isinstance(windows, Mapping):
                continue
            for window, n in windows.items():
                if isinstance(window, str) and isinstance(n, int) and not isinstance(n, bool) \
                        and n >= 0:
                    per = total.setdefault(budget, {})
                    per[window] = per.get(window, 0) + n
    return total
