"""The spool cannot be fooled (issue 17, item 6).

Each attack the adversarial pass measured on version 2, on real stores: another
spelling of the same database replays; `postgresql://` plus `PGDATABASE` naming
another database does not replay into it; a spooled `"spend_usd": "abc"`, a
truncated file, a planted entry are set aside, listed in `health()["spool"]` with
their amounts where readable, and never break `health()`; without a home there is
no fallback under the shared temporary directory; a directory another user can
write is refused, named in health.

"Another process on this host spooled it" is played by a `Spool` of the same
store writing the entry, exactly as the tracker does (`Spool.put`).
"""

from __future__ import annotations

import json
import os
import stat
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

import otel_budget
from otel_budget import BudgetConfig, BudgetMeter, SpoolError
from otel_budget.spool import Spool, default_spool_dir
from otel_budget.stores.memory import MemoryStore
from otel_budget.stores.postgres import PostgresStore
from otel_budget.stores.sqlite import SQLiteStore
from tests.support.helpers import FakeClock
from tests.support.pg_server import PgServer

DAY = "2026-11-25"


def _clock() -> FakeClock:
    return FakeClock(datetime(2026, 11, 25, 12, 0, tzinfo=timezone.utc))


def _config(spool: Path | None) -> BudgetConfig:
    return BudgetConfig(daily_cap_usd=1_000_000.0, instance_id="victim", checkpoint_every=1,
                        collect_interval_s=3600.0,
                        spool_dir=str(spool) if spool is not None else None)


def _entry(writer: str, spend: Any, seq: int = 3) -> dict[str, Any]:
    return {"date": DAY, "writer_id": writer, "instance_id": "old", "spend_usd": spend,
            "seq": seq, "updated_at": f"{DAY}T11:00:00+00:00"}


def _pg(url: str) -> PostgresStore:
    return PostgresStore(url, pool_timeout_s=2.0, connect_timeout_s=2)


def _replayed_total(store: Any, spool: Path) -> float:
    meter = BudgetMeter(_config(spool), store=store, clock=_clock()).start()
    try:
        return float(otel_budget.read_day(store, DAY)["total_usd"])
    finally:
        meter.shutdown(timeout=3)


# --- identity, not spelling ------------------------------------------------------------

def test_sqlite_another_spelling_of_the_same_file_replays(tmp_path: Path) -> None:
    (tmp_path / "db").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "db")
    first = SQLiteStore(tmp_path / "db" / "budget.db")
    Spool(str(tmp_path / "spool"), store=first).put(_entry("gone", 2.0))
    first.close()
    other_spelling = SQLiteStore(tmp_path / "link" / ".." / "link" / "budget.db")
    try:
        assert _replayed_total(other_spelling, tmp_path / "spool") == 2.0
    finally:
        other_spelling.close()


def test_postgres_another_spelling_of_the_same_database_replays(
    pg_server: PgServer, pg_fresh_database: Any, tmp_path: Path,
) -> None:
    url = pg_fresh_database(migrate=True)
    dbname = url.rsplit("/", 1)[1]
    first = _pg(url)
    try:
        assert first.identity()  # the store answered: entries are keyed by the database
        Spool(str(tmp_path / "spool"), store=first).put(_entry("gone", 2.0))
    finally:
        first.close()
    keyword_dsn = f"host=localhost port={pg_server.port} dbname={dbname} user=postgres"
    second = _pg(keyword_dsn)
    try:
        assert _replayed_total(second, tmp_path / "spool") == 2.0
    finally:
        second.close()


