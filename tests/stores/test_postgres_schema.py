"""schema.sql on a real PostgreSQL: idempotent, service-role-only on Supabase-like
roles, applicable to plain PostgreSQL, able to adopt a pre-existing table; and
`otel-budget migrate`."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from psycopg import errors as pgerrors

from otel_budget import StoreError
from otel_budget.cli import main
from otel_budget.stores.migrate import apply_migration, schema_sql
from otel_budget.stores.postgres import PostgresStore
from tests.support.paths import SUPPORT
from tests.support.pg_server import PgServer, start_server

FUNCTIONS = ("otel_budget_merge", "otel_budget_claim", "otel_budget_merge_writer",
             "otel_budget_day_totals", "otel_budget_writer_entries", "otel_budget_retire_writer",
             "otel_budget_write_writer", "otel_budget_day_totals_minus",
             "otel_budget_summary_add", "otel_budget_summary_checked",
             "otel_budget_summary_problem", "otel_budget_nudges_on")
WRITER = {"date": "2026-11-25", "writer_id": "w", "instance_id": "i", "spend_usd": 1,
          "seq": 1, "updated_at": "2026-11-25T10:00:00+00:00"}
MERGE_CALL = f"select public.otel_budget_merge_writer('{json.dumps(WRITER)}'::jsonb)"
RETIRE_CALL = ("select public.otel_budget_retire_writer('"
               f"{json.dumps(WRITER | {'writer_id': 'r', 'final': True})}'::jsonb)")
TOTALS_CALL = "select public.otel_budget_day_totals(array['2026-11-25'])"
ENTRIES_CALL = "select public.otel_budget_writer_entries(array['2026-11-25'])"
VIEW_SELECT = "select * from public.otel_budget_days"
CLAIM_CALL = "select public.otel_budget_claim('sibling_nudge', 'n', '{}'::jsonb)"


def _catalog(url: str) -> dict[str, Any]:
    """Everything the migration defines, with oids: a re-created object would show."""
    queries = {
        "table": "select c.oid, c.relacl::text, c.relrowsecurity, c.relforcerowsecurity "
                 "from pg_class c where c.oid = 'public.quilt_patches'::regclass",
        "columns": "select column_name, data_type, is_nullable, column_default, is_identity, "
                   "identity_generation from information_schema.columns "
                   "where table_schema = 'public' and table_name = 'quilt_patches' "
                   "order by ordinal_position",
        "constraints": "select oid, conname, pg_get_constraintdef(oid) from pg_constraint "
                       "where conrelid = 'public.quilt_patches'::regclass order by conname",
        "indexes": "select indexdef from pg_indexes where tablename = 'quilt_patches' order by 1",
        "policies": "select policyname, roles::text, cmd, qual, with_check from pg_policies "
                    "where tablename = 'quilt_patches' order by 1",
        "functions": "select p.oid, p.oid::regprocedure::text, p.prosrc, p.proacl::text, "
                     "p.proconfig::text, p.prosecdef, p.provolatile from pg_proc p "
                     "where p.proname like 'otel_budget%' order by 2",
        "view": "select c.oid, c.relacl::text, pg_get_viewdef(c.oid), c.reloptions::text "
                "from pg_class c where c.oid = 'public.otel_budget_days'::regclass",
        "rows": "select id, patch_type, name, content::text, created_at, updated_at "
                "from public.quilt_patches order by id",
    }
    with psycopg.connect(url) as conn:
        return {key: conn.execute(q).fetchall() for key, q in queries.items()}


def test_running_the_migration_twice_changes_nothing(
    pg_fresh_database: Callable[..., str],
) -> None:
    url = pg_fresh_database(migrate=True)
    store = PostgresStore(url)
    try:
        store.merge_writer(WRITER | {"spend_usd": 1.25, "seq": 3})
        store.insert_if_absent("sibling_nudge", "budget_alert_2026-11-25_80", {"to": "ag_lu"})
    finally:
        store.close()
    before = _catalog(url)
    apply_migration(url)
    apply_migration(url)
    assert _catalog(url) == before
    assert len(before["rows"]) == 2
    assert {f[1].split("(")[0] for f in before["functions"]} >= set(FUNCTIONS)
    assert len(before["view"]) == 1
    assert any("quilt_patches_writer_live" in row[0] for row in before["indexes"])
    assert any("quilt_patches_writer_retired" in row[0] for row in before["indexes"])
    assert not any("quilt_patches_writer_day" in row[0] for row in before["indexes"])
    assert '"spend_usd": 1.25,' in before["rows"][0][3], "no trailing zeros from round()"


def test_functions_are_security_invoker_with_an_empty_search_path(pg_url: str) -> None:
    with psycopg.connect(pg_url) as conn:
        rows = conn.execute(
            "select proname, prosecdef, proconfig from pg_proc "
            "where proname like 'otel_budget%' order by 1").fetchall()
        rls = conn.execute("select relrowsecurity from pg_class "
                           "where oid = 'public.quilt_patches'::regclass").fetchone()
    assert rows and all(secdef is False for _, secdef, _ in rows)
    assert all(config == ['search_path=""'] for _, _, config in rows)
    assert {name for name, _, _ in rows} >= set(FUNCTIONS)
    assert rls == (True,)


@pytest.mark.parametrize("role", ["anon", "authenticated"])
@pytest.mark.parametrize("statement", [
    "select count(*) from public.quilt_patches",
    "insert into public.quilt_patches (patch_type, name) values ('x', 'y')",
    MERGE_CALL,
    RETIRE_CALL,
    CLAIM_CALL,
    TOTALS_CALL,
    ENTRIES_CALL,
    VIEW_SELECT,
    "select public.otel_budget_summary_add(null, '2026-11-25', null, null)",
    "select public.otel_budget_day_totals_minus(array['2026-11-25'], null, null)",
], ids=["select", "insert", "merge", "retire", "claim", "totals", "entries", "view",
        "summary_add", "totals_minus"])
def test_anon_and_authenticated_are_refused(pg_clean: str, role: str, statement: str) -> None:
    with psycopg.connect(pg_clean) as conn:
        conn.execute(f"set role {role}")
        with pytest.raises(pgerrors.InsufficientPrivilege):
            conn.execute(statement)


def test_service_role_can_do_everything_the_stores_do(pg_clean: str) -> None:
    with psycopg.connect(pg_clean) as conn:
        conn.execute("set role service_role")
        merged = conn.execute(MERGE_CALL).fetchone()
        retired = conn.execute(RETIRE_CALL).fetchone()
        claimed = conn.execute(CLAIM_CALL).fetchone()
        again = conn.execute(CLAIM_CALL).fetchone()
        count = conn.execute("select count(*) from public.quilt_patches").fetchone()
        totals = conn.execute(TOTALS_CALL).fetchone()
        entries = conn.execute(ENTRIES_CALL).fetchone()
        days = conn.execute(VIEW_SELECT).fetchall()
    assert merged is not None and merged[0]["applied"] is True
    assert retired is not None and retired[0]["applied"] is True
    assert retired[0]["others"]["total_usd"] == 1 and retired[0]["others"]["writers"] == 1
    assert claimed == (True,) and again == (False,) and count == (4,)  # + r, + summary
    assert totals is not None and totals[0]["2026-11-25"]["total_usd"] == 2
    assert totals[0]["2026-11-25"]["writers"] == 2
    assert entries is not None and entries[0] == [
        WRITER | {"writer_id": "r", "final": True, "retired": True}, WRITER]
    assert [(d, float(t), w) for d, t, w, _ in days] == [("2026-11-25", 2.0, 2)]


def test_row_level_security_hides_rows_even_if_anon_is_granted_the_table(
    pg_fresh_database: Callable[..., str],
) -> None:
    url = pg_fresh_database(migrate=True)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("insert into public.quilt_patches (patch_type, name) values ('budget', 'b')")
        conn.execute("grant select, update on public.quilt_patches to anon")  # a mistake
        conn.execute("set role anon")
        assert conn.execute("select count(*) from public.quilt_patches").fetchone() == (0,)
        cur = conn.execute("update public.quilt_patches set content = '{\"pwned\": 1}'")
        assert cur.rowcount == 0


def test_the_migration_applies_to_plain_postgresql_without_supabase_roles() -> None:
    server: PgServer = start_server(supabase_roles=False)
    try:
        url = server.url("postgres")
        apply_migration(url)
        apply_migration(url)
        store = PostgresStore(url)
        try:
            assert store.merge_writer(WRITER | {"spend_usd": 2.5})["applied"] is True
            assert store.day_totals(["2026-11-25"])["2026-11-25"]["total_usd"] == 2.5
            assert store.insert_if_absent("sibling_nudge", "n", {"a": 1}) is True
        finally:
            store.close()
        with psycopg.connect(url) as conn:
            roles = conn.execute("select count(*) from pg_roles where rolname in "
                                 "('anon', 'authenticated', 'service_role')").fetchone()
            policies = conn.execute("select count(*) from pg_policies").fetchone()
        assert roles == (0,) and policies == (0,)
    finally:
        server.destroy()


def test_the_migration_adopts_an_existing_quilt_patches_table(
    pg_fresh_database: Callable[..., str],
) -> None:
    url = pg_fresh_database()
    with psycopg.connect(url, autocommit=True) as conn:
        # The platform's original table: no unique constraint, no timestamps.
        conn.execute("create table public.quilt_patches (id bigserial primary key, "
                     "patch_type text not null, name text not null, content jsonb)")
        conn.execute("insert into public.quilt_patches (patch_type, name, content) values "
                     "('budget', 'budget_2026-11-24', '{\"total_usd\": 3}'), "
                     "('other', 'x', '{\"keep\": true}')")
    apply_migration(url)
    store = PostgresStore(url)
    try:
        assert store.merge_writer(WRITER)["applied"] is True
        assert store.get("other", "x") == {"keep": True}
        assert store.get("budget", "budget_2026-11-24") == {"total_usd": 3}
    finally:
        store.close()
    apply_migration(url)  # and idempotent from there on
    with psycopg.connect(url) as conn:  # the old day document shows in the view
        assert conn.execute("select \"date\", total_usd, writers from public.otel_budget_days "
                            "order by 1").fetchall() == [
            ("2026-11-24", 3, 0), ("2026-11-25", 1, 1)]


def test_the_day_view_sums_writer_rows_and_legacy_documents(pg_clean: str) -> None:
    store = PostgresStore(pg_clean)
    try:
        store.merge_writer(WRITER | {"writer_id": "a", "spend_usd": 1.25})
        store.merge_writer(WRITER | {"writer_id": "b", "spend_usd": 2.5,
                                     "updated_at": "2026-11-25T11:00:00+00:00"})
        store.merge_writer(WRITER | {"date": "2026-11-26", "spend_usd": 4.0,
                                     "updated_at": "2026-11-26T10:00:00+00:00"})
        store.insert_if_absent("budget", "budget_2026-11-24", {
            "date": "2026-11-24", "total_usd": 7.5, "updated_at": "2026-11-24T23:00:00+00:00",
            "instances": {"x": {"spend_usd": 5.0, "seq": 1}, "y": {"spend_usd": 2.5, "seq": 1}}})
        store.insert_if_absent("budget", "budget_2026-11-26", {
            "date": "2026-11-26", "total_usd": 1.0, "updated_at": "2026-11-26T01:00:00+00:00",
            "instances": {"old": {"spend_usd": 1.0, "seq": 4}}})
        store.insert_if_absent("budget", "budget_2026-11-23", {"instances": []})  # malformed
        # Retired writers count through the day's summary row, once.
        store.retire_writer(WRITER | {"writer_id": "c", "spend_usd": 0.5, "seq": 2,
                                      "updated_at": "2026-11-25T12:00:00+00:00"})
        store.retire_writer(WRITER | {"writer_id": "a", "spend_usd": 1.25, "seq": 2})
        store.retire_writer(WRITER | {"writer_id": "a", "spend_usd": 1.25, "seq": 2})
    finally:
        store.close()
    with psycopg.connect(pg_clean) as conn:
        rows = conn.execute("select \"date\", total_usd, writers, updated_at "
                            "from public.otel_budget_days order by 1").fetchall()
        one = conn.execute("select total_usd from public.otel_budget_days "
                           "where \"date\" = '2026-11-25'").fetchone()
    assert [(d, float(t) if t is not None else None, w, u) for d, t, w, u in rows] == [
        ("2026-11-23", None, 0, None),
        ("2026-11-24", 7.5, 2, "2026-11-24T23:00:00+00:00"),
        ("2026-11-25", 4.25, 3, "2026-11-25T12:00:00+00:00"),
        ("2026-11-26", 5.0, 2, "2026-11-26T10:00:00+00:00"),
    ]
    assert one is not None and float(one[0]) == 4.25


def test_the_live_rows_of_a_day_are_found_through_the_partial_index(pg_clean: str) -> None:
    """What a merge sums (the day's rows not retired) is an index range, not the day."""
    with psycopg.connect(pg_clean) as conn:
        conn.execute("set local enable_seqscan = off")
        conn.execute("set local enable_bitmapscan = off")
        plan = "\n".join(row[0] for row in conn.execute(
            "explain select q.name from public.quilt_patches as q "
            "where q.patch_type = 'budget_writer' and (q.content ->> 'date') = any (%s) "
            "and not (q.content ? 'retired')", (["2026-11-25"],)).fetchall())
        indexdef = conn.execute(
            "select indexdef from pg_indexes where indexname = 'quilt_patches_writer_live'"
        ).fetchone()
    assert "quilt_patches_writer_live" in plan, plan
    assert indexdef is not None and "retired" in indexdef[0]


def test_an_existing_table_that_cannot_be_adopted_is_a_clear_error(
    pg_fresh_database: Callable[..., str],
) -> None:
    url = pg_fresh_database()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("create table public.quilt_patches (id bigserial primary key, "
                     "patch_type text not null, name text not null, content json)")
    with pytest.raises(StoreError, match="needs jsonb"):
        apply_migration(url)

    duplicated = pg_fresh_database()
    with psycopg.connect(duplicated, autocommit=True) as conn:
        conn.execute("create table public.quilt_patches (id bigserial primary key, "
                     "patch_type text not null, name text not null, content jsonb)")
        conn.execute("insert into public.quilt_patches (patch_type, name, content) values "
                     "('budget', 'b', '{}'), ('budget', 'b', '{}')")
    with pytest.raises(StoreError, match="quilt_patches_type_name_key"):
        apply_migration(duplicated)
    with psycopg.connect(duplicated) as conn:  # the failed migration left nothing behind
        assert conn.execute("select count(*) from pg_proc "
                            "where proname like 'otel_budget%'").fetchone() == (0,)


def test_cli_migrate_prints_and_applies(
    pg_fresh_database: Callable[..., str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["migrate", "--print"]) == 0
    assert capsys.readouterr().out == schema_sql()

    url = pg_fresh_database()
    assert main(["migrate", "--store", url]) == 0
    assert "schema applied" in capsys.readouterr().out
    with psycopg.connect(url) as conn:
        assert conn.execute("select to_regclass('public.quilt_patches') is not null"
                            ).fetchone() == (True,)

    assert main(["migrate", "--store", "https://project.supabase.co"]) == 2
    assert "postgresql://" in capsys.readouterr().err
    assert main(["migrate", "--store", "postgresql://u:hunter2-pw@127.0.0.1:1/db"]) == 2
    err = capsys.readouterr().err
    assert "hunter2-pw" not in err and "u:***@" in err


@pytest.mark.parametrize("role", ["anon", "authenticated", "public"])
def test_no_privilege_on_anything_the_migration_creates(
    pg_fresh_database: Callable[..., str], role: str,
) -> None:
    # The fixture reproduces Supabase's default privileges (everything in `public`,
    # sequences included, to anon and authenticated) before migrating.
    url = pg_fresh_database(migrate=True)
    who = "public" if role == "public" else role
    checks = {
        "sequence": "select s.oid::regclass::text, p.priv from pg_class s, "
                    "unnest(array['USAGE', 'SELECT', 'UPDATE']) as p(priv) "
                    "where s.relkind = 'S' and s.relnamespace = 'public'::regnamespace "
                    "and has_sequence_privilege(%(who)s, s.oid, p.priv)",
        "table": "select c.oid::regclass::text, p.priv from pg_class c, "
                 "unnest(array['SELECT', 'INSERT', 'UPDATE', 'DELETE', 'TRUNCATE', "
                 "'REFERENCES', 'TRIGGER']) as p(priv) "
                 "where c.relkind in ('r', 'v') and c.relnamespace = 'public'::regnamespace "
                 "and has_table_privilege(%(who)s, c.oid, p.priv)",
        "function": "select p.oid::regprocedure::text, 'EXECUTE' from pg_proc p "
                    "where p.pronamespace = 'public'::regnamespace "
                    "and p.proname like 'otel_budget%%' "
                    "and has_function_privilege(%(who)s, p.oid, 'EXECUTE')",
    }
    with psycopg.connect(url) as conn:
        open_to_role = {kind: conn.execute(q, {"who": who}).fetchall()
                        for kind, q in checks.items()}
        sequences = conn.execute("select count(*) from pg_class where relkind = 'S' "
                                 "and relnamespace = 'public'::regnamespace").fetchone()
    assert sequences == (1,)  # the identity column's: the check above saw it
    assert open_to_role == {"sequence": [], "table": [], "function": []}


def test_anon_cannot_setval_the_identity_sequence(pg_clean: str) -> None:
    with psycopg.connect(pg_clean) as conn:
        conn.execute("set role anon")
        with pytest.raises(pgerrors.InsufficientPrivilege):
            conn.execute("select setval('public.quilt_patches_id_seq', 9223372036854775807)")


# --- version 3: the day shards ----------------------------------------------------------

def _day_entry(writer: str, spend: float, seq: int, **budgets: float) -> dict[str, Any]:
    return {"date": "2026-11-25", "writer_id": writer, "instance_id": "i", "spend_usd": spend,
            "seq": seq, "updated_at": f"2026-11-25T10:00:{seq:02d}+00:00",
            "by_budget": budgets,
            "by_attributes": [{"attributes": {"agent": "a"}, "spend_usd": spend}]}


def test_migrate_upgrades_a_version_2_database_in_place(
    pg_fresh_database: Callable[..., str],
) -> None:
    """Rows a version 2 database holds (live, retired into the summary row, and a
    quarantined one) keep counting after the migration: the shards are backfilled."""

    url = pg_fresh_database()
    v2 = (SUPPORT / "schema_v2.sql").read_text("utf-8")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(v2.encode())
        assert conn.execute("select to_regclass('public.otel_budget_day_shards')").fetchone() == (
            None,), "the fixture is version 2"
    store = PostgresStore(url)
    try:
        store.merge_writer(_day_entry("live", 1.25, 2, daily=1.25))
        store.merge_writer(_day_entry("done", 2.5, 1, daily=2.5, team=1.0))
        store.retire_writer(_day_entry("done", 3.0, 3, daily=3.0, team=1.5))
        store.merge_writer(_day_entry("other-day", 9.0, 1) | {"date": "2026-11-24"})
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(
                "insert into public.quilt_patches (patch_type, name, content) values "
                "('budget_writer', 'budget_2026-11-25/bad', %s::jsonb)",
                (json.dumps(_day_entry("bad", 1.0, 1) | {"spend_usd": "abc"}),))
        before = store.day_totals(["2026-11-25", "2026-11-24"])
        assert before["2026-11-25"]["total_usd"] == 4.25
        assert before["2026-11-25"]["quarantined"] == ["budget_2026-11-25/bad"]
    finally:
        store.close()

    assert main(["migrate", "--url", url]) == 0
    store = PostgresStore(url)
    try:
        assert store.day_totals(["2026-11-25", "2026-11-24"]) == before
        with psycopg.connect(url) as conn:
            shards = conn.execute(
                "select day, sum(live_writers), sum(retired_writers), sum(live_usd + retired_usd) "
                "from public.otel_budget_day_shards group by day order by day").fetchall()
        assert [(d, int(lw), int(rw), float(t)) for d, lw, rw, t in shards] == [
            ("2026-11-24", 1, 0, 9.0), ("2026-11-25", 1, 1, 4.25)]
        # Merges after the upgrade: the others are the backfilled rows minus their own.
        result = store.merge_writer(_day_entry("live", 2.0, 3, daily=2.0))
        assert result["applied"] is True
        assert result["others"]["total_usd"] == 3.0 and result["others"]["writers"] == 1
        assert result["others"]["by_budget"] == {"daily": 3.0, "team": 1.5}
        assert result["others"]["quarantined"] == ["budget_2026-11-25/bad"]
        late = store.merge_writer(_day_entry("done", 3.5, 4, daily=3.5, team=1.5))
        assert late["others"]["total_usd"] == 2.0
        totals = store.day_totals(["2026-11-25"])["2026-11-25"]
        assert totals["total_usd"] == 5.5 and totals["writers"] == 2
    finally:
        store.close()
    before_catalog = _catalog(url)
    apply_migration(url)
    assert _catalog(url) == before_catalog, "a second run backfills nothing twice"
    with psycopg.connect(url) as conn:
        assert conn.execute("select sum(live_usd + retired_usd) from public.otel_budget_day_shards "
                            "where day = '2026-11-25'").fetchone() == (5.5,)


def _rows_read_by_one_merge(url: str, writer: str) -> int:
    """quilt_patches tuples one merge reads (sequential and index fetches), from
    PostgreSQL's own counters of the merge's transaction."""
    with psycopg.connect(url) as conn, conn.transaction():
        conn.execute("select public.otel_budget_merge_writer(%s::jsonb)",
                     (json.dumps(_day_entry(writer, 1.0, 1, daily=1.0)),))
        row = conn.execute(
            "select coalesce(seq_tup_read, 0) + coalesce(idx_tup_fetch, 0) "
            "from pg_catalog.pg_stat_xact_user_tables where relid = 'public.quilt_patches'::regclass"
        ).fetchone()
    assert row is not None
    return int(row[0])


def test_a_merge_reads_the_same_rows_whatever_the_days_live_writers(pg_clean: str) -> None:
    """Version 2 summed every live row of the day; the shards make a merge's reads
    independent of them (killed writers that never retire included)."""
    few = _rows_read_by_one_merge(pg_clean, "w-0")
    with psycopg.connect(pg_clean, autocommit=True) as conn:
        with conn.cursor() as cur:
            cur.executemany("select public.otel_budget_merge_writer(%s::jsonb)",
                            [(json.dumps(_day_entry(f"killed-{i}", 0.5, 1, daily=0.5)),)
                             for i in range(400)])
        conn.execute("analyze public.quilt_patches")
    many = _rows_read_by_one_merge(pg_clean, "w-1")
    assert many == few <= 2, (few, many)  # version 2: 401
    with psycopg.connect(pg_clean) as conn:
        totals = conn.execute("select public.otel_budget_day_totals(array['2026-11-25'])"
                              ).fetchone()
    assert totals is not None
    assert totals[0]["2026-11-25"]["total_usd"] == 202 and totals[0]["2026-11-25"]["writers"] == 402
