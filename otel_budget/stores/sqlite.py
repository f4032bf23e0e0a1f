"""The embedded default: one SQLite file that several processes on one machine share.

WAL lets readers run beside the writer; every merge is one `BEGIN IMMEDIATE`
transaction, which takes the write lock before reading, so two processes can never
both read the old document and overwrite each other (a deferred BEGIN could, and
would also fail with SQLITE_BUSY without waiting for the busy timeout).
"""

from __future__ import annotations

import os
import sqlite3
import threading
from pathlib import Path
from typing import Any

from .. import ledger
from ..errors import ConfigError, StoreError
from .base import dumps_content, loads_content

_SCHEMA = """
CREATE TABLE IF NOT EXISTS quilt_patches (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    patch_type TEXT NOT NULL,
    name       TEXT NOT NULL,
    content    TEXT NOT NULL DEFAULT '{}',
    created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    updated_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    UNIQUE (patch_type, name)
)
"""

_NOW = "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')"


def sqlite_path(url: str) -> str:
    """sqlite:///rel.db -> "rel.db" (relative to the working directory);
    sqlite:////abs.db -> "/abs.db"."""
    path = url.split("://", 1)[1] if "://" in url else ""
    if not path.startswith("/") or len(path) < 2:
        raise ConfigError(
            f"store: sqlite URL must look like sqlite:///file.db or sqlite:////abs/file.db, got {url!r}"
        )
    return path[1:]


class SQLiteStore:
    def __init__(self, path: str | os.PathLike[str], *, busy_timeout_s: float = 30.0) -> None:
        if not str(path):
            raise ConfigError("store: sqlite URL needs a file path, e.g. sqlite:///otel_budget.db")
        # Absolute now: a daemon that chdirs (or a forked child) must reopen the same file.
        self._path = Path(os.path.abspath(path))
        self._busy_timeout_s = busy_timeout_s
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._pid = -1
        self._connection()  # fail at open time, not at the first checkpoint

    @classmethod
    def from_url(cls, url: str) -> SQLiteStore:
        return cls(sqlite_path(url))

    @property
    def path(self) -> Path:
        return self._path

    def __repr__(self) -> str:
        return f"SQLiteStore({str(self._path)!r})"

    def _connection(self) -> sqlite3.Connection:
        # A forked child must not share the parent's connection (SQLite forbids it).
        if self._conn is None or self._pid != os.getpid():
            try:
                conn = sqlite3.connect(
                    self._path, timeout=self._busy_timeout_s,
                    isolation_level=None, check_same_thread=False,
                )
                conn.execute("PRAGMA journal_mode=WAL")
                # FULL: the checkpoint is the only durable record of money spent.
                conn.execute("PRAGMA synchronous=FULL")
                conn.execute(f"PRAGMA busy_timeout={int(self._busy_timeout_s * 1000)}")
                conn.execute(_SCHEMA)
            except sqlite3.Error as exc:
                raise StoreError(f"cannot open SQLite store {str(self._path)!r}: {exc}") from None
            self._conn, self._pid = conn, os.getpid()
        return self._conn

    def get(self, patch_type: str, name: str) -> dict[str, Any] | None:
        with self._lock:
            try:
                row = self._connection().execute(
                    "SELECT content FROM quilt_patches WHERE patch_type = ? AND name = ?",
                    (patch_type, name),
                ).fetchone()
            except sqlite3.Error as exc:
                raise StoreError(f"reading {patch_type}/{name} failed: {exc}") from None
        if row is None:
            return None
        return loads_content(row[0], patch_type=patch_type, name=name)

    def merge_budget(
        self, name: str, instance_id: str, entry: dict[str, Any], *, day_meta: dict[str, Any]
    ) -> dict[str, Any]:
        with self._lock:
            conn = self._connection()
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    row = conn.execute(
                        "SELECT content FROM quilt_patches WHERE patch_type = ? AND name = ?",
                        (ledger.BUDGET_TYPE, name),
                    ).fetchone()
                    existing = (
                        loads_content(row[0], patch_type=ledger.BUDGET_TYPE, name=name)
                        if row is not None else None
                    )
                    doc, applied = ledger.merge_entry(
                        existing, instance_id, entry, name=name, day_meta=day_meta
                    )
                    if applied:
                        conn.execute(
                            "INSERT INTO quilt_patches (patch_type, name, content) VALUES (?, ?, ?) "
                            "ON CONFLICT (patch_type, name) DO UPDATE SET "
                            f"content = excluded.content, updated_at = {_NOW}",
                            (ledger.BUDGET_TYPE, name, dumps_content(doc)),
                        )
                    conn.execute("COMMIT")
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise StoreError(f"merging into budget/{name} failed: {exc}") from None
        return doc

    def insert_if_absent(self, patch_type: str, name: str, content: dict[str, Any]) -> bool:
        payload = dumps_content(content)
        with self._lock:
            try:
                cur = self._connection().execute(
                    "INSERT INTO quilt_patches (patch_type, name, content) VALUES (?, ?, ?) "
                    "ON CONFLICT (patch_type, name) DO NOTHING",
                    (patch_type, name, payload),
                )
            except sqlite3.Error as exc:
                raise StoreError(f"inserting {patch_type}/{name} failed: {exc}") from None
            return cur.rowcount == 1

    def close(self) -> None:
        with self._lock:
            if self._conn is not None and self._pid == os.getpid():
                self._conn.close()
            self._conn = None
