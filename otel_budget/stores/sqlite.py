"""The embedded default: one SQLite file that several processes on one machine share.

WAL lets readers run beside the writer; every merge is one `BEGIN IMMEDIATE`
transaction, which takes the write lock before reading, so two processes can never
both read the old row and overwrite each other (a deferred BEGIN could, and would
also fail with SQLITE_BUSY without waiting for the busy timeout).

Each writer owns one row per day; a merge reads and writes that row only, then
sums the day's other writer rows, found through an expression index on the date.

The store remembers which file it opened (device and inode): if the file is
deleted or replaced under it, a write raises StoreError instead of landing in an
unlinked file nobody will ever read.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import CheckpointError, ConfigError, CorruptRowError, StoreError
from .base import (
    DEFAULT_STALE_AFTER_S,
    ContextStore,
    ReapSchedule,
    check_reap_args,
    dumps_content,
    loads_content,
)
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
from .keysums import key_sums_of_rows, sqlite_key_sums
from .layout import (
    LEGACY_TYPE,
    NUDGE_TYPE,
    SUMMARY_TYPE,
    WRITER_TYPE,
    summary_row_name,
    writer_row_name,
)
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

# The day view's version, kept in its SQL text: an older view is replaced at open.
_VIEW_VERSION = "otel_budget_days v3: retired rows when the summary row is malformed"

# entries.summary_problem(s.content, day) is None, in SQL, for the summary row `s`.
# CASE, not AND: SQLite may evaluate AND's terms in any order, and the JSON functions
# raise on text that is not JSON.
_WELL_FORMED_SUMMARY = """(CASE WHEN NOT json_valid(s.content) THEN 0 ELSE
       json_type(s.content) = 'object'
       AND json_type(s.content, '$.date') = 'text'
       AND s.name = 'budget_' || json_extract(s.content, '$.date')
       AND json_type(s.content, '$.spend_nanos') = 'integer'
       AND json_extract(s.content, '$.spend_nanos') >= 0
       AND json_type(s.content, '$.writers') = 'integer'
       AND json_extract(s.content, '$.writers') >= 0
       AND coalesce(json_type(s.content, '$.updated_at'), 'null') IN ('text', 'null')
       AND json_type(s.content, '$.by_budget_nanos') = 'object'
       AND json_type(s.content, '$.budget_writers') = 'object'
       AND NOT EXISTS (SELECT 1 FROM json_each(s.content, '$.by_budget_nanos') AS e
                        WHERE e.type <> 'integer' OR e.value < 0)
       AND NOT EXISTS (SELECT 1 FROM json_each(s.content, '$.budget_writers') AS e
                        WHERE e.type <> 'integer' OR e.value < 0)
       AND NOT EXISTS (SELECT key FROM json_each(s.content, '$.by_budget_nanos')
                       EXCEPT SELECT key FROM json_each(s.content, '$.budget_writers'))
       AND NOT EXISTS (SELECT key FROM json_each(s.content, '$.budget_writers')
                       EXCEPT SELECT key FROM json_each(s.content, '$.by_budget_nanos'))
       END)"""

# The row types are the layout's constants, put into the SQL text itself: SQLite uses a
# partial index only for a query that spells its predicate the same (a ? would not).
_SCHEMA = (
    """
CREATE TABLE IF NOT EXISTS quilt_patches (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    patch_type TEXT NOT NULL,
    name       TEXT NOT NULL,
    content    TEXT NOT NULL DEFAULT '{}',
    created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    updated_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    UNIQUE (patch_type, name)
)
""",
    # The day's writer rows without a scan. Queries must spell the expression and
    # the predicate exactly so for SQLite to use it.
    f"""
CREATE INDEX IF NOT EXISTS quilt_patches_writer_day
    ON quilt_patches (json_extract(content, '$.date'))
    WHERE patch_type = '{WRITER_TYPE}'
""",
    # The day's writer rows not retired: what a merge sums (retired rows are in the
    # day's summary row). Spelled exactly so in _DAY_ROWS, which names it.
    f"""
