"""The embedded SQLite store on real files: URL forms, WAL, locking, errors, a file
deleted or replaced under the store, the day view, and several processes."""

from __future__ import annotations

import os
import re
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from otel_budget import ConfigError, StoreError, open_store
from otel_budget.stores.entries import LEGACY_TYPE, WRITER_TYPE, writer_row_name
from otel_budget.stores.sqlite import SQLiteStore
from tests.support.helpers import run_in_threads

DAY = "2026-11-25"
NAME = writer_row_name(DAY, "a")


def entry(spend: float, seq: int, writer: str = "a", day: str = DAY) -> dict[str, Any]:
    return {"date": day, "writer_id": writer, "instance_id": "host", "spend_usd": spend,
            "seq": seq, "updated_at": f"{day}T10:00:00+00:00", "by_attributes": []}


def raw_rows(path: Path) -> list[tuple[Any, ...]]:
    """Every column of every row, content as the stored bytes."""
    with sqlite3.connect(path) as conn:
        return conn.execute(
            "SELECT id, patch_type, name, CAST(content AS BLOB), typeof(content), "
            "created_at, updated_at FROM quilt_patches ORDER BY id"
        ).fetchall()


def write_raw(path: Path, name: str, content: str | bytes) -> None:
    conn = sqlite3.connect(path)
    try:
        conn.execute("INSERT INTO quilt_patches (patch_type, name, content) VALUES (?, ?, ?)",
                     (LEGACY_TYPE, name, content))
        conn.commit()
    finally:
        conn.close()


@pytest.fixture
def db(tmp_path: Path) -> Iterator[tuple[Path, SQLiteStore]]:
    path = tmp_path / "budget.db"
    store = SQLiteStore(path)
    try:
        yield path, store
    finally:
        store.close()


# --- URLs and opening ------------------------------------------------------------------------

def test_three_slashes_are_relative_to_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sub").mkdir()
    for url, expected in (("sqlite:///rel.db", tmp_path / "rel.db"),
                          ("sqlite:///sub/nested.db", tmp_path / "sub" / "nested.db")):
        store = open_store(url)
        try:
            store.merge_writer(entry(1.0, 1))
        finally:
            store.close()
        assert expected.is_file(), url
        assert raw_rows(expected)[0][2] == NAME


def test_four_slashes_are_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    target = tmp_path / "abs.db"
    url = f"sqlite:///{target}"
    assert url.startswith("sqlite:////")
    store = open_store(url)
    try:
        store.merge_writer(entry(1.0, 1))
    finally:
        store.close()
    assert target.is_file()
    assert list(elsewhere.iterdir()) == []


@pytest.mark.parametrize("url", ["sqlite://rel.db", "sqlite:///"])
def test_malformed_sqlite_urls_are_config_errors(
    url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="sqlite"):
        open_store(url)


@pytest.mark.parametrize("url", ["mysql://budget:pw-SECRET-9@db/quilt", "redis://x",
                                 "budget.db", "/var/lib/budget.db", "",
                                 # mistyped URLs still hold a password that must not leak
                                 "postgresql:/budget:pw-SECRET-9@db/quilt",
                                 "budget:pw-SECRET-9@db:5432/quilt"])
def test_unknown_or_missing_scheme_is_a_config_error(url: str) -> None:
    with pytest.raises(ConfigError) as info:
        open_store(url)
    assert "pw-SECRET-9" not in str(info.value)


def test_a_directory_is_not_a_store(tmp_path: Path) -> None:
    with pytest.raises(StoreError) as info:
        SQLiteStore(tmp_path)
    assert str(tmp_path) in str(info.value)


def test_a_missing_parent_directory_is_a_store_error(tmp_path: Path) -> None:
    path = tmp_path / "missing" / "budget.db"
    with pytest.raises(StoreError) as info:
        open_store(f"sqlite:///{path}")
    assert str(path) in str(info.value)
    assert not path.parent.exists(), "no directory is created behind the caller's back"