def test_postgres_pgdatabase_naming_another_database_does_not_replay_into_it(
    pg_server: PgServer, pg_fresh_database: Any, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url_a = pg_fresh_database(migrate=True)
    url_b = pg_fresh_database(migrate=True)
    first = _pg(url_a)
    try:
        first.identity()
        Spool(str(tmp_path / "spool"), store=first).put(_entry("gone", 3.0))
    finally:
        first.close()
    # The same spelling as a bare URL would be, leading to database B.
    monkeypatch.setenv("PGDATABASE", url_b.rsplit("/", 1)[1])
    bare = _pg(f"postgresql://postgres@127.0.0.1:{pg_server.port}")
    try:
        assert _replayed_total(bare, tmp_path / "spool") == 0.0
    finally:
        bare.close()
    monkeypatch.delenv("PGDATABASE")
    owner = _pg(url_a)
    try:
        assert _replayed_total(owner, tmp_path / "spool") == 3.0
    finally:
        owner.close()


def test_postgres_offline_key_resolves_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    # Before the server ever answered: where the DSN leads, with libpq's defaults.
    url = "postgresql://postgres:pw@127.0.0.1:1"
    monkeypatch.setenv("PGDATABASE", "db_one")
    one = PostgresStore(url, pool_timeout_s=0.2, connect_timeout_s=2)
    monkeypatch.setenv("PGDATABASE", "db_two")
    two = PostgresStore(url, pool_timeout_s=0.2, connect_timeout_s=2)
    try:
        assert one.spool_key != two.spool_key
        assert "db_one" in one.spool_key and "pw" not in one.spool_key
        assert one.known_identity is None
    finally:
        one.close()
        two.close()


# --- damaged, hostile and planted files -----------------------------------------------

@pytest.fixture
def sqlite_store(tmp_path: Path) -> Any:
    store = SQLiteStore(tmp_path / "budget.db")
    yield store
    store.close()


def test_a_string_amount_never_breaks_health_and_is_listed(
    sqlite_store: SQLiteStore, tmp_path: Path,
) -> None:
    spool = Spool(str(tmp_path / "spool"), store=sqlite_store)
    directory = spool.put(_entry("other", "abc")).parent  # MAC-valid, amount malformed
    (directory / f"raw_{DAY}_000000000001.json").write_text(
        json.dumps(_entry("raw", "abc")))  # not even an envelope
    meter = BudgetMeter(_config(tmp_path / "spool"), store=sqlite_store, clock=_clock())
    try:
        health = meter.health()  # before any replay: must not raise
        assert health["spool"]["entries"] in (0, 1)
        meter.start()
        health = meter.health()
        names = sorted(Path(i["file"]).name for i in health["spool"]["set_aside"])
        assert names == [f"other_{DAY}_000000000003.bad", f"raw_{DAY}_000000000001.bad"]
        assert all(i["spend_usd"] is None for i in health["spool"]["set_aside"])
        assert health["status"] == "degraded"
        assert any("set aside" in r for r in health["reasons"])
        assert otel_budget.read_day(sqlite_store, DAY)["total_usd"] == 0.0
    finally:
        meter.shutdown(timeout=2)


def test_a_truncated_file_is_set_aside_with_its_amount(
    sqlite_store: SQLiteStore, tmp_path: Path,
) -> None:
    path = Spool(str(tmp_path / "spool"), store=sqlite_store).put(_entry("gone", 5.0))
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    meter = BudgetMeter(_config(tmp_path / "spool"), store=sqlite_store, clock=_clock()).start()
    try:
        health = meter.health()
        assert [(Path(i["file"]).name, i["spend_usd"]) for i in health["spool"]["set_aside"]] \
            == [(f"gone_{DAY}_000000000003.bad", 5.0)]
        assert health["status"] == "degraded"
    finally:
        meter.shutdown(timeout=2)


def test_a_planted_entry_is_never_replayed(sqlite_store: SQLiteStore, tmp_path: Path) -> None:
    spool = Spool(str(tmp_path / "spool"), store=sqlite_store)
    genuine = spool.put(_entry("gone", 1.0))
    envelope = json.loads(genuine.read_text())
    planted = dict(envelope, entry=_entry("evil", 999_999.0), spend_usd=999_999.0)
    (genuine.parent / f"evil_{DAY}_000000000003.json").write_text(json.dumps(planted))
    edited = dict(envelope, entry=_entry("gone", 999_999.0, seq=4))  # the genuine MAC
    (genuine.parent / f"gone_{DAY}_000000000004.json").write_text(json.dumps(edited))
    foreign = Spool(str(tmp_path / "spool"), store=SQLiteStore(tmp_path / "elsewhere.db"))
    copied = foreign.put(_entry("copied", 7.0))  # valid, but for another store
    (genuine.parent / copied.name).write_bytes(copied.read_bytes())
    meter = BudgetMeter(_config(tmp_path / "spool"), store=sqlite_store, clock=_clock()).start()
    try:
        health = meter.health()
        assert otel_budget.read_day(sqlite_store, DAY)["total_usd"] == 1.0
        listed = {Path(i["file"]).name: i["spend_usd"] for i in health["spool"]["set_aside"]}
        assert listed == {f"evil_{DAY}_000000000003.bad": 999_999.0,
                          f"gone_{DAY}_000000000004.bad": 999_999.0,
                          f"copied_{DAY}_000000000003.bad": 7.0}
        assert health["status"] == "degraded"
    finally:
        meter.shutdown(timeout=2)


# --- where the spool lives ------------------------------------------------------------

def test_no_home_means_no_spool_under_the_temporary_directory(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
) -> None:
    monkeypatch.chdir(tmp_path)  # nor in the working directory
    monkeypatch.delenv("HOME", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    # The boundary: no passwd entry with a home for this uid either.
    monkeypatch.setattr(os.path, "expanduser", lambda path: path)
    with pytest.raises(SpoolError, match="HOME"):
        default_spool_dir()
    before = set(os.listdir(tempfile.gettempdir()))
    store = MemoryStore()
    meter = BudgetMeter(_config(None), store=store, clock=_clock()).start()
    try:
        meter.record(1.0, {"agent": "a"})
        health = meter.health()
        assert "HOME" in str(health["spool"]["error"])
        assert health["status"] == "degraded"
        assert any("spool" in r for r in health["reasons"])
    finally:
        meter.shutdown(timeout=2)
    created = set(os.listdir(tempfile.gettempdir())) - before
    assert not [n for n in created if "otel_budget" in n]
    assert list(tmp_path.iterdir()) == []


def test_the_directories_it_creates_are_private(sqlite_store: SQLiteStore, tmp_path: Path) -> None:
    root = tmp_path / "a" / "b" / "spool"
    path = Spool(str(root), store=sqlite_store).put(_entry("w", 1.0))
    for directory in (tmp_path / "a", tmp_path / "a" / "b", root, path.parent):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700, directory
    assert stat.S_IMODE((root / ".spool-key").stat().st_mode) == 0o600


def test_a_directory_others_can_write_is_refused_and_named(
    sqlite_store: SQLiteStore, tmp_path: Path,
) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)  # world-writable, no sticky bit
    spool = shared / "spool"
    with pytest.raises(SpoolError, match="other users can write"):
        Spool(str(spool), store=sqlite_store).put(_entry("w", 1.0))
    meter = BudgetMeter(_config(spool), store=sqlite_store, clock=_clock()).start()
    try:
        meter.record(1.0, {"agent": "a"})
        health = meter.health()
        assert health["status"] == "degraded"
        assert any(str(shared) in r for r in health["reasons"]), health["reasons"]
    finally:
        meter.shutdown(timeout=2)
    assert not spool.exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a directory to another user needs root")
def test_a_directory_of_another_user_is_refused(
    sqlite_store: SQLiteStore, tmp_path: Path,
) -> None:
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o700)
    os.chown(theirs, 65534, 65534)  # nobody
    with pytest.raises(SpoolError, match="another user"):
        Spool(str(theirs), store=sqlite_store).put(_entry("w", 1.0))


