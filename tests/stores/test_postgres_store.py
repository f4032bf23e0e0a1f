"""PostgresStore beyond the shared contract: the SQL agrees with entries.summarize,
timeouts and a missing schema are clear StoreErrors, secrets stay out of messages,
the day is found through the index, 16 processes lose nothing (directly and
through PgBouncer in transaction mode), and the benchmark runs."""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import threading
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from otel_budget import StoreError
from otel_budget.stores.base import open_store
from otel_budget.stores.entries import (
    WRITER_TYPE,
    normalize_writer_entry,
    summarize,
    writer_row_name,
)
from otel_budget.stores.postgres import PostgresStore
from tests.bench import pg_c_client, pgbench
from tests.support.pg_server import PgServer, find_bindir
from tests.support.pgbouncer_server import DEFAULT_POOL_SIZE, PgBouncer

DAY = "2026-11-25"
NAME = writer_row_name(DAY, "a")


def entry(writer: str, spend: float, seq: int, *, day: str = DAY,
          budgets: dict[str, float] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "date": day, "writer_id": writer, "instance_id": "host", "spend_usd": spend,
        "seq": seq, "updated_at": f"{day}T10:00:00+00:00",
        "by_attributes": [{"attributes": {"agent": "x"}, "spend_usd": spend}]}
    if budgets is not None:
        out["by_budget"] = budgets
    return out


def test_the_sql_functions_called_directly_agree_with_summarize(pg_clean: str) -> None:
    """Without the store's own checks and rounding: other clients (psql, the Supabase
    SQL editor, another language) get the same sums, to the nano-dollar."""
    rng = random.Random(7)
    days = ["2026-11-24", DAY]
    latest: dict[tuple[str, str], dict[str, Any]] = {}
    with psycopg.connect(pg_clean, autocommit=True) as conn:
        for step in range(200):
            day, writer = rng.choice(days), rng.choice(["a", "b", "c", "d'e"])
            spend = rng.uniform(0, 3) / rng.choice([1, 7, 1e3])
            budgets = {"daily": round(spend, 9), "team": rng.choice([0, 1, 0.1])}
            raw = entry(writer, round(spend, 9), step, day=day, budgets=budgets)
            row = conn.execute("select public.otel_budget_merge_writer(%s::jsonb)",
                               (json.dumps(raw),)).fetchone()
            assert row is not None and row[0]["applied"] is True
            others = [e for (d, w), e in latest.items() if d == day and w != writer]
            want = summarize(day, others)
            got = row[0]["others"]
            assert float(got["total_usd"]) == want["total_usd"], step
            assert {k: float(v) for k, v in got["by_budget"].items()} == want["by_budget"]
            assert got["budget_writers"] == want["budget_writers"]
            latest[(day, writer)] = normalize_writer_entry(raw, where="t")
        row = conn.execute("select public.otel_budget_day_totals(%s::text[])", (days,)).fetchone()
        assert row is not None
        for day in days:
            want = summarize(day, [e for (d, _), e in latest.items() if d == day])
            assert float(row[0][day]["total_usd"]) == want["total_usd"]
            assert row[0][day]["writers"] == want["writers"]


def test_a_bad_argument_called_directly_is_ob001(pg_clean: str) -> None:
    with psycopg.connect(pg_clean, autocommit=True) as conn:
        for bad in ({"date": DAY}, entry("a", -1.0, 1), entry("a", 1.0, 1) | {"seq": 1.5},
                    entry("a", 1.0, 1) | {"by_budget": {"x": "1"}}):
            with pytest.raises(psycopg.Error) as caught:
                conn.execute("select public.otel_budget_merge_writer(%s::jsonb)",
                             (json.dumps(bad),))
            assert caught.value.sqlstate == "OB001"
        assert conn.execute("select count(*) from public.quilt_patches").fetchone() == (0,)


