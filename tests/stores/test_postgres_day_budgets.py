"""The shards' sums per budget (public.otel_budget_day_budgets) on a real PostgreSQL:
exact against the writer rows whatever writes them, moved over from the shards'
older jsonb `budgets` by the migration, and `day_totals` over a month in one query
that equals the days asked one by one."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import psycopg

from otel_budget.stores.migrate import apply_migration
from otel_budget.stores.postgres import PostgresStore

DAYS = [f"2026-10-{d:02d}" for d in range(1, 32)]


def _entry(day: str, writer: str, seq: int, spend: float, **budgets: float) -> dict[str, Any]:
    return {"date": day, "writer_id": writer, "instance_id": "i", "spend_usd": spend,
            "seq": seq, "updated_at": f"{day}T10:{seq % 60:02d}:00+00:00",
            "by_budget": budgets, "by_attributes": []}


def _budget_rows(conn: psycopg.Connection[Any]) -> dict[tuple[str, str], tuple[Decimal, int]]:
    """{(day, budget): (usd, writers)} summed over the shards' budget rows."""
    rows = conn.execute(
        "select day, budget, sum(usd), sum(writers) from public.otel_budget_day_budgets "
        "group by day, budget").fetchall()
    return {(d, b): (Decimal(u), int(n)) for d, b, u, n in rows}


def _from_writer_rows(conn: psycopg.Connection[Any]) -> dict[tuple[str, str], tuple[Decimal, int]]:
    """The same sums recomputed from the counted writer rows themselves."""
    rows = conn.execute(
        "select q.content ->> 'date', e.key, sum((e.value #>> '{}')::numeric), count(*) "
        "from public.quilt_patches as q "
        "cross join lateral jsonb_each(case when jsonb_typeof(q.content -> 'by_budget') = 'object' "
        "  then q.content -> 'by_budget' else '{}'::jsonb end) as e "
        "where q.patch_type = 'budget_writer' and public.otel_budget_amounts_ok(q.content) "
        "group by 1, 2").fetchall()
    return {(d, b): (Decimal(u), int(n)) for d, b, u, n in rows}


def _totals(url: str, days: list[str], writer: str | None = None) -> dict[str, Any]:
    """otel_budget_day_totals as the stores call it, the writer left out if given."""
    with psycopg.connect(url) as conn:
        row = conn.execute("select public.otel_budget_day_totals(%s, %s)", (days, writer)).fetchone()
    assert row is not None
    result: dict[str, Any] = row[0]
    return result


def _write_a_month(store: PostgresStore, url: str) -> None:
    """Writers that merge, change budgets, retire, come back late, are edited by
    hand into quarantine and deleted, over the month's days."""
    for i, day in enumerate(DAYS):
        store.merge_writer(_entry(day, "a", 1, 1.5, daily=1.5, team=0.25))
        store.merge_writer(_entry(day, "a", 2, 2.0, daily=2.0, team=0.5))
        store.merge_writer(_entry(day, "b", 1, 0.125, daily=0.125, **{"k:1": 0.125}))
        if i % 3 == 0:
            # A budget leaves b's row: its shard's row for it must go when empty.
            store.merge_writer(_entry(day, "b", 2, 0.5, daily=0.5))
        if i % 4 == 0:
            store.retire_writer(_entry(day, "c", 1, 3.0, daily=3.0, team=1.0))
            store.merge_writer(_entry(day, "c", 2, 3.25, daily=3.25, team=1.0))
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("update public.quilt_patches set content = content || '{\"spend_usd\": 1e13}' "
                     "where name = 'budget_2026-10-02/b'")
        conn.execute("delete from public.quilt_patches where name = 'budget_2026-10-03/a'")
        conn.execute("update public.quilt_patches set content = content - 'by_budget' "
                     "where name = 'budget_2026-10-04/a'")
        conn.execute("insert into public.quilt_patches (patch_type, name, content) "
                     "values ('budget_summary', 'budget_2026-10-05', '{\"date\": 5}') "
                     "on conflict (patch_type, name) do update set content = excluded.content")


def test_budget_rows_stay_exact_and_a_month_equals_its_days_one_by_one(pg_clean: str) -> None:
    store = PostgresStore(pg_clean)
    try:
        _write_a_month(store, pg_clean)
        with psycopg.connect(pg_clean) as conn:
            assert _budget_rows(conn) == _from_writer_rows(conn)
            assert conn.execute("select count(*) from public.otel_budget_day_budgets "
                                "where writers = 0").fetchone() == (0,), "an empty budget row stays"
        for writer in (None, "a", "b", "c", "nobody"):
            month = _totals(pg_clean, DAYS, writer)
            assert set(month) == set(DAYS)
            for day in DAYS:
                assert month[day] == _totals(pg_clean, [day], writer)[day], (writer, day)
        month = _totals(pg_clean, DAYS)
        # a: 2.0 / 0.5; b without k:1 since its second merge: 0.5; c retired, then
        # its late merge replaced the retired row: 3.25 / 1.0.
        assert month["2026-10-01"]["by_budget"] == {"daily": 5.75, "team": 1.5}
        assert month["2026-10-01"]["budget_writers"] == {"daily": 3, "team": 2}
        assert month["2026-10-01"]["total_usd"] == 5.75 and month["2026-10-01"]["writers"] == 3
        assert month["2026-10-02"]["quarantined"] == ["budget_2026-10-02/b"]
        assert month["2026-10-05"]["quarantined"] == ["budget_summary/budget_2026-10-05"]
        # a's by_budget removed by hand: a still counts, for no budget.
        assert month["2026-10-04"]["budget_writers"] == {"daily": 1}
        assert month["2026-10-04"]["writers"] == 2
    finally:
        store.close()