CREATE INDEX IF NOT EXISTS quilt_patches_writer_live
    ON quilt_patches (json_extract(content, '$.date'))
    WHERE patch_type = '{WRITER_TYPE}' AND json_extract(content, '$.retired') IS NULL
""",
    # The day's retired writer rows: what rebuilds the summary row when it is absent
    # or malformed (quarantined). Spelled exactly so in _RETIRED_ROWS.
    f"""
CREATE INDEX IF NOT EXISTS quilt_patches_writer_retired
    ON quilt_patches (json_extract(content, '$.date'))
    WHERE patch_type = '{WRITER_TYPE}' AND json_extract(content, '$.retired') IS NOT NULL
""",
    # One row per date: the writer rows, the retired ones among them only while the
    # day's summary row is not well-formed (else that row stands for them: the store's
    # own sums do the same, and a malformed summary row must not hide them), and
    # version 1 day documents.
    # _VIEW_VERSION marks this version; a store file with an older view gets this one.
    f"""
CREATE VIEW IF NOT EXISTS otel_budget_days (date, total_usd, writers, updated_at) AS
/* {_VIEW_VERSION} */
SELECT day, round(sum(total), 9), sum(writers), max(updated_at) FROM (
    SELECT json_extract(w.content, '$.date') AS day,
           CASE WHEN json_type(w.content, '$.spend_usd') IN ('integer', 'real')
                THEN json_extract(w.content, '$.spend_usd') END AS total,
           1 AS writers,
           json_extract(w.content, '$.updated_at') AS updated_at
      FROM quilt_patches AS w
     WHERE w.patch_type = '{WRITER_TYPE}' AND json_valid(w.content)
       AND (json_extract(w.content, '$.retired') IS NULL
            OR NOT EXISTS (
                SELECT 1 FROM quilt_patches AS s
                 WHERE s.patch_type = '{SUMMARY_TYPE}'
                   AND s.name = 'budget_' || json_extract(w.content, '$.date')
                   AND {_WELL_FORMED_SUMMARY}))
    UNION ALL
    SELECT json_extract(content, '$.date'),
           json_extract(content, '$.spend_nanos') / 1e9,
           json_extract(content, '$.writers'),
           json_extract(content, '$.updated_at')
      FROM quilt_patches AS s
     WHERE patch_type = '{SUMMARY_TYPE}' AND {_WELL_FORMED_SUMMARY}
    UNION ALL
    SELECT coalesce(json_extract(content, '$.date'), substr(name, 8)),
           CASE WHEN json_type(content, '$.total_usd') IN ('integer', 'real')
                THEN json_extract(content, '$.total_usd') END,
           CASE WHEN json_type(content, '$.instances') = 'object'
                THEN (SELECT count(*) FROM json_each(content, '$.instances')) ELSE 0 END,
           json_extract(content, '$.updated_at')
      FROM quilt_patches
     WHERE patch_type = '{LEGACY_TYPE}' AND json_valid(content) AND json_type(content) = 'object'
)
GROUP BY day
""",
)

_log = logging.getLogger(__name__)

_NOW = "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')"

# The day's writer rows not retired. INDEXED BY: an error, not a silent scan of every
# row of the day, should the predicate ever stop matching the partial index.
_DAY_ROWS = (
    "SELECT name, json_extract(content, '$.spend_usd'), json_extract(content, '$.updated_at'), "
    "json_extract(content, '$.by_budget') FROM quilt_patches "
    "INDEXED BY quilt_patches_writer_live "
    f"WHERE patch_type = '{WRITER_TYPE}' AND json_extract(content, '$.date') = ? "
    "AND json_extract(content, '$.retired') IS NULL"
)
_RETIRED_ROWS = (
    "SELECT name, content FROM quilt_patches INDEXED BY quilt_patches_writer_retired "
    f"WHERE patch_type = '{WRITER_TYPE}' AND json_extract(content, '$.date') = ? "
    "AND json_extract(content, '$.retired') IS NOT NULL ORDER BY name"
)
_ROW = "SELECT content FROM quilt_patches WHERE patch_type = ? AND name = ?"
# Live writer rows not written since the cutoff, oldest first (the reaper's).
_STALE_ROWS = (
    "SELECT name, content FROM quilt_patches INDEXED BY quilt_patches_writer_live "
    f"WHERE patch_type = '{WRITER_TYPE}' AND json_extract(content, '$.retired') IS NULL "
    "AND updated_at < strftime('%Y-%m-%dT%H:%M:%fZ', 'now', ?) "
    "ORDER BY updated_at LIMIT ?"
)
_UPSERT = (
    "INSERT INTO quilt_patches (patch_type, name, content) VALUES (?, ?, ?) "
    "ON CONFLICT (patch_type, name) DO UPDATE SET "
    f"content = excluded.content, updated_at = {_NOW}"
)

_IN_MEMORY_HINT = (
    "store: an in-memory SQLite database cannot be shared between processes or even "
    "store handles; use memory:// for a throwaway store, or a file path such as "
    "sqlite:///otel_budget.db"
)


def sqlite_path(url: str) -> str:
    """sqlite:///rel.db -> "rel.db" (relative to the working directory);
    sqlite:////abs.db -> "/abs.db"."""
    path = url.split("://", 1)[1] if "://" in url else ""
    if _is_in_memory(path):
        raise ConfigError(_IN_MEMORY_HINT)
    if not path.startswith("/") or len(path) < 2:
        raise ConfigError(
            f"store: sqlite URL must look like sqlite:///file.db or sqlite:////abs/file.db, got {url!r}"
        )
    return path[1:]


