"""The embedded SQLite store on real files: URL forms, WAL, locking, errors, and corrupt
rows that must be reported (naming the row) and never touched."""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from otel_budget import (
    BudgetConfig,
    BudgetMeter,
    CheckpointError,
    ConfigError,
    StoreError,
    open_store,
)
from otel_budget.ledger import BUDGET_TYPE
from otel_budget.stores.sqlite import SQLiteStore
from tests.conftest import FakeClock

NAME = "budget_2026-11-25"  # today for the `clock` fixture
META = {"date": "2026-11-25", "timezone": "UTC", "daily_cap_usd": 10.0,
        "updated_at": "2026-11-25T10:00:00+00:00"}


def entry(spend: float, seq: int) -> dict[str, Any]:
    return {"spend_usd": spend, "seq": seq, "updated_at": "2026-11-25T10:00:00+00:00",
            "by_attributes": []}


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
                     (BUDGET_TYPE, name, content))
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
            store.merge_budget(NAME, "a", entry(1.0, 1), day_meta=META)
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
        store.merge_budget(NAME, "a", entry(1.0, 1), day_meta=META)
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
    store.merge_budget(NAME, "a", entry(0.1 + 0.2, 1), day_meta=META)
    store.merge_budget(NAME, "b", entry(0.36300000000000004, 1), day_meta=META)
    content = raw_rows(path)[0][3].decode()
    assert "0.30000000000000004" not in content and "0.36300000000000004" not in content
    assert '"total_usd":0.663' in content


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
    doc = store.merge_budget(NAME, "a", entry(2.0, 1), day_meta=META)
    waited = time.monotonic() - started
    holder.join()
    assert doc["total_usd"] == 2.0
    assert waited >= 0.2, "it waited for the lock rather than failing or skipping it"


def test_a_lock_held_past_the_busy_timeout_is_a_store_error_and_changes_nothing(
    tmp_path: Path,
) -> None:
    path = tmp_path / "busy.db"
    store = SQLiteStore(path, busy_timeout_s=0.2)
    try:
        store.merge_budget(NAME, "a", entry(1.0, 1), day_meta=META)
        before = raw_rows(path)
        locked = threading.Event()
        holder = threading.Thread(target=_hold_write_lock, args=(path, 0.8, locked))
        holder.start()
        assert locked.wait(5)
        started = time.monotonic()
        with pytest.raises(StoreError, match=NAME):
            store.merge_budget(NAME, "a", entry(5.0, 2), day_meta=META)
        assert time.monotonic() - started < 0.7
        holder.join()
        assert raw_rows(path) == before
        # the store is usable again once the lock is gone
        assert store.merge_budget(NAME, "a", entry(5.0, 2), day_meta=META)["total_usd"] == 5.0
    finally:
        store.close()


# --- corrupt rows ----------------------------------------------------------------------------

# (raw content, does `get` reject it too?) `get` only promises a JSON object; the shape of
# a budget document is checked by merge_budget and by the meter's restore.
CORRUPT: dict[str, tuple[str | bytes, bool]] = {
    "not-json": ("{not json", True),
    "truncated": ('{"instances": {"a": {"spend_usd": 1.0', True),
    "json-array": ("[1, 2, 3]", True),
    "json-string": ('"budget"', True),
    "nan": ('{"instances": {"host-b": {"spend_usd": NaN, "seq": 2}}}', True),
    "invalid-utf8-blob": (b"\xff\xfe{}", True),
    "instances-not-object": ('{"instances": [1, 2]}', False),
    "negative-spend": ('{"instances": {"host-b": {"spend_usd": -3.5, "seq": 2}}}', False),
    "seq-missing": ('{"instances": {"host-b": {"spend_usd": 3.5}}}', False),
}


@pytest.mark.parametrize("case", sorted(CORRUPT))
def test_corrupt_row_is_reported_and_left_untouched(
    db: tuple[Path, SQLiteStore], case: str
) -> None:
    path, store = db
    content, get_rejects = CORRUPT[case]
    write_raw(path, NAME, content)
    before = raw_rows(path)

    if get_rejects:
        with pytest.raises(CheckpointError, match=NAME):
            store.get(BUDGET_TYPE, NAME)
    else:
        assert isinstance(store.get(BUDGET_TYPE, NAME), dict)
    with pytest.raises(CheckpointError, match=NAME):
        store.merge_budget(NAME, "host-a", entry(1.0, 1), day_meta=META)
    assert raw_rows(path) == before

    # the store still works for other rows
    doc = store.merge_budget("budget_2026-11-26", "host-a", entry(1.0, 1), day_meta=META)
    assert doc["total_usd"] == 1.0
    assert raw_rows(path)[0] == before[0]


@pytest.mark.parametrize("case", ["not-json", "json-array", "instances-not-object",
                                  "negative-spend"])
def test_meter_start_on_a_corrupt_row_raises_and_never_writes_it(
    db: tuple[Path, SQLiteStore], clock: FakeClock, case: str
) -> None:
    path, store = db
    write_raw(path, NAME, CORRUPT[case][0])
    before = raw_rows(path)
    config = BudgetConfig(daily_cap_usd=10.0, instance_id="host-a", collect_interval_s=3600.0)
    meter = BudgetMeter(config, store=store, clock=clock)
    with pytest.raises(CheckpointError, match=NAME):
        meter.start()
    # A caller that carries on regardless must still not overwrite the row: not at the
    # 10th collection, not on demand, not at shutdown.
    meter.record(1.0)
    for _ in range(10):
        meter.collect()
    meter.checkpoint()
    assert meter.health()["status"] == "degraded"
    meter.shutdown()
    assert raw_rows(path) == before


def test_a_relative_path_is_fixed_when_the_store_is_opened(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A daemonising host does chdir("/") and forks after set-up; the child reconnects
    # (SQLite connections must not cross a fork) and must reach the same file.
    monkeypatch.chdir(tmp_path)
    store = open_store("sqlite:///rel.db")
    store.merge_budget(NAME, "parent", entry(1.0, 1), day_meta=META)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    pid = os.fork()
    if pid == 0:  # child: report through the exit status only
        code = 1
        try:
            store.merge_budget(NAME, "child", entry(2.0, 1), day_meta=META)
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    try:
        doc = store.get(BUDGET_TYPE, NAME)
    finally:
        store.close()
    assert doc is not None and doc["total_usd"] == 3.0
    assert list(elsewhere.iterdir()) == [], "no second database next to the new cwd"
