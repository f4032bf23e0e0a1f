"""The `/api/status` document: the fleet's budgets, spend by model and agent, writers,
refusals and (for a meter) this process's health, read from the store so that every
worker serving it answers the same.

`StatusSource(source)` takes a BudgetMeter, a store URL or a PatchStore. With a
meter, `budgets` is `meter.budgets()` (the fleet's spend as this writer knows it,
at most one collection old) and the budgets' configuration is the meter's; with a
store alone, budgets are read from the writers' rows (`by_budget`), their caps and
periods from the day's alert documents, or from `budgets=` when given.

Burn rate: every status read adds a (time, spend) sample per budget to a small
ring kept by the serving process; the rate is over the last hour of those samples
(`burn_basis` says over how long). Until a minute of samples exists it is
estimated from the live writers' rows instead: each one's spend today divided by
the time between its start (or midnight) and its last checkpoint, summed.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import date, datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .. import ledger, money
from ..budgets import Budget
from ..errors import ConfigError
from ..redact import describe_exception
from ..refusals import ENTRY_KEY, merge_entry_counts, merge_entry_fields
from ..stores.base import PatchStore
from ..windows import NamedBudget, read_window_spend

if TYPE_CHECKING:
    from ..meter import BudgetMeter

__all__ = ["AGENT_ATTRIBUTE", "MODEL_ATTRIBUTE", "StatusSource", "breakdown_by"]

MODEL_ATTRIBUTE = "gen_ai.request.model"
AGENT_ATTRIBUTE = "agent"
#: Writers listed one by one in the document (the counts cover all of them).
MAX_WRITERS_LISTED = 200
MAX_BREAKDOWN_ROWS = 50
#: Samples older than this are not needed for an hour's burn rate.
_BURN_WINDOW_S = 3600.0
_MIN_OBSERVED_S = 60.0
_MAX_SAMPLES = 2000
#: A writer not heard from within this long (and not retired) is "stale" when no
#: meter says what its checkpoint interval is (the default config's overdue time).
DEFAULT_STALE_AFTER_S = 2 * 10 * 60.0 + 60.0


def _utc_now() -> datetime:
    return datetime.now(timezone.utc)


class _BurnRing:
    """(time, spend) samples of one budget window, as observed by this process."""

    def __init__(self) -> None:
        self.window: str | None = None
        self.samples: deque[tuple[float, float]] = deque(maxlen=_MAX_SAMPLES)

    def add(self, window: str, at: float, spend: float) -> None:
        if window != self.window:
            self.window = window
            self.samples.clear()
        if self.samples and at - self.samples[-1][0] < 1.0:
            self.samples[-1] = (self.samples[-1][0], spend)
            return
        self.samples.append((at, spend))
        # Keep one sample older than the hour so the rate spans the whole hour.
        while len(self.samples) > 2 and at - self.samples[1][0] >= _BURN_WINDOW_S:
            self.samples.popleft()

    def rate_per_hour(self, at: float) -> tuple[float, float] | None:
        """(USD per hour, seconds observed), or None with under a minute of samples."""
        if len(self.samples) < 2:
            return None
        first_at, first = self.samples[0]
        last_at, last = self.samples[-1]
        span = last_at - first_at
        if span < _MIN_OBSERVED_S:
            return None
        return max(0.0, last - first) / span * 3600.0, span


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def window_end(day: date, period: str, tz: ZoneInfo) -> datetime:
    """The first instant (UTC) after the window `day` falls in."""
    start = ledger.window_start(day, period)
    if period == "day":
        following = start + timedelta(days=1)
    elif period == "week":
        following = start + timedelta(days=7)
    else:
        following = (start.replace(day=28) + timedelta(days=4)).replace(day=1)
    # next_day_start of the window's last day, so DST edges are handled once, there.
    last_day = following - timedelta(days=1)
    noon = datetime(last_day.year, last_day.month, last_day.day, 12, tzinfo=tz)
    return ledger.next_day_start(noon, tz)


def breakdown_by(items: Iterable[Mapping[str, Any]], attribute: str,
                 limit: int = MAX_BREAKDOWN_ROWS) -> list[dict[str, Any]]:
    """[{"value", "spend_usd"}] of by_attributes items grouped by one attribute
    (absent -> None), largest first."""
    totals: dict[Any, float] = {}
    for item in items:
        attrs = item.get("attributes")
        if not isinstance(attrs, Mapping):
            continue
        value = attrs.get(attribute)
        if not isinstance(value, (str, int, float, bool)) or (
                isinstance(value, float) and not math.isfinite(value)):
            value = None if value is None else str(value)
        spend = item.get("spend_usd")
        if money.is_amount(spend):
            totals[value] = totals.get(value, 0.0) + float(spend)
    rows = [{"value": value, "spend_usd": money.round_usd(usd)}
            for value, usd in totals.items()]
    rows.sort(key=lambda row: (-row["spend_usd"], str(row["value"])))
    return rows[:limit]


def top_keys(items: Iterable[Mapping[str, Any]], matches: Callable[[Mapping[str, Any]], bool],
             per: str | Sequence[str], cap_usd: float, limit: int = 10) -> list[dict[str, Any]]:
    """The biggest keys of a per-key budget: breakdown items it `matches`, grouped by
    the `per` attribute(s) (an item lacking one is no key's), largest first:
    [{"key": {attr: value}, "spend_usd", "cap_usd", "remaining_usd", "utilization"}]."""
    names = (per,) if isinstance(per, str) else tuple(per)
    totals: dict[tuple[Any, ...], float] = {}
    for item in items:
        attrs = item.get("attributes")
        spend = item.get("spend_usd")
        if not isinstance(attrs, Mapping) or not money.is_amount(spend):
            continue
        if any(name not in attrs for name in names) or not matches(attrs):
            continue
        try:
            key = tuple(attrs[name] for name in names)
            totals[key] = totals.get(key, 0.0) + float(spend)
        except TypeError:  # an unhashable value is no key
            continue
    ranked = sorted(totals.items(), key=lambda kv: (-kv[1], repr(kv[0])))[:limit]
    return [{"key": dict(zip(names, key, strict=True)), "spend_usd": money.round_usd(usd),
             "cap_usd": cap_usd, "remaining_usd": money.remaining_usd(usd, cap_usd),
             "utilization": money.utilization(usd, cap_usd)} for key, usd in ranked]


def _budget_meta(budget: Budget) -> dict[str, Any]:
    return {"name": budget.name, "period": budget.period,
            "match": dict(budget.match) if budget.match is not None else None,
            "cap_usd": budget.cap_usd, "alert_ratios": list(budget.alert_ratios),
            "hard": budget.hard, "enforce": budget.enforce}


def _unconfigured_meta(name: str) -> dict[str, Any]:
    """A budget the writers report but no configuration describes (a day budget until
    an alert document says otherwise)."""
    return {"name": name, "period": "day", "match": None, "cap_usd": None,
            "alert_ratios": [], "hard": None, "enforce": None}


class StatusSource:
    """Builds the status document; thread-safe. `close()` closes a store it opened."""

    def __init__(
        self,
        source: BudgetMeter | PatchStore | str,
        *,
        budgets: Sequence[Budget] | None = None,
        timezone_name: str | None = None,
        stale_after_s: float | None = None,
        cache_s: float = 2.0,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        from ..meter import BudgetMeter

        self._meter: BudgetMeter | None = None
        self._owns_store = False
        if isinstance(source, BudgetMeter):
            self._meter = source
            self._store: PatchStore = source.store
            config = source.config
            self._budgets: tuple[Budget, ...] | None = tuple(config.all_budgets)
            self._tz = config.tzinfo
            self._tz_name = config.timezone
            overdue = (2 * config.checkpoint_every * config.collect_interval_s
                       + config.collect_interval_s)
            self._stale_after_s = float(stale_after_s or overdue)
        elif isinstance(source, str):
            from ..stores.base import open_store

            self._store = open_store(source)
            self._owns_store = True
        elif isinstance(source, PatchStore):
            self._store = source
        else:
            raise TypeError("source must be a BudgetMeter, a store URL or a PatchStore, "
                            f"got {type(source).__name__}")
        if self._meter is None:
            if budgets is not None:
                for budget in budgets:
                    if not isinstance(budget, Budget):
                        raise TypeError(f"budgets must be Budget objects, got {budget!r:.60}")
            self._budgets = tuple(budgets) if budgets is not None else None
            self._tz_name = (timezone_name or os.environ.get("OTEL_BUDGET_TIMEZONE", "").strip()
                             or "UTC")
            try:
                self._tz = ZoneInfo(self._tz_name)
            except (ZoneInfoNotFoundError, ValueError):
                if self._owns_store:
                    self._store.close()
                raise ConfigError(f"timezone: unknown IANA zone {self._tz_name!r}") from None
            self._stale_after_s = float(stale_after_s or DEFAULT_STALE_AFTER_S)
        self._clock = clock or _utc_now
        self._cache_s = float(cache_s)
        self._lock = threading.Lock()
        self._cached: tuple[float, dict[str, Any], tuple[float, ...]] | None = None
        self._cached_read: tuple[float, dict[str, Any]] | None = None
        self._rings: dict[str, _BurnRing] = {}

    @property
    def meter(self) -> BudgetMeter | None:
        return self._meter

    @property
    def store(self) -> PatchStore:
        return self._store

    def close(self) -> None:
        if self._owns_store:
            self._store.close()

    # --- the document -------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """The status document (see the module docstring). Never raises on a store
        failure: what could not be read is named in `errors`."""
        with self._lock:
            cached = self._cached
            mono = time.monotonic()
            # A meter's own numbers are live and cheap: a reload right after more spend
            # must show it, so the cache (which spares the store) holds only while
            # they have not moved.
            live = self._live_fingerprint()
            if (cached is not None and mono - cached[0] < self._cache_s
                    and cached[2] == live):
                return cached[1]
            document = self._build()
            self._cached = (mono, document, live)
            return document

    def _live_fingerprint(self) -> tuple[float, ...]:
        if self._meter is None:
            return ()
        try:
            return tuple(float(row["spend_usd"]) for row in self._meter.budgets())
        except Exception:  # the document names what failed; the cache just expires
            return (math.nan,)

    def _today(self, now: datetime) -> date:
        if self._meter is not None:
            return self._meter.day
        return ledger.day_of(now, self._tz)

    def fleet_read(self) -> dict[str, Any]:
        """The store's view of today, cached like `status()`: {"at", "date",
        "entries" (today's writer rows), "nudges", "budgets" (computed from the
        store's rows, whatever the source), "errors"}. What `otel-budget serve`
        exports as the fleet's metrics."""
        with self._lock:
            mono = time.monotonic()
            cached = self._cached_read
            if cached is not None and mono - cached[0] < self._cache_s:
                return cached[1]
            now = self._clock()
            day = self._today(now)
            errors: list[str] = []
            entries, nudges = self._read_today(day.isoformat(), errors)
            budgets = self._store_budgets(day, entries, nudges, errors)
            read = {"at": now, "date": day.isoformat(), "entries": entries,
                    "nudges": nudges, "budgets": budgets, "errors": errors}
            self._cached_read = (mono, read)
            return read

    def _read_today(self, today: str, errors: list[str]
                    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        entries: list[dict[str, Any]] = []
        nudges: list[dict[str, Any]] = []
        try:
            entries = [e for e in self._store.writer_entries([today], breakdown=True)
                       if isinstance(e, dict)]
        except Exception as exc:
            errors.append(f"reading today's writers failed: {_describe(exc)}")
        try:
            nudges = [n for n in self._store.nudges_on(today) if isinstance(n, dict)]
        except Exception as exc:
            errors.append(f"reading today's alerts failed: {_describe(exc)}")
        return entries, nudges

    def _build(self) -> dict[str, Any]:
        now = self._clock()
        day = self._today(now)
        errors: list[str] = []
        entries, nudges = self._read_today(day.isoformat(), errors)
        today = day.isoformat()
        if self._meter is not None:
            budgets = self._meter_budgets()
        else:
            budgets = self._store_budgets(day, entries, nudges, errors)
        items = [item for e in entries for item in (e.get("by_attributes") or [])
                 if isinstance(item, Mapping)]
        total = money.round_usd(sum(float(e["spend_usd"]) for e in entries
                                     if money.is_amount(e.get("spend_usd"))))
        writers = self._writers(entries, now)
        self._add_burn(budgets, entries, now, day)
        self._add_top_keys(budgets, day, items, errors)
        refusal_fields = [e.get(ENTRY_KEY) for e in entries]
        refusal_writers = [e.get("writer_id") for e in entries]
        local: list[dict[str, Any]] = []
        if self._meter is not None:
            local = self._meter.refusals()
        refusals = merge_entry_fields([*refusal_fields, {"last": local}],
                                      writers=[*refusal_writers, None])
        counts = merge_entry_counts(refusal_fields)
        for budget_name, n in self._local_window_counts(budgets).items():
            # This process's own refusals not yet in its stored entry: take the larger.
            for window, count in n.items():
                per = counts.setdefault(budget_name, {})
                per[window] = max(per.get(window, 0), count)
        document: dict[str, Any] = {
            "generated_at": now.isoformat(),
            "source": "meter" if self._meter is not None else "store",
            "date": today,
            "timezone": self._tz_name,
            "total_usd": total,
            "budgets": budgets,
            "by_model": breakdown_by(items, MODEL_ATTRIBUTE),
            "by_agent": breakdown_by(items, AGENT_ATTRIBUTE),
            "writers": writers,
            "refusals": refusals,
            "refusal_counts": counts,
            "alerts": [{k: n.get(k) for k in ("budget", "window", "ratio", "to",
                                               "created_at", "instance_id", "id")}
                       for n in nudges],
            "errors": errors,
        }
        if self._meter is not None:
            document["health"] = self._health()
            document["instance_id"] = self._meter.instance_id
            document["writer_id"] = self._meter.writer_id
        else:
            document["health"] = None
        return document

    def _local_window_counts(self, budgets: Sequence[Mapping[str, Any]]
                             ) -> dict[str, dict[str, int]]:
        if self._meter is None:
            return {}
        windows = {(str(b["name"]), str(b["window"])) for b in budgets}
        field = self._meter.refusal_log.entry_field(windows)
        counts: dict[str, dict[str, int]] = field["counts"]
        return counts

    def _add_top_keys(self, budgets: list[dict[str, Any]], day: date,
                      today_items: list[Mapping[str, Any]], errors: list[str]) -> None:
        """A per-key budget's (`Budget.per`) biggest keys in its window, from the
        writers' stored breakdowns, unless the row has them already."""
        configured = {b.name: b for b in self._budgets or ()}
        earlier: dict[str, list[Mapping[str, Any]]] = {}
        for row in budgets:
            budget = configured.get(str(row["name"]))
            per = getattr(budget, "per", None) if budget is not None else None
            if budget is None or not per or row.get("top_keys"):
                continue
            items = list(today_items)
            for d in ledger.window_days_before(day, budget.period):
                name = d.isoformat()
                if name not in earlier:
                    try:
                        earlier[name] = [item for e in self._store.writer_entries([name])
                                         for item in (e.get("by_attributes") or [])
                                         if isinstance(item, Mapping)]
                    except Exception as exc:
                        errors.append(f"reading {name}'s breakdown failed: {_describe(exc)}")
                        earlier[name] = []
                items.extend(earlier[name])
            row["top_keys"] = top_keys(items, budget.matches, per, budget.cap_usd)

    def _meter_budgets(self) -> list[dict[str, Any]]:
        assert self._meter is not None
        meta = {b.name: b for b in self._budgets or ()}
        rows = []
        for row in self._meter.budgets():
            budget = meta.get(row["name"])
            row = dict(row)
            row["alert_ratios"] = list(budget.alert_ratios) if budget is not None else []
            rows.append(row)
        return rows

    def _store_budgets(self, day: date, entries: Sequence[Mapping[str, Any]],
                       nudges: Sequence[Mapping[str, Any]], errors: list[str]
                       ) -> list[dict[str, Any]]:
        """Budget rows from the store: the configured budgets, else every budget a
        writer reported today (caps and periods from today's alert documents)."""
        today = day.isoformat()
        if self._budgets is not None:
            metas = [_budget_meta(b) for b in self._budgets]
        else:
            names: dict[str, dict[str, Any]] = {}
            for entry in entries:
                for name in (entry.get("by_budget") or {}):
                    if isinstance(name, str):
                        names.setdefault(name, _unconfigured_meta(name))
            for nudge in nudges:
                name = nudge.get("budget", "daily")
                if not isinstance(name, str):
                    continue
                meta = names.setdefault(name, _unconfigured_meta(name))
                if nudge.get("period") in ("day", "week", "month"):
                    meta["period"] = nudge["period"]
                cap = nudge.get("cap_usd", nudge.get("daily_cap_usd"))
                if money.is_amount(cap) and cap > 0:
                    meta["cap_usd"] = float(cap)
                if isinstance(nudge.get("match"), dict):
                    meta["match"] = nudge["match"]
            metas = sorted(names.values(), key=lambda m: str(m["name"]))
        configured = {b.name: b for b in self._budgets or ()}
        budgets = [configured.get(m["name"]) or NamedBudget(m["name"], m["period"])
                   for m in metas]
        # Today's rows were read already (with their breakdown): not again.
        spent = read_window_spend(
            self._store, day, budgets, read={today: entries},
            on_error=lambda what, exc: errors.append(
                f"reading {what} failed: {_describe(exc)}"))
        rows = []
        for meta in metas:
            name = meta["name"]
            spend = spent.spend_usd[name]
            window = ledger.window_id(day, meta["period"])
            cap = meta["cap_usd"]
            sent = sorted({float(n["ratio"]) for n in nudges
                           if n.get("budget", "daily") == name
                           and n.get("window", n.get("date")) == window
                           and money.is_amount(n.get("ratio"))})
            rows.append({
                **meta, "window": window, "spend_usd": spend,
                "remaining_usd": money.remaining_usd(spend, cap) if cap else None,
                "utilization": money.utilization(spend, cap) if cap else None,
                "alerts_sent": sent,
            })
        return rows

    def writer_counts(self, entries: Sequence[Mapping[str, Any]]) -> dict[str, int]:
        """{"live", "stale", "retired"}: how many of these writer rows are in each state."""
        writers = self._writers(entries, self._clock())
        return {state: int(writers[state]) for state in ("live", "stale", "retired")}

    def _writers(self, entries: Sequence[Mapping[str, Any]], now: datetime) -> dict[str, Any]:
        listed: list[dict[str, Any]] = []
        counts = {"live": 0, "stale": 0, "retired": 0}
        for entry in entries:
            updated = _parse_time(entry.get("updated_at"))
            age = (now - updated).total_seconds() if updated is not None else None
            if entry.get("retired") is True:
                state = "retired"
            elif age is None or age > self._stale_after_s:
                state = "stale"
            else:
                state = "live"
            counts[state] += 1
            spend = entry.get("spend_usd")
            listed.append({
                "writer_id": entry.get("writer_id"), "instance_id": entry.get("instance_id"),
                "spend_usd": float(spend) if money.is_amount(spend) else 0.0,
                "updated_at": entry.get("updated_at"),
                "started_at": entry.get("started_at"), "state": state,
                "age_s": round(age, 1) if age is not None else None,
            })
        order = {"live": 0, "stale": 1, "retired": 2}
        listed.sort(key=lambda w: (order[str(w["state"])], -float(w["spend_usd"])))
        return {**counts, "total": len(listed), "stale_after_s": self._stale_after_s,
                "list": listed[:MAX_WRITERS_LISTED]}

    def _add_burn(self, budgets: list[dict[str, Any]], entries: Sequence[Mapping[str, Any]],
                  now: datetime, day: date) -> None:
        midnight = datetime(day.year, day.month, day.day, tzinfo=self._tz)
        for row in budgets:
            name = str(row["name"])
            ring = self._rings.setdefault(name, _BurnRing())
            spend = float(row.get("spend_usd") or 0.0)
            # Wall time from the source's clock (the meter's, in tests a fake one).
            at = now.timestamp()
            ring.add(str(row["window"]), at, spend)
            observed = ring.rate_per_hour(at)
            if observed is not None:
                rate, span = observed
                basis = f"observed by this server over the last {span / 60:.0f} min"
            else:
                rate = self._writers_rate(name, entries, now, midnight)
                basis = "average of the live writers since they started today"
            rate = money.round_usd(rate)
            row["burn_usd_per_hour"] = rate
            row["burn_basis"] = basis
            period = row.get("period")
            if period not in ("day", "week", "month"):
                continue
            end = window_end(day, str(period), self._tz)
            hours_left = max(0.0, (end - now).total_seconds() / 3600.0)
            row["window_end"] = end.isoformat()
            row["projected_usd"] = money.round_usd(spend + rate * hours_left)
            cap = row.get("cap_usd")
            if not cap:
                row["cap_hit_at"] = None
                continue
            if spend >= cap - money.USD_EPSILON:
                row["cap_hit_at"] = "reached"
            elif rate > 0:
                hit = now + timedelta(hours=(cap - spend) / rate)
                row["cap_hit_at"] = hit.isoformat() if hit < end else None
            else:
                row["cap_hit_at"] = None
            ratios = row.get("alert_ratios") or []
            sent = set(row.get("alerts_sent") or [])
            row["alerts_pending"] = [r for r in ratios if r not in sent
                                     and money.threshold_reached(spend, r, cap)]

    def _writers_rate(self, budget: str, entries: Sequence[Mapping[str, Any]],
                      now: datetime, midnight: datetime) -> float:
        rate = 0.0
        for entry in entries:
            if entry.get("retired") is True:
                continue
            updated = _parse_time(entry.get("updated_at"))
            if updated is None or (now - updated).total_seconds() > self._stale_after_s:
                continue
            started = _parse_time(entry.get("started_at"))
            since = max(started, midnight) if started is not None else midnight
            hours = (updated - since).total_seconds() / 3600.0
            spend = (entry.get("by_budget") or {}).get(budget)
            if hours > 1 / 60 and money.is_amount(spend):
                rate += float(spend) / hours
        return rate

    def _health(self) -> dict[str, Any]:
        assert self._meter is not None
        try:
            health = self._meter.health()
        except Exception as exc:  # health() never raises; a page must not depend on it
            return {"status": "unknown", "reasons": [f"health failed: {_describe(exc)}"]}
        keep = ("status", "reasons", "spool", "store_up", "last_checkpoint",
                "checkpoint_age_s", "unflushed_usd", "pending_nudges", "unpriced_calls",
                "quarantined_rows", "unsettled_usd", "restore")
        return {key: health[key] for key in keep if key in health}


def _describe(exc: BaseException) -> str:
    from ..errors import BudgetError

    if isinstance(exc, (BudgetError, OSError)):
        return describe_exception(exc)
    return type(exc).__name__