_SCHEMA_OBJECTS = frozenset(
    {"quilt_patches", "quilt_patches_writer_day", "quilt_patches_writer_live",
     "quilt_patches_writer_retired", "otel_budget_days"}
)


def _schema_is_current(conn: sqlite3.Connection) -> bool:
    rows = conn.execute(
        f"SELECT name, sql FROM sqlite_master WHERE name IN ({', '.join('?' * len(_SCHEMA_OBJECTS))})",
        tuple(_SCHEMA_OBJECTS),
    ).fetchall()
    found = {name: sql for name, sql in rows}
    return set(found) == _SCHEMA_OBJECTS and _VIEW_VERSION in str(found["otel_budget_days"])


def _drop_outdated_view(conn: sqlite3.Connection) -> None:
    """An otel_budget_days of an earlier version (the first summed every writer row, the
    second trusted a malformed summary row): CREATE VIEW IF NOT EXISTS would keep it."""
    row = conn.execute(
        "SELECT sql FROM sqlite_master WHERE type = 'view' AND name = 'otel_budget_days'"
    ).fetchone()
    if row is not None and _VIEW_VERSION not in str(row[0]):
        conn.execute("DROP VIEW IF EXISTS otel_budget_days")


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    message = str(exc).lower()
    return "locked" in message or "busy" in message


def _is_in_memory(path: str) -> bool:
    lowered = path.lower()
    return ":memory:" in lowered or "mode=memory" in lowered


if TYPE_CHECKING:
    from ..budgets import Budget


