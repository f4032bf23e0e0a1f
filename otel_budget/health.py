"""The health report: a JSON-serialisable dict built from the tracker's state and the
budgets (no I/O beyond listing the spool directory)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import Any, Protocol

_log = logging.getLogger("otel_budget")


def build_health(
    state: dict[str, Any],
    budgets: Sequence[dict[str, Any]],
    *,
    instance_id: str,
    timezone: str,
    timer_expected: bool,
    timer_running: bool,
    overdue_after_s: float,
    spool: dict[str, Any] | None,
    pending_nudges: Sequence[dict[str, Any]] = (),
    unpriced_calls: int = 0,
    unsettled_usd: float = 0.0,
    unmatched_match_keys: Sequence[dict[str, str]] = (),
) -> dict[str, Any]:
    """`status` is "degraded" while the last checkpoint or the last read of the store
    failed, a started meter's timer is not running, the checkpoint is overdue (a
    stalled store), or checkpoints wait in the spool."""
    reasons = []
    if state["checkpoint_failed"]:
        reasons.append("last checkpoint failed")
    if state["restore"].get("ok") is False:
        reasons.append("reading the store failed")
    if timer_expected and not timer_running:
        reasons.append("collection timer not running")
    # Overdue since the last checkpoint, or since start when none reached the store yet.
    age = state["checkpoint_age_s"]
    if age is None:
        age = state.get("uptime_s", 0.0)
    if timer_expected and age > overdue_after_s:
        reasons.append(f"no checkpoint for {age:.0f} s")
    quarantined = state.get("quarantined_rows") or []
    if quarantined:
        shown = ", ".join(quarantined[:5]) + (" ..." if len(quarantined) > 5 else "")
        reasons.append(f"{len(quarantined)} malformed stored row(s) quarantined: {shown}")
    if state.get("alert_claim_error"):
        reasons.append(f"claiming an alert failed: {state['alert_claim_error']}")
    view = state.get("fleet_view") or {}
    if view.get("source") == "local copy":
        reasons.append(f"fleet view from the local copy ({view.get('age_s')} s old): "
                       "the store has not answered")
    if spool and spool.get("entries"):
        reasons.append(f"{spool['entries']} checkpoint(s) spooled locally")
    if state.get("spool_error"):
        reasons.append(f"spool not writable: {state['spool_error']}")
    elif spool and spool.get("error"):
        reasons.append(f"spool unusable: {spool['error']}")
    set_aside = (spool or {}).get("set_aside") or []
    if set_aside:
        known = sum(item.get("spend_usd") or 0.0 for item in set_aside)
        reasons.append(f"{len(set_aside)} spool file(s) set aside (${known:.6f} where "
                       "readable): see health()['spool']['set_aside']")
    legacy = (spool or {}).get("legacy") or []
    if legacy:
        reasons.append(f"{len(legacy)} entry file(s) spooled by otel_budget 2 are not "
                       "replayed (keyed by the URL's spelling): see health()['spool']['legacy']")
    daily = next((b for b in budgets if b["name"] == "daily"), None)
    return {
        "status": "degraded" if reasons else "ok",
        "reasons": reasons,
        "date": state["date"],
        "timezone": timezone,
        "daily_spend_usd": daily["spend_usd"] if daily else state["fleet_spend_usd"],
        "daily_cap_usd": daily["cap_usd"] if daily else None,
        "utilization": daily["utilization"] if daily else None,
        "remaining_usd": daily["remaining_usd"] if daily else None,
        "alerts_sent": daily["alerts_sent"] if daily else [],
        "fleet_spend_usd": state["fleet_spend_usd"],
        "budgets": list(budgets),
        "instance_id": instance_id,
        "writer_id": state["writer_id"],
        "instance_spend_usd": state["instance_spend_usd"],
        "collections": state["collections"],
        "last_checkpoint": state["last_checkpoint"],
        "checkpoint_age_s": state["checkpoint_age_s"],
        "unflushed_usd": state["unflushed_usd"],
        "store_up": state["store_up"],
        "restore": state["restore"],
        "timer_running": timer_running,
        "spool": spool,
        "pending_final_entries": state["pending_final_entries"],
        "pending_nudges": len(pending_nudges),
        "attribute_sets_today": state["attribute_sets_today"],
        "unpriced_calls": unpriced_calls,
        "quarantined_rows": list(state.get("quarantined_rows") or []),
        "fleet_view": state.get("fleet_view"),
        # Spend recorded at a reservation's maximum because an exception closed it.
        "unsettled_usd": unsettled_usd,
        # Budgets whose match keys no call of today has carried (a typo'd key?).
        "unmatched_match_keys": list(unmatched_match_keys),
    }


class _Matching(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def match(self) -> Mapping[str, Any] | None: ...


def unmatched_match_keys(budgets: Iterable[_Matching],
                         seen_keys: Collection[str]) -> list[dict[str, str]]:
    """Each budget's match keys that none of `seen_keys` (the attribute keys calls
    carried) is: `[{"budget": name, "key": key}]`. Pure."""
    return [{"budget": budget.name, "key": key}
            for budget in budgets for key in sorted(budget.match or {})
            if key not in seen_keys]


class MatchKeyWatch:
    """Warns once per budget and key when a budget's match key has appeared in no call
    for a whole collection period after calls were recorded (`match = {agents =
    "coder"}` for `agent` counts $0 forever otherwise). `observe` is given the day's
    attribute sets at each collection; `unmatched()` is what health shows."""

    def __init__(self, budgets: Iterable[_Matching], period_s: float, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._budgets = tuple(b for b in budgets if b.match)
        self._period_s = period_s
        self._clock = clock
        self._lock = threading.Lock()
        self._since: float | None = None
        self._unmatched: list[dict[str, str]] = []
        self._warned: set[tuple[str, str]] = set()

    def observe(self, attribute_sets: Iterable[Mapping[str, Any]]) -> None:
        if not self._budgets:
            return
        seen: set[str] = set()
        for attributes in attribute_sets:
            seen.update(attributes)
        with self._lock:
            if not seen:  # no call yet (or a new day): nothing to judge by
                self._since, self._unmatched = None, []
                return
            now = self._clock()
            if self._since is None:
                self._since = now
            due = now - self._since >= self._period_s
            self._unmatched = unmatched_match_keys(self._budgets, seen) if due else []
            fresh = [item for item in self._unmatched
                     if (item["budget"], item["key"]) not in self._warned]
            self._warned.update((item["budget"], item["key"]) for item in fresh)
        for item in fresh:
            _log.warning(
                "otel_budget: budget %r matches on attribute %r, which no call recorded "
                "today carries: the budget counts $0 until calls carry it (a typo in its "
                "match?)", item["budget"], item["key"])

    def unmatched(self) -> list[dict[str, str]]:
        with self._lock:
            return [dict(item) for item in self._unmatched]