def test_wal_mode_is_on(db: tuple[Path, SQLiteStore]) -> None:
    path, _ = db
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_stored_values_carry_no_float_noise(db: tuple[Path, SQLiteStore]) -> None:
    path, store = db
    store.merge_writer(entry(0.1 + 0.2, 1))
    store.merge_writer(entry(0.36300000000000004, 1, writer="b"))
    content = b"".join(row[3] for row in raw_rows(path)).decode()
    assert "0.30000000000000004" not in content and "0.36300000000000004" not in content
    assert '"spend_usd":0.3,' in content and '"spend_usd":0.363,' in content
    assert store.day_totals([DAY])[DAY]["total_usd"] == 0.663


# --- locking -----------------------------------------------------------------------------

def _hold_write_lock(path: Path, seconds: float, locked: threading.Event) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        locked.set()
        time.sleep(seconds)
        conn.execute("COMMIT")
    finally:
        conn.close()


def test_merge_waits_for_another_writer(db: tuple[Path, SQLiteStore]) -> None:
    path, store = db
    locked = threading.Event()
    holder = threading.Thread(target=_hold_write_lock, args=(path, 0.4, locked))
    holder.start()
    assert locked.wait(5)
    started = time.monotonic()
    result = store.merge_writer(entry(2.0, 1))
    waited = time.monotonic() - started
    holder.join()
    assert result["applied"] is True
    assert waited >= 0.2, "it waited for the lock rather than failing or skipping it"


def test_a_lock_held_past_the_busy_timeout_is_a_store_error_and_changes_nothing(
    tmp_path: Path,
) -> None:
    path = tmp_path / "busy.db"
    store = SQLiteStore(path, busy_timeout_s=0.2)
    try:
        store.merge_writer(entry(1.0, 1))
        before = raw_rows(path)
        locked = threading.Event()
        holder = threading.Thread(target=_hold_write_lock, args=(path, 0.8, locked))
        holder.start()
        assert locked.wait(5)
        started = time.monotonic()
        with pytest.raises(StoreError, match=NAME):
            store.merge_writer(entry(5.0, 2))
        assert time.monotonic() - started < 0.7
        holder.join()
        assert raw_rows(path) == before
        # the store is usable again once the lock is gone
        assert store.merge_writer(entry(5.0, 2))["applied"] is True
        assert store.day_totals([DAY])[DAY]["total_usd"] == 5.0
    finally:
        store.close()


def test_workers_opening_a_new_file_together_all_open_it(tmp_path: Path) -> None:
    # Workers that start together race for the WAL switch and the schema; SQLite
    # answers some of those races with an immediate "database is locked".
    workers = 8
    for trial in range(40):
        path = tmp_path / f"race{trial}.db"
        barrier = threading.Barrier(workers)
        opened: list[SQLiteStore] = []

        def open_it(_: int, path: Path = path, barrier: threading.Barrier = barrier,
                    opened: list[SQLiteStore] = opened) -> None:
            barrier.wait()
            opened.append(SQLiteStore(path))

        errors = run_in_threads(open_it, workers)
        for store in opened:
            store.close()
        assert errors == [], f"trial {trial}"
        assert len(opened) == workers


@contextmanager
def _write_lock_held(path: Path) -> Iterator[None]:
    """Another connection holds the file's write lock for the whole block."""
    locked, release = threading.Event(), threading.Event()

    def hold() -> None:
        conn = sqlite3.connect(path, isolation_level=None)
        try:
            conn.execute("BEGIN IMMEDIATE")
            locked.set()
            release.wait(30)
            conn.execute("COMMIT")
        finally:
            conn.close()

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert locked.wait(5)
        yield
    finally:
        release.set()
        holder.join()


def test_opening_an_existing_store_does_not_wait_for_a_writer(tmp_path: Path) -> None:
    path = tmp_path / "held.db"
    SQLiteStore(path).close()
    with _write_lock_held(path), SQLiteStore(path, busy_timeout_s=0.2) as store:
        assert store.get("budget_writer", "absent") is None


def test_creating_the_schema_behind_a_held_lock_is_a_store_error_after_the_timeout(
    tmp_path: Path,
) -> None:
    path = tmp_path / "held.db"
    sqlite3.connect(path).close()  # an empty file: the schema must still be created
    with _write_lock_held(path), pytest.raises(StoreError, match="cannot open SQLite store"):
        SQLiteStore(path, busy_timeout_s=0.2)
    with SQLiteStore(path, busy_timeout_s=0.2) as store:  # fine once the lock is gone
        assert store.get("budget_writer", "absent") is None