def test_the_days_writer_rows_are_found_through_the_index(pg_clean: str) -> None:
    with psycopg.connect(pg_clean, autocommit=True) as conn:
        conn.execute(
            "insert into public.quilt_patches (patch_type, name, content) "
            "select 'budget_writer', 'budget_' || d || '/w' || w, "
            "       jsonb_build_object('date', d, 'writer_id', 'w' || w, 'spend_usd', 1) "
            "from (select to_char(date '2026-01-01' + (i % 300), 'YYYY-MM-DD') as d, i as w "
            "      from generate_series(1, 30000) as i) as s")
        conn.execute("analyze public.quilt_patches")
        conn.execute(  # a third of them retired
            "update public.quilt_patches set content = content || '{\"retired\": true}' "
            "where patch_type = 'budget_writer' and id % 3 = 0")
        conn.execute("analyze public.quilt_patches")
        plans = {}
        for kind, predicate in (("live", "not (q.content ? 'retired')"),
                                ("retired", "(q.content ? 'retired')")):
            plans[kind] = str(conn.execute(
                "explain select q.name from public.quilt_patches as q "
                "where q.patch_type = 'budget_writer' and (q.content ->> 'date') = any (%s::text[]) "
                f"and {predicate}", (["2026-03-01", "2026-03-02"],)).fetchall())
    assert "quilt_patches_writer_live" in plans["live"], plans
    assert "quilt_patches_writer_retired" in plans["retired"], plans


def test_a_statement_timeout_is_a_store_error_and_changes_nothing(pg_clean: str) -> None:
    store = PostgresStore(pg_clean, statement_timeout_ms=200)
    try:
        store.merge_writer(entry("a", 1.0, 1))
        with psycopg.connect(pg_clean) as blocker:
            blocker.execute("select 1 from public.quilt_patches where name = %s for update",
                            (NAME,))
            with pytest.raises(StoreError, match="statement timeout"):
                store.merge_writer(entry("a", 2.0, 2))
            blocker.rollback()
        row = store.get(WRITER_TYPE, NAME)
        assert row is not None and row["spend_usd"] == 1.0
        # The timeout is per transaction (SET LOCAL): the next merge has its full time.
        assert store.merge_writer(entry("a", 2.0, 2))["applied"] is True
    finally:
        store.close()


def test_writers_never_wait_for_each_other(pg_clean: str) -> None:
    """The point of version 2: a transaction holding one writer's row does not
    block another writer's merge (version 1 serialised every replica on the day)."""
    store = PostgresStore(pg_clean)
    try:
        store.merge_writer(entry("a", 1.0, 1))
        with psycopg.connect(pg_clean) as holder:
            holder.execute("select public.otel_budget_merge_writer(%s::jsonb)",
                           (json.dumps(entry("h", 4.0, 1)),))
            done: list[Any] = []
            waiter = threading.Thread(target=lambda: done.append(
                store.merge_writer(entry("a", 2.0, 2))))
            waiter.start()
            waiter.join(timeout=5)
            assert done and done[0]["applied"] is True, "not blocked by another writer"
            assert done[0]["others"]["writers"] == 0, "an uncommitted row is not counted"
            holder.commit()
        assert store.day_totals([DAY])[DAY]["total_usd"] == 6.0
    finally:
        store.close()


def test_a_database_without_the_schema_says_how_to_fix_it(
    pg_fresh_database: Callable[..., str],
) -> None:
    store = PostgresStore(pg_fresh_database())
    try:
        with pytest.raises(StoreError, match="otel-budget migrate"):
            store.merge_writer(entry("a", 1.0, 1))
        with pytest.raises(StoreError, match="otel-budget migrate"):
            store.get(WRITER_TYPE, NAME)
        with pytest.raises(StoreError, match="otel-budget migrate"):
            store.insert_if_absent("sibling_nudge", "n", {})
        with pytest.raises(StoreError, match="otel-budget migrate"):
            store.day_totals([DAY])
        with pytest.raises(StoreError, match="otel-budget migrate"):
            store.writer_entries([DAY])
    finally:
        store.close()


def test_the_password_never_shows() -> None:
    secret = "pw-Zq81-never-shown"
    url = f"postgresql://postgres:{secret}@127.0.0.1:1/nowhere?connect_timeout=1"
    opened = open_store(url)
    assert secret not in repr(opened)
    opened.close()
    store = PostgresStore(url, pool_timeout_s=0.5)
    try:
        with pytest.raises(StoreError) as caught:
            store.get(WRITER_TYPE, NAME)
        assert secret not in str(caught.value) and "postgres:***@" in str(caught.value)
    finally:
        store.close()
    with pytest.raises(StoreError, match="closed"):
        store.get(WRITER_TYPE, NAME)


def test_open_store_gives_a_postgres_store(pg_clean: str) -> None:
    for url in (pg_clean, pg_clean.replace("postgresql://", "postgres://")):
        store = open_store(url)
        try:
            assert isinstance(store, PostgresStore)
            assert store.insert_if_absent("t", url, {"u": 1}) is True
        finally:
            store.close()


