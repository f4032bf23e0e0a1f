"""An in-process store: for tests and for trying things out. Nothing survives the process."""

from __future__ import annotations

import contextlib
import copy
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..errors import CheckpointError, CorruptRowError, StoreError
from .base import DEFAULT_STALE_AFTER_S, ContextStore, ReapSchedule, check_reap_args, dumps_content
from .entries import (
    DayTotals,
    MergeResult,
    SummaryBase,
    amounts_problem,
    check_days,
    normalize_writer_entry,
    plan_write,
    summarize,
    summary_base,
    validate_writer_entry,
    writer_entry_problem,
)
from .keysums import sum_entry_keys
from .layout import NUDGE_TYPE, SUMMARY_TYPE, WRITER_TYPE, summary_row_name, writer_row_name
from .leaserows import (
    LEASE_TYPE,
    apply_acquire,
    apply_release,
    check_lease_request,
    lease_answer,
    lease_doc_problem,
    lease_row_name,
)
from .shares import day_spend_from_entries

if TYPE_CHECKING:
    from ..budgets import Budget


class MemoryStore(ContextStore):
    def __init__(self, *, stale_after_s: float | None = DEFAULT_STALE_AFTER_S) -> None:
        self._reaps = ReapSchedule(stale_after_s)
        # Writer row name -> when it was last written (time.time()), for the reaper.
        self._written: dict[str, float] = {}
        self._rows: dict[tuple[str, str], Any] = {}
        # name -> writer row name, per day: the in-memory "index" on the date.
        self._days: dict[str, set[str]] = {}
        self._lock = threading.Lock()
        self._closed = False

    @classmethod
    def from_url(cls, url: str) -> MemoryStore:
        return cls()

    def __repr__(self) -> str:
        return f"MemoryStore(rows={len(self._rows)})"

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError(f"{self!r} is closed")

    def get(self, patch_type: str, name: str) -> dict[str, Any] | None:
        self._check_open()
        with self._lock:
            if (patch_type, name) not in self._rows:
                return None
            row = self._rows[(patch_type, name)]
        if not isinstance(row, dict):
            raise CheckpointError(
                f"row {patch_type}/{name} holds {type(row).__name__}, expected a JSON object"
            )
        return copy.deepcopy(row)

    def nudges_on(self, day: str) -> list[dict[str, Any]]:
        """The nudge documents claimed on `day` (read_day lists them)."""
        self._check_open()
        (day,) = check_days([day])
        with self._lock:
            rows = [copy.deepcopy(row) for (kind, _), row in sorted(self._rows.items())
                    if kind == NUDGE_TYPE and isinstance(row, dict)
                    and row.get("date") == day]
        return rows

    def merge_writer(self, entry: dict[str, Any]) -> MergeResult:
        result = self._write(entry, retire=False)
        if self._reaps.due():
            assert self._reaps.stale_after_s is not None
            # A malformed writer row elsewhere is left where it is; the merges name it.
            with contextlib.suppress(CheckpointError):
                self.reap_stale(self._reaps.stale_after_s)
        return result

    def reap_stale(self, stale_after_s: float, *, limit: int = 100) -> list[str]:
        """Retire live writer rows not written for `stale_after_s` seconds, at most
        `limit` (see PatchStore)."""
        self._check_open()
        seconds, limit = check_reap_args(stale_after_s, limit)
        cutoff = time.time() - seconds
        reaped: list[str] = []
        with self._lock:
            stale = sorted((at, name) for name, at in self._written.items() if at < cutoff)
            for _, name in stale:
                if len(reaped) >= limit:
                    break
                row = self._rows.get((WRITER_TYPE, name))
                if (not isinstance(row, dict) or row.get("retired") is True
                        or writer_entry_problem(row) is not None
                        or amounts_problem(row) is not None
                        or name != writer_row_name(row["date"], row["writer_id"])):
                    continue  # retired already, or quarantined: left where it is
                day = row["date"]
                summary = self._summary(day)
                plan = plan_write(row, row, summary.content, retire=True)
                if plan["row"] is not None:
                    self._rows[(WRITER_TYPE, name)] = copy.deepcopy(plan["row"])
                    self._written[name] = time.time()
                if plan["summary"] is not None and summary.writable:
                    self._rows[(SUMMARY_TYPE, summary_row_name(day))] = plan["summary"]
                reaped.append(name)
        return reaped

    def retire_writer(self, entry: dict[str, Any]) -> MergeResult:
        return self._write(entry, retire=True)

    def _write(self, entry: dict[str, Any], *, retire: bool) -> MergeResult:
        self._check_open()
        checked = normalize_writer_entry(entry, where="writer entry")
        dumps_content(checked)
        day, writer = checked["date"], checked["writer_id"]
        name = writer_row_name(day, writer)
        with self._lock:
            stored: Any = None
            if (WRITER_TYPE, name) in self._rows:
                stored = validate_writer_entry(
                    self._rows[(WRITER_TYPE, name)], where=f"row {WRITER_TYPE}/{name}")
            summary = self._summary(day)
            plan = plan_write(checked, stored, summary.content, retire=retire)
            # Summed before writing; a malformed row elsewhere is named, not summed.
            others = self._summarize(day, exclude=name, base=plan["others_base"],
                                     quarantined=summary.quarantined)
            if plan["row"] is not None:
                self._rows[(WRITER_TYPE, name)] = copy.deepcopy(plan["row"])
                self._days.setdefault(day, set()).add(name)
                self._written[name] = time.time()
            if plan["summary"] is not None and summary.writable:
                self._rows[(SUMMARY_TYPE, summary_row_name(day))] = plan["summary"]
        return {"applied": plan["applied"], "stored_seq": plan["stored_seq"], "others": others}

    def day_totals(self, days: Sequence[str]) -> dict[str, DayTotals]:
        self._check_open()
        wanted = check_days(days)
        with self._lock:
            out: dict[str, DayTotals] = {}
            for day in wanted:
                summary = self._summary(day)
                out[day] = self._summarize(day, exclude=None, base=summary.content,
                                           quarantined=summary.quarantined)
            return out

    def budget_day_spend(self, days: Sequence[str], budgets: Sequence[Budget], *,
                         closed_before: str) -> dict[str, dict[str, float]]:
        """{day: {budget: spend}} over each day's writers (own figure, else the
        breakdown's share), in Python (see otel_budget.stores.shares)."""
        wanted = check_days(days)
        check_days([closed_before])
        spend = day_spend_from_entries(self.writer_entries(wanted), budgets)
        return {d: spend.get(d, {b.name: 0.0 for b in budgets}) for d in wanted}

    def writer_entries(
        self, days: Sequence[str], *, breakdown: bool = True
    ) -> list[dict[str, Any]]:
        self._check_open()
        wanted = check_days(days)
        out: list[dict[str, Any]] = []
        with self._lock:
            for day in sorted(wanted):
                for name in sorted(self._days.get(day, ())):
                    row = copy.deepcopy(self._rows[(WRITER_TYPE, name)])
                    if not breakdown:
                        row.pop("by_attributes", None)
                    out.append(row)
        return out

    def _summary(self, day: str) -> SummaryBase:
        key = (SUMMARY_TYPE, summary_row_name(day))
        return summary_base(day, self._rows.get(key), present=key in self._rows, retired=lambda: [
            (n, self._rows[(WRITER_TYPE, n)]) for n in sorted(self._days.get(day, ()))
            if _is_retired(self._rows[(WRITER_TYPE, n)])])

    def _summarize(self, day: str, *, exclude: str | None, base: dict[str, Any] | None,
                   quarantined: Sequence[str] = ()) -> DayTotals:
        """`base` (the summary) plus the day's writer rows not retired."""
        rows = []
        bad = list(quarantined)
        for name in sorted(self._days.get(day, ())):
            if name == exclude:
                continue
            row = self._rows[(WRITER_TYPE, name)]
            if isinstance(row, dict) and row.get("retired") is True:
                continue
            if amounts_problem(row) is not None:
                bad.append(name)  # quarantined: named, left out, never fatal
                continue
            rows.append(row)
        return summarize(day, rows, base=base, quarantined=bad)

    def insert_if_absent(self, patch_type: str, name: str, content: dict[str, Any]) -> bool:
        self._check_open()
        dumps_content(content)
        with self._lock:
            if (patch_type, name) in self._rows:
                return False
            self._rows[(patch_type, name)] = copy.deepcopy(content)
            return True

    def replace_claim(self, patch_type: str, name: str, expected: dict[str, Any],
                      content: dict[str, Any]) -> bool:
        """Replace the row's content if it still equals `expected` (compare and set)."""
        self._check_open()
        dumps_content(content)
        with self._lock:
            if self._rows.get((patch_type, name)) != expected:
                return False
            self._rows[(patch_type, name)] = copy.deepcopy(content)
            return True

    # --- budget leases (otel_budget.leases) --------------------------------------------

    def lease_acquire(self, request: dict[str, Any]) -> dict[str, Any]:
        """Acquire, top up or renew a lease on a fleet budget, atomically."""
        self._check_open()
        req = check_lease_request(request)
        key = (LEASE_TYPE, lease_row_name(req["budget"], req["window"]))
        with self._lock:
            doc, answer = apply_acquire(self._lease_doc(key), req, time.time())
            self._rows[key] = doc
        return lease_answer(answer, "lease_acquire")

    def lease_release(self, request: dict[str, Any]) -> dict[str, Any]:
        """Give a lease back, settling its exact use."""
        self._check_open()
        req = check_lease_request(request, release=True)
        key = (LEASE_TYPE, lease_row_name(req["budget"], req["window"]))
        with self._lock:
            doc, answer = apply_release(self._lease_doc(key), req, time.time())
            if doc is not None:
                self._rows[key] = doc
        return lease_answer(answer, "lease_release")

    def _lease_doc(self, key: tuple[str, str]) -> dict[str, Any] | None:
        doc = self._rows.get(key)
        if doc is not None and (problem := lease_doc_problem(doc)) is not None:
            raise CorruptRowError(f"row {key[0]}/{key[1]}: {problem}")
        return doc

    def put_raw(self, patch_type: str, name: str, content: Any) -> None:
        """Test hook: store anything, however malformed."""
        with self._lock:
            self._rows[(patch_type, name)] = content
            if patch_type == WRITER_TYPE:
                self._written[name] = time.time()
            if patch_type == WRITER_TYPE and isinstance(content, dict):
                day = content.get("date")
                if isinstance(day, str):
                    self._days.setdefault(day, set()).add(name)

    def close(self) -> None:
        self._closed = True

    # --- the rest of the contract (otel_budget.stores.base) ----------------------------

    def key_sums(self, days: Sequence[str], budgets: Sequence[str], *,
                 exclude_writer: str = "") -> tuple[dict[str, dict[str, float]], list[str]]:
        """Each per-key budget's spend per key (see SummingStore), in Python."""
        return sum_entry_keys(self.writer_entries(days, breakdown=False), budgets,
                              exclude_writer=exclude_writer)

    def identity(self) -> str:
        """This object: nothing outlives it, so the spool keeps its entries apart."""
        return f"{type(self).__name__}:{id(self)}"

    @property
    def known_identity(self) -> str:
        return self.identity()

    @property
    def spool_key(self) -> str:
        return self.identity()

    @property
    def legacy_spool_key(self) -> None:
        return None


def _is_retired(row: Any) -> bool:
    return isinstance(row, dict) and row.get("retired") is True