def test_the_default_busy_timeout_is_five_seconds(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "t.db")
    try:
        conn = store._connection()
        assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == 5000
    finally:
        store.close()
    with SQLiteStore(tmp_path / "t.db", busy_timeout_s=0.25) as quick:
        assert quick._connection().execute("PRAGMA busy_timeout").fetchone()[0] == 250


# --- in-memory databases are refused -------------------------------------------------------

@pytest.mark.parametrize("url", ["sqlite:///:memory:", "sqlite://:memory:",
                                 "sqlite:///file::memory:?cache=shared",
                                 "sqlite:///file:budget?mode=memory&cache=shared"])
def test_an_in_memory_sqlite_url_is_a_config_error_pointing_to_memory(url: str) -> None:
    with pytest.raises(ConfigError, match="memory://"):
        open_store(url)


def test_an_in_memory_path_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="memory://"):
        SQLiteStore(":memory:")


# --- the file deleted or replaced under the store -------------------------------------------

def test_a_deleted_directory_is_a_store_error_not_a_write_into_nothing(tmp_path: Path) -> None:
    folder = tmp_path / "state"
    folder.mkdir()
    store = SQLiteStore(folder / "budget.db")
    try:
        store.merge_writer(entry(1.0, 1))
        for leftover in folder.iterdir():
            leftover.unlink()
        folder.rmdir()
        with pytest.raises(StoreError, match=re.escape(str(folder / "budget.db"))):
            store.merge_writer(entry(2.0, 2))
        with pytest.raises(StoreError, match=r"budget\.db"):
            store.insert_if_absent("sibling_nudge", "n", {"a": 1})
        assert not folder.exists()
    finally:
        store.close()


def test_an_unlinked_file_is_a_store_error(tmp_path: Path) -> None:
    path = tmp_path / "budget.db"
    store = SQLiteStore(path)
    try:
        store.merge_writer(entry(1.0, 1))
        path.unlink()
        with pytest.raises(StoreError, match="gone"):
            store.merge_writer(entry(2.0, 2))
        assert not path.exists(), "the store did not silently create a new file"
    finally:
        store.close()


def test_a_swapped_file_is_a_store_error_and_neither_file_changes(tmp_path: Path) -> None:
    path = tmp_path / "budget.db"
    store = SQLiteStore(path)
    try:
        store.merge_writer(entry(1.0, 1))
        other = SQLiteStore(tmp_path / "other.db")
        other.merge_writer(entry(9.0, 1, writer="z"))
        other.close()
        os.replace(path, tmp_path / "moved.db")
        os.replace(tmp_path / "other.db", path)
        before = raw_rows(path)
        with pytest.raises(StoreError, match="replaced"):
            store.merge_writer(entry(2.0, 2))
        with pytest.raises(StoreError, match="replaced"):
            store.insert_if_absent("sibling_nudge", "n", {"a": 1})
        assert raw_rows(path) == before, "the file now at the path is not written either"
    finally:
        store.close()


# --- the day view and the index -----------------------------------------------------------

def test_the_day_view_sums_writer_rows_and_legacy_documents(db: tuple[Path, SQLiteStore]) -> None:
    path, store = db
    store.merge_writer(entry(1.25, 1, writer="a"))
    store.merge_writer(entry(2.5, 1, writer="b") | {"updated_at": "2026-11-25T11:00:00+00:00"})
    store.merge_writer(entry(4.0, 1, writer="a", day="2026-11-26"))
    legacy = {"date": "2026-11-24", "total_usd": 7.5, "updated_at": "2026-11-24T23:00:00+00:00",
              "instances": {"x": {"spend_usd": 5.0, "seq": 1}, "y": {"spend_usd": 2.5, "seq": 1}}}
    store.insert_if_absent(LEGACY_TYPE, "budget_2026-11-24", legacy)
    # A day with both layouts (the day of the upgrade) adds them up.
    store.insert_if_absent(LEGACY_TYPE, "budget_2026-11-26", {
        "date": "2026-11-26", "total_usd": 1.0, "updated_at": "2026-11-26T01:00:00+00:00",
        "instances": {"old": {"spend_usd": 1.0, "seq": 4}}})
    with sqlite3.connect(path) as conn:
        rows = conn.execute("SELECT date, total_usd, writers, updated_at FROM otel_budget_days "
                            "ORDER BY date").fetchall()
        one = conn.execute("SELECT total_usd FROM otel_budget_days WHERE date = ?",
                           (DAY,)).fetchone()
    assert rows == [
        ("2026-11-24", 7.5, 2, "2026-11-24T23:00:00+00:00"),
        (DAY, 3.75, 2, "2026-11-25T11:00:00+00:00"),
        ("2026-11-26", 5.0, 2, "2026-11-26T10:00:00+00:00"),
    ]
    assert one == (3.75,)