def test_a_sticky_shared_ancestor_is_fine_below_our_own_directory(
    sqlite_store: SQLiteStore, tmp_path: Path,
) -> None:
    sticky = tmp_path / "sticky"
    sticky.mkdir()
    sticky.chmod(0o1777)  # like /tmp
    path = Spool(str(sticky / "mine" / "spool"), store=sqlite_store).put(_entry("w", 1.0))
    assert path.exists()


def test_spools_starting_together_agree_on_one_key(sqlite_store: SQLiteStore, tmp_path: Path) -> None:
    import threading

    root = tmp_path / "spool"
    barrier = threading.Barrier(8)
    errors: list[BaseException] = []

    def put(i: int) -> None:
        spool = Spool(str(root), store=sqlite_store)
        barrier.wait()
        try:
            spool.put(_entry(f"w{i}", 1.0))
        except BaseException as exc:  # collected: the assertion below names it
            errors.append(exc)

    threads = [threading.Thread(target=put, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert errors == []
    reader = Spool(str(root), store=sqlite_store)
    assert sorted(item.entry["writer_id"] for item in reader.pending()) == [
        f"w{i}" for i in range(8)]
    assert reader.summary()["set_aside"] == []
    assert [p.name for p in root.iterdir() if p.name.startswith(".tmp")] == []


def test_reading_the_spool_never_asks_a_store_that_has_not_answered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A store that is down must not cost a wait before the replay even starts.
    store = PostgresStore("postgresql://postgres@127.0.0.1:1/db", pool_timeout_s=0.2,
                          connect_timeout_s=2)
    asked: list[int] = []
    real_identity = store.identity

    def counting_identity() -> str:
        asked.append(1)
        return real_identity()

    monkeypatch.setattr(store, "identity", counting_identity)
    try:
        spool = Spool(str(tmp_path / "spool"), store=store)
        spool.put(_entry("w", 1.0))  # under the offline key
        assert [i.entry["writer_id"] for i in spool.pending()] == ["w"]
        assert spool.summary()["entries"] == 1
        assert asked == []
    finally:
        store.close()


def test_a_group_writable_directory_of_a_private_group_is_fine(
    sqlite_store: SQLiteStore, tmp_path: Path,
) -> None:
    # umask 002 systems (user-private groups) create ~/.cache 0775.
    import grp
    import pwd

    me = pwd.getpwuid(os.geteuid())
    if grp.getgrgid(me.pw_gid).gr_name != me.pw_name:
        pytest.skip("this user has no user-private group")
    cache = tmp_path / "cache"
    cache.mkdir()
    cache.chmod(0o775)
    assert Spool(str(cache / "spool"), store=sqlite_store).put(_entry("w", 1.0)).exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a directory to another group needs root")
def test_a_directory_writable_by_a_shared_group_is_refused(
    sqlite_store: SQLiteStore, tmp_path: Path,
) -> None:
    shared = tmp_path / "team"
    shared.mkdir()
    os.chown(shared, os.geteuid(), 65534)  # nogroup: not this user's own
    shared.chmod(0o770)
    with pytest.raises(SpoolError, match="other users can write"):
        Spool(str(shared / "spool"), store=sqlite_store).put(_entry("w", 1.0))


def test_entries_spooled_by_version_2_are_shown_not_replayed(
    sqlite_store: SQLiteStore, tmp_path: Path,
) -> None:
    import hashlib

    # Version 2 keyed the directory by the URL's spelling and wrote bare entries.
    old_key = f"sqlite:{sqlite_store.path}"
    old_dir = tmp_path / "spool" / hashlib.sha256(old_key.encode()).hexdigest()[:24]
    old_dir.mkdir(parents=True, mode=0o700)
    (old_dir / f"v2writer_{DAY}_000000000004.json").write_text(json.dumps(_entry("v2writer", 4.5)))
    meter = BudgetMeter(_config(tmp_path / "spool"), store=sqlite_store, clock=_clock()).start()
    try:
        health = meter.health()
        assert [(Path(i["file"]).name, i["spend_usd"]) for i in health["spool"]["legacy"]] == [
            (f"v2writer_{DAY}_000000000004.json", 4.5)]
        assert health["status"] == "degraded"
        assert otel_budget.read_day(sqlite_store, DAY)["total_usd"] == 0.0
    finally:
        meter.shutdown(timeout=2)