def test_the_migration_moves_budgets_kept_as_jsonb_into_budget_rows(pg_clean: str) -> None:
    """A database written by the version that kept each shard's budgets as one
    jsonb ({budget: [amount, writers]}): the migration moves them, once."""
    store = PostgresStore(pg_clean)
    try:
        _write_a_month(store, pg_clean)
        before = _totals(pg_clean, DAYS, "a")
    finally:
        store.close()
    with psycopg.connect(pg_clean, autocommit=True) as conn:
        want = _budget_rows(conn)
        # Back to the older layout, as that version left it.
        conn.execute(
            "update public.otel_budget_day_shards as s set budgets = b.budgets "
            "from (select day, shard, jsonb_object_agg(budget, jsonb_build_array(usd, writers)) "
            "        as budgets from public.otel_budget_day_budgets group by day, shard) as b "
            "where b.day = s.day and b.shard = s.shard")
        conn.execute("delete from public.otel_budget_day_budgets")
    apply_migration(pg_clean)
    apply_migration(pg_clean)
    with psycopg.connect(pg_clean) as conn:
        assert _budget_rows(conn) == want == _from_writer_rows(conn)
        assert conn.execute("select count(*) from public.otel_budget_day_shards "
                            "where budgets <> '{}'::jsonb").fetchone() == (0,)
    store = PostgresStore(pg_clean)
    try:
        assert _totals(pg_clean, DAYS, "a") == before
        # Merges after the move apply to the budget rows.
        result = store.merge_writer(_entry("2026-10-01", "a", 9, 2.5, daily=2.5, team=0.5))
        assert result["others"]["by_budget"] == _totals(
            pg_clean, ["2026-10-01"], "a")["2026-10-01"]["by_budget"]
        with psycopg.connect(pg_clean) as conn:
            assert _budget_rows(conn) == _from_writer_rows(conn)
    finally:
        store.close()


def _rows_read_by_a_month(url: str) -> int:
    """quilt_patches tuples one month's day_totals reads (sequential and index
    fetches), from PostgreSQL's own counters of its transaction. The table analyzed
    first, as autovacuum keeps a real one: the suite's shared database carries other
    tests' statistics, and with those the planner once chose scans of a table it
    took for tiny (as it rightly does for a table of a few dozen rows)."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("analyze public.quilt_patches")
    with psycopg.connect(url) as conn, conn.transaction():
        conn.execute("select public.otel_budget_day_totals(%s, 'a')", (DAYS,))
        row = conn.execute(
            "select coalesce(seq_tup_read, 0) + coalesce(idx_tup_fetch, 0) "
            "from pg_catalog.pg_stat_xact_user_tables "
            "where relid = 'public.quilt_patches'::regclass").fetchone()
    assert row is not None
    return int(row[0])


def test_a_month_of_totals_reads_the_same_rows_whatever_the_days_writers(pg_clean: str) -> None:
    store = PostgresStore(pg_clean)
    try:
        for day in DAYS:
            store.merge_writer(_entry(day, "a", 1, 1.0, daily=1.0))
            store.retire_writer(_entry(day, "r", 1, 1.0, daily=1.0))  # the day's summary row

        def add_writers(first: int) -> None:
            with psycopg.connect(pg_clean, autocommit=True) as conn:
                for day in DAYS + [f"2026-09-{d:02d}" for d in range(1, 21)]:
                    conn.execute("select public.otel_budget_retire_writer(%s::jsonb)",
                                 (json.dumps(_entry(day, f"r{first}", 1, 0.5, daily=0.5)),))
                    for w in range(first, first + 10):
                        conn.execute("select public.otel_budget_merge_writer(%s::jsonb)",
                                     (json.dumps(_entry(day, f"w{w}", 1, 0.5, daily=0.5)),))

        add_writers(0)
        few = _rows_read_by_a_month(pg_clean)
        add_writers(10)
        many = _rows_read_by_a_month(pg_clean)
        assert few == many, "day_totals read the days' writer rows, or other days' summary rows"
        assert few == 2 * len(DAYS), "each day's left-out writer row and summary row, nothing else"
    finally:
        store.close()