def test_the_day_is_found_through_the_index(db: tuple[Path, SQLiteStore]) -> None:
    path, _ = db
    with sqlite3.connect(path) as conn:
        plan = conn.execute(
            "EXPLAIN QUERY PLAN SELECT name FROM quilt_patches WHERE patch_type = 'budget_writer' "
            "AND json_extract(content, '$.date') = ?", (DAY,)).fetchall()
    assert "USING INDEX quilt_patches_writer_day" in str(plan)


def test_retired_writers_count_once_in_the_view(db: tuple[Path, SQLiteStore]) -> None:
    path, store = db
    store.merge_writer(entry(1.25, 1, writer="a"))
    store.retire_writer(entry(2.5, 2, writer="b") | {"updated_at": "2026-11-25T11:00:00+00:00"})
    store.retire_writer(entry(2.5, 2, writer="b") | {"updated_at": "2026-11-25T11:00:00+00:00"})
    store.retire_writer(entry(0.25, 1, writer="c"))
    with sqlite3.connect(path) as conn:
        rows = conn.execute("SELECT date, total_usd, writers, updated_at FROM otel_budget_days"
                            ).fetchall()
        plan = conn.execute(
            "EXPLAIN QUERY PLAN SELECT name FROM quilt_patches WHERE patch_type = 'budget_writer' "
            "AND json_extract(content, '$.date') = ? "
            "AND json_extract(content, '$.retired') IS NULL", (DAY,)).fetchall()
    assert rows == [(DAY, 4.0, 3, "2026-11-25T11:00:00+00:00")]
    assert "USING INDEX quilt_patches_writer_live" in str(plan)


@pytest.mark.parametrize("summary", [
    None,  # deleted by hand
    '{"date": "2026-11-25", "spend_nanos": "2750000000", "writers": 2}',  # a string amount
    '{"date": "2026-11-25", "spend_nanos": 2750000000, "writers": 2, "updated_at": null, '
    '"by_budget_nanos": {"daily": 1}, "budget_writers": {"team": 1}}',  # budgets disagree
    '{"date": "2026-11-24", "spend_nanos": 2750000000, "writers": 2, "updated_at": null, '
    '"by_budget_nanos": {}, "budget_writers": {}}',  # another day's
    "not json",
])
def test_the_view_counts_retired_rows_when_the_summary_row_is_malformed_or_gone(
        db: tuple[Path, SQLiteStore], summary: str | None) -> None:
    path, store = db
    store.merge_writer(entry(1.25, 1, writer="a"))
    store.retire_writer(entry(2.5, 2, writer="b") | {"updated_at": "2026-11-25T11:00:00+00:00"})
    store.retire_writer(entry(0.25, 1, writer="c"))
    view = "SELECT date, total_usd, writers, updated_at FROM otel_budget_days"
    with sqlite3.connect(path) as conn:
        assert conn.execute(view).fetchall() == [(DAY, 4.0, 3, "2026-11-25T11:00:00+00:00")]
        if summary is None:
            conn.execute("DELETE FROM quilt_patches WHERE patch_type = 'budget_summary'")
        else:
            assert conn.execute("UPDATE quilt_patches SET content = ? WHERE "
                                "patch_type = 'budget_summary'", (summary,)).rowcount == 1
        rows = conn.execute(view).fetchall()
    assert rows == [(DAY, 4.0, 3, "2026-11-25T11:00:00+00:00")], "as the store's own sums"
    assert store.day_totals([DAY])[DAY]["total_usd"] == 4.0


def test_the_view_uses_a_well_formed_summary_row_not_the_retired_rows(
        db: tuple[Path, SQLiteStore]) -> None:
    path, store = db
    store.retire_writer(entry(2.5, 2, writer="b"))
    with sqlite3.connect(path) as conn:
        # What only the summary row says shows: the view reads it, not the rows behind it.
        conn.execute("UPDATE quilt_patches SET content = json_set(content, '$.spend_nanos', "
                     "7000000000) WHERE patch_type = 'budget_summary'")
        assert conn.execute("SELECT total_usd, writers FROM otel_budget_days").fetchall() == [
            (7.0, 1)]


