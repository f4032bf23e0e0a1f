"""Checkpointer: this writer's entry to the store, or to the local spool when the
store does not take it, and what became of the last attempt.

It owns the writer's identity and seq, builds entries from the ledger's snapshots,
sends them (merge_writer / retire_writer), spools what the store refused or could
not be reached for, replays the spool, and keeps the last CheckpointResult. It never
touches the fleet view: a merge's answer is handed back to the tracker, which
builds the next FleetView from it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from . import money
from .errors import BudgetError, CheckpointError
from .redact import describe_exception
from .spend import DaySnapshot
from .spool import Spool
from .stores.base import PatchStore
from .stores.entries import MergeResult, writer_entry_problem

_log = logging.getLogger("otel_budget")
#: What the checkpoint itself writes in an entry (and the store sets).
_ENTRY_KEYS = frozenset({"date", "writer_id", "instance_id", "timezone", "spend_usd", "seq",
                         "updated_at", "started_at", "by_attributes", "by_budget", "final",
                         "retired"})


def new_writer_id() -> str:
    """Unique per process start and per fork: never shared, so never overwritten."""
    return uuid.uuid4().hex[:16]


def describe(exc: BaseException) -> str:
    """A one-line error for logs and health, secrets masked. A foreign exception's text
    may quote anything (a row's content, a DSN), so only its type is shown."""
    if isinstance(exc, (BudgetError, OSError)):
        return describe_exception(exc)
    return f"{type(exc).__name__} (details withheld: not an otel_budget error)"


@dataclass(frozen=True)
class CheckpointResult:
    ok: bool
    at: str
    seq: int | None
    error: str | None = None
    spooled: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {"at": self.at, "seq": self.seq, "ok": self.ok, "error": self.error,
                "spooled": self.spooled}


class Checkpointer:
    def __init__(
        self, store: PatchStore, spool: Spool | None, *, instance_id: str, timezone: str,
        started_at: datetime,
    ) -> None:
        self._store = store
        self._spool = spool
        self._instance_id = instance_id
        self._timezone = timezone
        self._lock = threading.Lock()
        self._writer_id = new_writer_id()
        #: Extra content keys of every entry: key -> the value for a day (None: omit).
        self._fields: dict[str, Callable[[str], Any]] = {}
        self._reset(started_at)

    def add_entry_field(self, key: str, value_for_day: Callable[[str], Any]) -> None:
        """Every entry of a day gets `key` = value_for_day(day), unless that is None
        (what the meter's refusal log keeps per day, say). A failing provider leaves
        its key out: the entry, and the spend in it, must still be written."""
        if key in _ENTRY_KEYS:
            raise ValueError(f"entry key {key!r} is the checkpoint's own")
        self._fields[key] = value_for_day

    def _reset(self, started_at: datetime) -> None:
        self._started_at = started_at
        self._seq = 0
        self._last = CheckpointResult(ok=True, at="", seq=None)
        self._attempted = False
        self._last_success_mono: float | None = None
        self._spool_error: str | None = None
        #: False after a store error that is not the store refusing an entry.
        self.store_up = True

    def new_writer(self, started_at: datetime) -> None:
        """After a fork: a new writer, with its own seqs and results."""
        self._lock = threading.Lock()
        self._writer_id = new_writer_id()
        self._reset(started_at)

    @property
    def writer_id(self) -> str:
        return self._writer_id

    @property
    def spool(self) -> Spool | None:
        return self._spool

    def next_seq(self) -> int:
        with self._lock:
            self._seq += 1
            return self._seq

    def status(self) -> dict[str, Any]:
        with self._lock:
            since = self._last_success_mono
            return {
                "seq": self._seq,
                "last_checkpoint": self._last.as_dict(),
                "checkpoint_failed": self._attempted and not self._last.ok,
                # None until a checkpoint reached the store: an age of a checkpoint
                # that never ran would read as one that did.
                "checkpoint_age_s": (None if since is None
                                     else round(max(0.0, time.monotonic() - since), 3)),
                "spool_error": self._spool_error,
                "last_ok": self._last.ok,
            }

    def entry(self, snapshot: DaySnapshot, seq: int, stamp: str, *,
              final: bool = False) -> dict[str, Any]:
        entry = {
            "date": snapshot.day.isoformat(),
            "writer_id": self._writer_id,
            "instance_id": self._instance_id,
            "timezone": self._timezone,
            "spend_usd": snapshot.total_usd,
            "seq": seq,
            "updated_at": stamp,
            "started_at": self._started_at.isoformat(),
            "by_attributes": [
                {"attributes": _jsonable(attrs), "spend_usd": money.from_nanos(nanos)}
                for attrs, nanos in sorted(snapshot.by_attributes, key=lambda item: -item[1])
            ],
            "by_budget": {name: money.from_nanos(n) for name, n in snapshot.by_budget.items()},
        }
        for key, value_for_day in self._fields.items():
            try:
                value = value_for_day(snapshot.day.isoformat())
            except Exception as exc:
                _log.warning("otel_budget: entry field %r left out: %s", key, describe(exc))
                continue
            if value is not None:
                entry[key] = value
        if final:
            # This writer's last entry for the day (shutdown, or a closed day): the
            # store retires its row into the day's summary. Kept by the spool, so a
            # replay retires too.
            entry["final"] = True
        return entry

    def send(self, entry: dict[str, Any]) -> MergeResult:
        """merge_writer, or retire_writer for an entry marked final."""
        if entry.get("final") is True:
            return self._store.retire_writer(entry)
        return self._store.merge_writer(entry)

    def write(self, entry: dict[str, Any]) -> MergeResult | None:
        """Merge (or retire) one entry; on failure spool it and return None."""
        try:
            result = self.send(entry)
        except Exception as exc:
            message = describe(exc)
            _log.warning("otel_budget: checkpoint %s of %s failed: %s", entry["seq"],
                         entry["date"], message)
            spooled = self.spool_entry(entry)
            with self._lock:
                self.store_up = isinstance(exc, CheckpointError)
                self._last = CheckpointResult(ok=False, at=entry["updated_at"],
                                              seq=entry["seq"], error=message, spooled=spooled)
                self._attempted = True
            return None
        if self._spool is not None:
            with contextlib.suppress(OSError):
                self._spool.discard(entry["writer_id"], entry["date"],
                                    below_seq=entry["seq"] + 1)
        with self._lock:
            self.store_up = True
            self._last = CheckpointResult(ok=True, at=entry["updated_at"], seq=entry["seq"])
            self._attempted = True
            self._last_success_mono = time.monotonic()
        return result

    def mark_up(self) -> None:
        """The store answered a read: it is up again."""
        with self._lock:
            self.store_up = True

    def defer(self, entry: dict[str, Any]) -> bool:
        """Spool `entry` without trying the store (known down): a failed checkpoint."""
        spooled = self.spool_entry(entry)
        with self._lock:
            self._last = CheckpointResult(
                ok=False, at=entry["updated_at"], seq=entry["seq"], spooled=spooled,
                error="the store failed the last round; spooled, retried in the background")
            self._attempted = True
        return spooled

    def spool_entry(self, entry: dict[str, Any]) -> bool:
        if self._spool is None:
            return False
        try:
            self._spool.put(entry)
        except OSError as exc:
            with self._lock:
                self._spool_error = describe(exc)
            _log.error("otel_budget: cannot spool checkpoint to %s: %s", self._spool,
                       describe(exc))
            return False
        with self._lock:
            self._spool_error = None
        return True

    def replay_spool(self) -> tuple[bool, list[dict[str, Any]]]:
        """Send what the spool holds. Returns (another writer's entry reached the store,
        this writer's own entries that did)."""
        if self._spool is None:
            return False, []
        try:
            pending = self._spool.pending()
        except OSError:
            return False, []
        replayed = False
        own: list[dict[str, Any]] = []
        for item in pending:
            problem = spooled_entry_problem(item.entry)
            if problem is not None:
                _log.error("otel_budget: spooled entry %s is malformed (%s); set aside",
                           item.path.name, problem)
                with contextlib.suppress(OSError):
                    os.replace(item.path, item.path.with_suffix(".bad"))
                continue
            try:
                self.send(item.entry)
            except Exception:
                # The store is down, or refuses a well-formed entry because of what it
                # holds: keep them all for a later round.
                break
            with self._lock:
                self.store_up = True
            if item.entry.get("writer_id") == self._writer_id:
                own.append(item.entry)
            else:
                replayed = True
            with contextlib.suppress(OSError):
                self._spool.remove(item)
            _log.info("otel_budget: replayed spooled checkpoint %s", item.path.name)
        return replayed, own

    def spool_summary(self) -> dict[str, Any] | None:
        if self._spool is None:
            return None
        try:
            return self._spool.summary()
        except Exception as exc:  # health() never raises
            return {"entries": None, "error": describe(exc)}


def spooled_entry_problem(entry: dict[str, Any]) -> str | None:
    """What makes a spooled entry one no store would take (a hand-edited file, one from
    another version), or None: only such entries are set aside."""
    problem = writer_entry_problem(entry)
    if problem is None and "retired" in entry:
        problem = "retired is set by the store, not by a writer"
    return problem


def _jsonable(attributes: Mapping[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in attributes.items()}


__all__ = ["CheckpointResult", "Checkpointer", "describe", "new_writer_id"]