def test_the_benchmark_reports_throughput_and_latency(
    pg_fresh_database: Callable[..., str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pgbench, "TOTAL_MERGES", 48)
    monkeypatch.setattr(pgbench, "WARMUP_MERGES", 1)
    monkeypatch.setattr(pgbench, "WRITER_COUNTS", (1, 4))
    monkeypatch.setattr(pgbench, "FINISHED_WRITERS", 50)
    monkeypatch.setattr(pgbench, "NEVER_RETIRED", (30,))
    monkeypatch.setattr(pgbench, "RESTORE_REPEATS", 2)
    monkeypatch.setattr(pgbench, "HEADLINE_WRITERS", (4,))
    monkeypatch.setattr(pgbench, "ROUNDS", 2)
    url = pg_fresh_database()  # the bench applies the migration itself
    result = pgbench.run_postgres_bench(url)
    for key, writers in (("writers_1", 1), ("writers_4_with_50_finished", 4)):
        figures = result[key]
        assert figures["writers"] == writers and figures["merges"] == 48
        assert figures["merges_per_s"] > 0
        assert 0 < figures["median_ms"] <= figures["p99_ms"] <= figures["max_ms"]
    for key in ("writers_4", "writers_4_with_30_never_retired"):  # the rows run twice
        figures = result[key]
        assert figures["writers"] == 4 and figures["runs"] == 2
        for name in ("merges_per_s", "median_ms", "p99_ms", "max_ms"):
            assert 0 < figures[f"{name}_min"] <= figures[name] <= figures[f"{name}_max"]
        assert figures["median_ms"] <= figures["p99_ms"] <= figures["max_ms"]
    assert result["restore_50_writers"]["day_totals_median_ms"] > 0
    with psycopg.connect(url) as conn:  # it cleans up after itself
        assert conn.execute("select count(*) from public.quilt_patches").fetchone() == (0,)
        assert conn.execute(
            "select count(*) from public.otel_budget_day_shards").fetchone() == (0,)


def test_the_c_client_benchmark_sends_the_same_entry_and_every_merge_applies(
    pg_clean: str, pgbouncer_url: str
) -> None:
    day = "2999-02-03"
    sql = pg_c_client.merge_script(day).splitlines()[-1]
    for seq in (1, 7, 12345):  # pgbench's substitution: doubles with 15 digits
        spend, share = seq * 0.001234, seq * (0.001234 / pgbench.ATTRIBUTE_SETS)
        text = (sql.replace(":client_id", "3").replace(":seq", str(seq))
                .replace(":spend", f"{spend:.15g}").replace(":share", f"{share:.15g}"))
        sent = json.loads(text[text.index("'") + 1:text.rindex("'")])
        assert _same_entry(sent, pgbench._entry(day, "c-client-3", seq))
    bindir = find_bindir()
    assert bindir is not None  # the server fixture found it already
    result = pg_c_client.run_c_client_bench(
        pg_clean, bindir / "pgbench", poolers={DEFAULT_POOL_SIZE: pgbouncer_url},
        writer_counts=(1, 3), seconds=1, repeats=2)
    for key, writers in (("c_client_writers_1", 1), ("c_client_writers_3", 3),
                         (f"c_client_pgbouncer_pool_{DEFAULT_POOL_SIZE}_writers_3", 3)):
        figures = result[key]
        assert figures["writers"] == writers
        assert figures["merges_per_s"]["n"] == 2 and figures["merges_per_s"]["min"] > 0
        assert 0 < figures["median_ms"]["median"] <= figures["p99_ms"]["median"]
        assert figures["p99_ms"]["median"] <= figures["max_ms"]["median"]
    with psycopg.connect(pg_clean) as conn:  # it cleans up after itself
        assert conn.execute("select count(*) from public.quilt_patches").fetchone() == (0,)
    with pytest.raises(RuntimeError, match="hold seqs"):  # a merge that did not apply shows
        pg_c_client._check_every_merge_applied(pg_clean, day, {"c-client-0": 1001})


def _same_entry(sent: dict[str, Any], expected: dict[str, Any]) -> bool:
    """The entries alike, amounts within a rounding's width."""
    def flat(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: flat(v) for k, v in value.items()}
        if isinstance(value, list):
            return [flat(v) for v in value]
        return round(value, 9) if isinstance(value, float) else value
    return bool(flat(sent) == flat(expected))


def _use_after_fork(store: Any, writer: str) -> None:
    result = store.merge_writer(entry(writer, 1.0, 1))
    store.close()
    os._exit(0 if result["applied"] else 3)


@pytest.mark.parametrize("kind", ["postgresql", "supabase"])
def test_a_store_keeps_working_in_a_forked_child_and_its_parent(
    kind: str, request: pytest.FixtureRequest
) -> None:
    """Pre-forking servers create the store, then fork workers: a child gets its own
    connections, and neither its use nor its close() disturbs the parent's."""
    if kind == "postgresql":
        store: Any = request.getfixturevalue("postgres_store_factory")()
    else:
        store = request.getfixturevalue("supabase_store_factory")()
    store.merge_writer(entry("parent", 1.0, 1))
    children = [multiprocessing.get_context("fork").Process(
        target=_use_after_fork, args=(store, f"child-{i}")) for i in range(2)]
    for child in children:
        child.start()
    for child in children:
        child.join(timeout=30)
    assert [c.exitcode for c in children] == [0, 0]
    result = store.merge_writer(entry("parent", 2.0, 2))
    assert result["others"]["writers"] == 2 and result["others"]["total_usd"] == 2.0
    assert store.day_totals([DAY])[DAY]["total_usd"] == 4.0


# --- many processes, directly and through PgBouncer ------------------------------------------

ROUNDS = 25


def _merging_process(url: str, index: int) -> None:
    store = PostgresStore(url, min_size=1, max_size=1)
    try:
        for seq in range(1, ROUNDS + 1):
            spend = round(seq * 0.0137 + index * 1e-9, 9)
            store.merge_writer(entry(f"p{index}", spend, seq, budgets={"daily": spend}))
    finally:
        store.close()


def _run_processes(url: str, count: int) -> None:
    context = multiprocessing.get_context("spawn")
    procs = [context.Process(target=_merging_process, args=(url, i)) for i in range(count)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(180)
    assert [p.exitcode for p in procs] == [0] * count


def _check_day(url: str, count: int) -> None:
    with PostgresStore(url) as store:
        entries = store.writer_entries([DAY], breakdown=False)
        totals = store.day_totals([DAY])[DAY]
    assert {e["writer_id"]: e["seq"] for e in entries} == {f"p{i}": ROUNDS for i in range(count)}
    expected = summarize(DAY, [
        {"spend_usd": round(ROUNDS * 0.0137 + i * 1e-9, 9), "updated_at": "x",
         "by_budget": {"daily": round(ROUNDS * 0.0137 + i * 1e-9, 9)}} for i in range(count)])
    assert totals["writers"] == count
    assert abs(totals["total_usd"] - expected["total_usd"]) < 1e-9
    assert totals["total_usd"] == expected["total_usd"]
    assert totals["by_budget"] == expected["by_budget"]
    assert totals["budget_writers"] == {"daily": count}


def test_sixteen_processes_merging_into_one_day_lose_nothing(pg_clean: str) -> None:
    _run_processes(pg_clean, 16)
    _check_day(pg_clean, 16)


def test_eight_processes_through_pgbouncer_in_transaction_mode(
    pgbouncer: PgBouncer, pgbouncer_url: str, pg_server: PgServer
) -> None:
    with psycopg.connect(pgbouncer_url, prepare_threshold=None) as conn:
        row = conn.execute("select inet_server_port()").fetchone()
    assert row == (pg_server.port,) and pgbouncer.port != pg_server.port, "it is a proxy"
    _run_processes(pgbouncer_url, 8)
    _check_day(pgbouncer_url, 8)
    assert pgbouncer.process.poll() is None


def test_a_closed_days_budget_share_is_kept_and_reused_until_the_day_changes(
    pg_clean: str,
) -> None:
    from otel_budget.budgets import Budget
    from otel_budget.stores.shares import SHARE_TYPE, budget_key

    budget = Budget("opus", 10.0, period="month", match={"model": "opus*"})
    store = PostgresStore(pg_clean)
    try:
        for i, day in enumerate(("2026-11-24", "2026-11-25")):
            store.merge_writer(entry(f"w{i}", 2.0, 1, day=day) | {"by_attributes": [
                {"attributes": {"model": "opus-4"}, "spend_usd": 1.5},
                {"attributes": {"model": "gpt"}, "spend_usd": 0.5}]})
        first = store.budget_day_spend(["2026-11-24", "2026-11-25"], [budget],
                                       closed_before="2026-11-25")
        assert first == {"2026-11-24": {"opus": 1.5}, "2026-11-25": {"opus": 1.5}}
        kept = f"share_2026-11-24_{budget_key(budget)}"
        with psycopg.connect(pg_clean, autocommit=True) as conn:
            names = [r[0] for r in conn.execute(
                "select name from public.quilt_patches where patch_type = %s", (SHARE_TYPE,))]
            assert names == [kept], "closed days only"
            # Proof that the kept figure is what the next call reads: change it by hand.
            conn.execute("update public.quilt_patches set content = jsonb_set(content, "
                         "'{spend_usd}', '7') where name = %s", (kept,))
        assert store.budget_day_spend(["2026-11-24"], [budget], closed_before="2026-11-25") == {
            "2026-11-24": {"opus": 7.0}}
        # A late entry of the closed day changes its fingerprint: computed again.
        store.merge_writer(entry("late", 1.0, 1, day="2026-11-24") | {"by_attributes": [
            {"attributes": {"model": "opus-1"}, "spend_usd": 1.0}]})
        assert store.budget_day_spend(["2026-11-24"], [budget], closed_before="2026-11-25") == {
            "2026-11-24": {"opus": 2.5}}
        with pytest.raises(NotImplementedError):
            store.budget_day_spend(["2026-11-24"], [Budget("b", 1.0, match={"m": "[ab]*"})],
                                   closed_before="2026-11-25")
    finally:
        store.close()


def test_start_with_a_budget_added_mid_month_reads_the_kept_shares(
    pg_clean: str, clock: Any,
) -> None:
    """Writers of earlier days of the month never had `team`: start() gets its share of
    each closed day from the store (kept rows), and the window spend is exact."""
    from otel_budget import Budget, BudgetConfig, BudgetMeter
    from otel_budget.stores.shares import SHARE_TYPE

    seeder = PostgresStore(pg_clean)
    try:
        for day in range(1, 25):
            for writer in range(3):
                seeder.merge_writer(entry(f"w{writer}", 1.5, 1, day=f"2026-11-{day:02d}") | {
                    "by_budget": {"daily": 1.5}, "by_attributes": [
                        {"attributes": {"team": "a", "model": "m"}, "spend_usd": 1.0},
                        {"attributes": {"team": "b"}, "spend_usd": 0.5}]})
    finally:
        seeder.close()
    budgets = [Budget("daily", 100.0),
               Budget("team", 1000.0, period="month", match={"team": "a"})]
    spends = []
    for run in range(2):
        meter = BudgetMeter(BudgetConfig(budgets=budgets, collect_interval_s=3600,
                                         instance_id=f"run{run}"),
                            store=PostgresStore(pg_clean), clock=clock).start()
        try:
            spends.append(next(b["spend_usd"] for b in meter.budgets() if b["name"] == "team"))
        finally:
            meter.shutdown(timeout=5)
    assert spends == [72.0, 72.0], "24 closed days x 3 writers x $1"
    with psycopg.connect(pg_clean) as conn:
        kept = conn.execute("select count(*) from public.quilt_patches where patch_type = %s",
                            (SHARE_TYPE,)).fetchone()
    assert kept == (48,), "one kept share per closed day and budget"


def test_the_start_benchmark_reports_and_cleans_up(
    pg_fresh_database: Callable[..., str],
) -> None:
    url = pg_fresh_database()
    result = pgbench.run_start_bench(url, days=3, writers=2, sets=4, repeats=1)
    # 3 days x 2 writers x the items of team-3 (agents 3 of 4 sets: one item each).
    assert result["with_added_budget_window_spend_usd"] == pytest.approx(3 * 2 * 0.001)
    assert result["without_added_budget_window_spend_usd"] == pytest.approx(2 * 0.004)  # today
    assert result["with_added_budget_median_ms"] > 0 and result[
        "with_added_budget_first_start_ms"] > 0
    with psycopg.connect(url) as conn:
        assert conn.execute("select count(*) from public.quilt_patches").fetchone() == (0,)
        assert conn.execute(
            "select count(*) from public.otel_budget_day_shards").fetchone() == (0,)