@pytest.mark.parametrize("old_view", [
    # The first version: every writer row.
    "SELECT json_extract(content, '$.date'), sum(json_extract(content, '$.spend_usd')), "
    "count(*), NULL FROM quilt_patches WHERE patch_type = 'budget_writer' GROUP BY 1",
    # The second (its shape): the summary row for the retired ones, whatever it holds.
    "SELECT json_extract(content, '$.date'), 0, 0, NULL FROM quilt_patches "
    "WHERE patch_type IN ('budget_writer', 'budget_summary') GROUP BY 1",
])
def test_a_store_file_with_an_older_view_gets_the_new_one(tmp_path: Path,
                                                          old_view: str) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:  # an earlier version's table and view
        conn.execute("CREATE TABLE quilt_patches (id INTEGER PRIMARY KEY AUTOINCREMENT, "
                     "patch_type TEXT NOT NULL, name TEXT NOT NULL, "
                     "content TEXT NOT NULL DEFAULT '{}', created_at TEXT NOT NULL DEFAULT '', "
                     "updated_at TEXT NOT NULL DEFAULT '', UNIQUE (patch_type, name))")
        conn.execute("CREATE VIEW otel_budget_days (date, total_usd, writers, updated_at) AS "
                     + old_view)
    store = SQLiteStore(path)
    try:
        store.merge_writer(entry(1.0, 1, writer="a"))
        store.retire_writer(entry(2.0, 1, writer="b"))
        assert store.day_totals([DAY])[DAY]["total_usd"] == 3.0
    finally:
        store.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT total_usd, writers FROM otel_budget_days").fetchall() == [
            (3.0, 2)]
        (sql,) = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'otel_budget_days'"
                              ).fetchone()
    assert "otel_budget_days v3" in sql, "replaced, not kept"


# --- several processes ---------------------------------------------------------------------

def _sqlite_writer(path: str, index: int, rounds: int) -> None:
    store = SQLiteStore(path)
    try:
        for seq in range(1, rounds + 1):
            store.merge_writer(entry(round(seq * 0.013 + index * 1e-9, 9), seq, writer=f"p{index}"))
    finally:
        store.close()


def test_four_processes_on_one_file_lose_nothing(tmp_path: Path) -> None:
    import multiprocessing

    path = tmp_path / "shared.db"
    SQLiteStore(path).close()
    rounds = 60
    context = multiprocessing.get_context("spawn")
    procs = [context.Process(target=_sqlite_writer, args=(str(path), i, rounds)) for i in range(4)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(120)
    assert [proc.exitcode for proc in procs] == [0, 0, 0, 0]
    with SQLiteStore(path) as store:
        entries = store.writer_entries([DAY])
        totals = store.day_totals([DAY])[DAY]
    assert {e["writer_id"]: e["seq"] for e in entries} == {f"p{i}": rounds for i in range(4)}
    expected = round(sum(round(rounds * 0.013 + i * 1e-9, 9) for i in range(4)), 9)
    assert totals["writers"] == 4 and abs(totals["total_usd"] - expected) < 1e-9


def test_a_forked_child_uses_its_own_connection_on_the_same_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A daemonising host does chdir("/") and forks after set-up; the child reconnects
    # (SQLite connections must not cross a fork) and must reach the same file.
    monkeypatch.chdir(tmp_path)
    store = open_store("sqlite:///rel.db")
    store.merge_writer(entry(1.0, 1, writer="parent"))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    pid = os.fork()
    if pid == 0:  # child: report through the exit status only
        code = 1
        try:
            store.merge_writer(entry(2.0, 1, writer="child"))
            store.close()
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    try:
        totals = store.day_totals([DAY])[DAY]  # the parent's connection survived the child
        assert store.get(WRITER_TYPE, writer_row_name(DAY, "child")) is not None
    finally:
        store.close()
    assert totals["total_usd"] == 3.0 and totals["writers"] == 2
    assert list(elsewhere.iterdir()) == [], "no second database next to the new cwd"