class SQLiteStore(ContextStore):
    def __init__(self, path: str | os.PathLike[str], *, busy_timeout_s: float = 5.0,
                 stale_after_s: float | None = DEFAULT_STALE_AFTER_S) -> None:
        self._reaps = ReapSchedule(stale_after_s)
        if not str(path):
            raise ConfigError("store: sqlite URL needs a file path, e.g. sqlite:///otel_budget.db")
        if _is_in_memory(str(path)):
            raise ConfigError(_IN_MEMORY_HINT)
        if busy_timeout_s < 0:
            raise ConfigError("store: busy_timeout_s must be >= 0")
        # Absolute now: a daemon that chdirs (or a forked child) must reopen the same file.
        self._path = Path(os.path.abspath(path))
        self._busy_timeout_s = busy_timeout_s
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._pid = -1
        self._identity: tuple[int, int] | None = None
        self._closed = False
        self._connection()  # fail at open time, not at the first checkpoint

    @classmethod
    def from_url(cls, url: str) -> SQLiteStore:
        return cls(sqlite_path(url))

    @property
    def path(self) -> Path:
        return self._path

    def __repr__(self) -> str:
        return f"SQLiteStore({str(self._path)!r})"

    def identity(self) -> str:
        """The file itself (its real path: symlinks, `..` and relative spellings of
        the same file agree), for the local spool."""
        return f"sqlite:{os.path.realpath(self._path)}"

    @property
    def known_identity(self) -> str:
        return self.identity()

    def _connection(self) -> sqlite3.Connection:
        if self._closed:
            raise StoreError(f"{self!r} is closed")
        # A forked child must not share the parent's connection (SQLite forbids it).
        if self._conn is None or self._pid != os.getpid():
            if self._identity is not None:
                self._check_file()  # a child reopening must reach the same file
            try:
                conn = self._open_with_retry()
                st = os.stat(self._path)
            except (sqlite3.Error, OSError) as exc:
                raise StoreError(f"cannot open SQLite store {str(self._path)!r}: {exc}") from None
            if self._identity is None:
                self._identity = (st.st_dev, st.st_ino)
            self._conn, self._pid = conn, os.getpid()
        return self._conn

    def _open_with_retry(self) -> sqlite3.Connection:
        """Open, switch to WAL and create the schema, retrying while another process
        does the same. Workers starting together on a new file race for the exclusive
        lock that the WAL switch and the DDL need; SQLite answers some of those races
        with an immediate SQLITE_BUSY (its deadlock avoidance skips the busy handler),
        so the busy timeout alone does not cover them."""
        deadline = time.monotonic() + self._busy_timeout_s
        delay = 0.005
        while True:
            conn = sqlite3.connect(
                self._path, timeout=self._busy_timeout_s,
                isolation_level=None, check_same_thread=False,
            )
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                # FULL: the checkpoint is the only durable record of money spent.
                conn.execute("PRAGMA synchronous=FULL")
                conn.execute(f"PRAGMA busy_timeout={int(self._busy_timeout_s * 1000)}")
                if _schema_is_current(conn):
                    return conn  # opening an existing store need not wait for a writer
                # IMMEDIATE: take the write lock before reading the schema, so the
                # busy handler (not deadlock avoidance) decides who waits.
                conn.execute("BEGIN IMMEDIATE")
                try:
                    _drop_outdated_view(conn)
                    for statement in _SCHEMA:
                        conn.execute(statement)
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
                return conn
            except sqlite3.OperationalError as exc:
                conn.close()
                if not _is_busy(exc) or time.monotonic() + delay > deadline:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 0.1)
            except BaseException:
                conn.close()
                raise

    def _check_file(self) -> None:
        """StoreError if the path no longer names the file this store opened."""
        try:
            st = os.stat(self._path)
        except OSError as exc:
            raise StoreError(
                f"SQLite store {str(self._path)!r} is gone ({exc.strerror}); "
                "refusing to write into a deleted file"
            ) from None
        if (st.st_dev, st.st_ino) != self._identity:
            raise StoreError(
                f"SQLite store {str(self._path)!r} was replaced by another file since it "
                "was opened; reopen the store"
            )

    def _writable(self) -> sqlite3.Connection:
        conn = self._connection()
        self._check_file()
        return conn

    # --- the PatchStore protocol ---------------------------------------------------

    def get(self, patch_type: str, name: str) -> dict[str, Any] | None:
        with self._lock:
            conn = self._connection()
            try:
                row = conn.execute(
                    "SELECT content FROM quilt_patches WHERE patch_type = ? AND name = ?",
                    (patch_type, name),
                ).fetchone()
            except sqlite3.Error as exc:
                raise StoreError(f"reading {patch_type}/{name} failed: {exc}") from None
        if row is None:
            return None
        return loads_content(row[0], patch_type=patch_type, name=name)

    def merge_writer(self, entry: dict[str, Any]) -> MergeResult:
        result = self._write(entry, retire=False)
        if self._reaps.due():
            assert self._reaps.stale_after_s is not None
            try:
                self.reap_stale(self._reaps.stale_after_s)
            except (StoreError, CheckpointError) as exc:  # runs again next time
                _log.info("otel_budget: reaping stale writer rows failed: %s", exc)
        return result

    def reap_stale(self, stale_after_s: float, *, limit: int = 100) -> list[str]:
        """Retire live writer rows not written for `stale_after_s` seconds (the
        row's updated_at column), at most `limit`, in one transaction (see
        PatchStore)."""
        if self._closed:
            raise StoreError(f"{self!r} is closed")
        seconds, limit = check_reap_args(stale_after_s, limit)
        reaped: list[str] = []
        with self._lock:
            conn = self._writable()
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    for name, text in conn.execute(_STALE_ROWS, (f"-{seconds:f} seconds",
                                                                 limit)).fetchall():
                        try:
                            row = loads_content(text, patch_type=WRITER_TYPE, name=name)
                        except CheckpointError:
                            continue
                        if (writer_entry_problem(row) is not None
                                or amounts_problem(row) is not None
                                or row.get("retired") is not None
                                or name != writer_row_name(row["date"], row["writer_id"])):
                            continue  # quarantined: left where it is, named by the merges
                        day = row["date"]
                        summary = self._summary(conn, day)
                        plan = plan_write(row, row, summary.content, retire=True)
                        if plan["row"] is not None:
                            conn.execute(_UPSERT, (WRITER_TYPE, name, dumps_content(plan["row"])))
                        if plan["summary"] is not None and summary.writable:
                            conn.execute(_UPSERT, (SUMMARY_TYPE, summary_row_name(day),
                                                   dumps_content(plan["summary"])))
                        reaped.append(name)
                    conn.execute("COMMIT")
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise StoreError(f"reaping stale writer rows failed: {exc}") from None
        return reaped

    def retire_writer(self, entry: dict[str, Any]) -> MergeResult:
        return self._write(entry, retire=True)

    def _write(self, entry: dict[str, Any], *, retire: bool) -> MergeResult:
        if self._closed:
            raise StoreError(f"{self!r} is closed")
        checked = normalize_writer_entry(entry, where="writer entry")
        dumps_content(checked)
        day = checked["date"]
        name = writer_row_name(day, checked["writer_id"])
        where = f"row {WRITER_TYPE}/{name}"
        with self._lock:
            conn = self._writable()
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    # Checked again under the write lock: a swap may have raced the first check.
                    self._check_file()
                    row = conn.execute(_ROW, (WRITER_TYPE, name)).fetchone()
                    stored: dict[str, Any] | None = None
                    if row is not None:
                        stored = validate_writer_entry(
                            loads_content(row[0], patch_type=WRITER_TYPE, name=name), where=where
                        )
                    summary = self._summary(conn, day)
                    plan = plan_write(checked, stored, summary.content, retire=retire)
                    others = self._totals(conn, day, exclude=name, base=plan["others_base"],
                                          quarantined=summary.quarantined)
                    if plan["row"] is not None:
                        conn.execute(_UPSERT, (WRITER_TYPE, name, dumps_content(plan["row"])))
                    if plan["summary"] is not None and summary.writable:
                        conn.execute(_UPSERT, (SUMMARY_TYPE, summary_row_name(day),
                                               dumps_content(plan["summary"])))
                    conn.execute("COMMIT")
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                what = "retiring" if retire else "merging"
                raise StoreError(f"{what} {WRITER_TYPE}/{name} failed: {exc}") from None
        return {"applied": plan["applied"], "stored_seq": plan["stored_seq"], "others": others}

    def day_totals(self, days: Sequence[str]) -> dict[str, DayTotals]:
        wanted = check_days(days)
        with self._lock:
            conn = self._connection()
            try:
                conn.execute("BEGIN")  # one snapshot for every day
                try:
                    out: dict[str, DayTotals] = {}
                    for day in wanted:
                        summary = self._summary(conn, day)
                        out[day] = self._totals(conn, day, exclude=None, base=summary.content,
                                                quarantined=summary.quarantined)
                    return out
                finally:
                    conn.execute("COMMIT")
            except sqlite3.Error as exc:
                raise StoreError(f"reading day totals failed: {exc}") from None

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
        wanted = check_days(days)
        content = "content" if breakdown else "json_remove(content, '$.by_attributes')"
        out: list[dict[str, Any]] = []
        with self._lock:
            conn = self._connection()
            try:
                conn.execute("BEGIN")
                try:
                    for day in sorted(wanted):
                        rows = conn.execute(
                            f"SELECT name, {content} FROM quilt_patches "
                            f"WHERE patch_type = '{WRITER_TYPE}' "
                            "AND json_extract(content, '$.date') = ? ORDER BY name",
                            (day,),
                        ).fetchall()
                        out.extend(
                            loads_content(text, patch_type=WRITER_TYPE, name=name)
                            for name, text in rows
                        )
                finally:
                    conn.execute("COMMIT")
            except sqlite3.Error as exc:
                raise StoreError(f"reading writer entries failed: {exc}") from None
        return out

    def insert_if_absent(self, patch_type: str, name: str, content: dict[str, Any]) -> bool:
        payload = dumps_content(content)
        with self._lock:
            conn = self._writable()
            try:
                cur = conn.execute(
                    "INSERT INTO quilt_patches (patch_type, name, content) VALUES (?, ?, ?) "
                    "ON CONFLICT (patch_type, name) DO NOTHING",
                    (patch_type, name, payload),
                )
            except sqlite3.Error as exc:
                raise StoreError(f"inserting {patch_type}/{name} failed: {exc}") from None
            return cur.rowcount == 1

    def replace_claim(self, patch_type: str, name: str, expected: dict[str, Any],
                      content: dict[str, Any]) -> bool:
        """Replace the row's content if it still holds `expected` (compare and set on
        the canonical JSON text every store writes): True if this call replaced it."""
        payload, before = dumps_content(content), dumps_content(expected)
        with self._lock:
            conn = self._writable()
            try:
                cur = conn.execute(
                    f"UPDATE quilt_patches SET content = ?, updated_at = {_NOW} "
                    "WHERE patch_type = ? AND name = ? AND content = ?",
                    (payload, patch_type, name, before),
                )
            except sqlite3.Error as exc:
                raise StoreError(f"replacing {patch_type}/{name} failed: {exc}") from None
            return cur.rowcount == 1

    def nudges_on(self, day: str) -> list[dict[str, Any]]:
        """The nudge documents claimed on `day` (read_day lists them)."""
        (day,) = check_days([day])
        with self._lock:
            conn = self._connection()
            try:
                rows = conn.execute(
                    # A hand-edited row that is not JSON is no nudge: skipped, never an
                    # error for the whole day (json_extract would raise on it).
                    "SELECT name, content FROM quilt_patches WHERE patch_type = ? "
                    "AND CASE WHEN json_valid(content) THEN json_extract(content, '$.date') "
                    "END = ? ORDER BY name", (NUDGE_TYPE, day),
                ).fetchall()
            except sqlite3.Error as exc:
                raise StoreError(f"reading the nudges of {day} failed: {exc}") from None
        nudges = [loads_content(text, patch_type=NUDGE_TYPE, name=name)
                  for name, text in rows]
        return [n for n in nudges if isinstance(n, dict)]

    # --- budget leases (otel_budget.leases) --------------------------------------------

    def lease_acquire(self, request: dict[str, Any]) -> dict[str, Any]:
        """Acquire, top up or renew a lease on a fleet budget: one BEGIN IMMEDIATE
        transaction, so two processes never both grant the last dollar."""
        req = check_lease_request(request)
        return self._lease_step(req, apply_acquire, "lease_acquire")

    def lease_release(self, request: dict[str, Any]) -> dict[str, Any]:
        """Give a lease back, settling its exact use."""
        req = check_lease_request(request, release=True)
        return self._lease_step(req, apply_release, "lease_release")

    def _lease_step(self, req: dict[str, Any], step: Any, what: str) -> dict[str, Any]:
        if self._closed:
            raise StoreError(f"{self!r} is closed")
        name = lease_row_name(req["budget"], req["window"])
        with self._lock:
            conn = self._writable()
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    row = conn.execute(
                        "SELECT content FROM quilt_patches WHERE patch_type = ? AND name = ?",
                        (LEASE_TYPE, name),
                    ).fetchone()
                    doc = None
                    if row is not None:
                        doc = loads_content(row[0], patch_type=LEASE_TYPE, name=name)
                        if (problem := lease_doc_problem(doc)) is not None:
                            raise CorruptRowError(f"row {LEASE_TYPE}/{name}: {problem}")
                    new_doc, answer = step(doc, req, time.time())
                    if new_doc is not None:
                        conn.execute(
                            "INSERT INTO quilt_patches (patch_type, name, content) VALUES (?, ?, ?) "
                            "ON CONFLICT (patch_type, name) DO UPDATE SET "
                            f"content = excluded.content, updated_at = {_NOW}",
                            (LEASE_TYPE, name, dumps_content(new_doc)),
                        )
                    conn.execute("COMMIT")
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise StoreError(f"{what} on {LEASE_TYPE}/{name} failed: {exc}") from None
        return lease_answer(answer, what)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._conn is not None and self._pid == os.getpid():
                self._conn.close()
            self._conn = None

    # --- the rest of the contract (otel_budget.stores.base) ----------------------------

    def key_sums(self, days: Sequence[str], budgets: Sequence[str], *,
                 exclude_writer: str = "") -> tuple[dict[str, dict[str, float]], list[str]]:
        """Each per-key budget's spend per key, summed in SQL (see SummingStore):
        items that are no amount are skipped, so no row is named."""
        if not days or not budgets:
            return {}, []
        with self._lock:
            try:
                rows = self._connection().execute(
                    sqlite_key_sums(len(days), len(budgets)),
                    (*days, *budgets, exclude_writer)).fetchall()
            except sqlite3.Error as exc:
                raise StoreError(f"reading the spend per key failed: {exc}") from None
        return key_sums_of_rows(rows), []

    @property
    def spool_key(self) -> str:
        return self.identity()  # the real path: no I/O beyond the file system's

    @property
    def legacy_spool_key(self) -> str:
        """What version 2 keyed this file's spool by."""
        return f"sqlite:{self._path}"

    # --- plumbing ------------------------------------------------------------------

    @staticmethod
    def _summary(conn: sqlite3.Connection, day: str) -> SummaryBase:
        name = summary_row_name(day)
        row = conn.execute(_ROW, (SUMMARY_TYPE, name)).fetchone()
        stored: Any = None
        if row is not None:
            try:
                stored = loads_content(row[0], patch_type=SUMMARY_TYPE, name=name)
            except CheckpointError:  # not JSON: as malformed as a wrong field
                stored = None

        def retired() -> list[tuple[str, Any]]:
            rows: list[tuple[str, Any]] = []
            for writer, text in conn.execute(_RETIRED_ROWS, (day,)):
                try:
                    rows.append((writer, json.loads(text)))
                except ValueError:
                    rows.append((writer, None))  # named by rebuild_summary
            return rows

        return summary_base(day, stored, present=row is not None, retired=retired)

    @staticmethod
    def _totals(conn: sqlite3.Connection, day: str, *, exclude: str | None,
                base: dict[str, Any] | None, quarantined: Sequence[str] = ()) -> DayTotals:
        """`base` (the summary) plus the day's writer rows not retired; a row whose
        amounts are not amounts is left out and named (quarantined), never fatal."""
        rows: list[dict[str, Any]] = []
        bad: list[str] = list(quarantined)
        for name, spend, updated_at, by_budget in conn.execute(_DAY_ROWS, (day,)):
            if name == exclude:
                continue
            entry: dict[str, Any] = {"spend_usd": spend, "updated_at": updated_at}
            if by_budget is not None:
                try:
                    entry["by_budget"] = json.loads(by_budget)
                except ValueError:
                    entry["by_budget"] = by_budget  # a string: amounts_problem names it
            if amounts_problem(entry) is not None:
                bad.append(name)
                continue
            rows.append(entry)
        return summarize(day, rows, base=base, quarantined=bad)
