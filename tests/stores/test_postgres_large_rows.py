"""Writer rows too big for their table row (a per-key budget's 10,000 keys: ~300 KB,
kept out of line by TOAST) on a real PostgreSQL: compressed with lz4 where the
server has it, and merged, retired, validated and summed exactly as small rows are
(the merge and the shards' trigger each read one detoasted copy of them)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from otel_budget import CheckpointError
from otel_budget.stores.entries import WRITER_TYPE, normalize_writer_entry, summarize, writer_row_name
from otel_budget.stores.migrate import apply_migration
from otel_budget.stores.postgres import PostgresStore

DAY = "2026-11-25"
KEYS = 10_000


def big_entry(writer: str, seq: int, cents: int, *, final: bool = False) -> dict[str, Any]:
    """A writer entry whose by_key holds KEYS keys (key k spent k * cents / 1e6 USD)."""
    by_key = {f'["c{k:05d}"]': k * cents / 1e6 for k in range(KEYS)}
    spend = round(sum(by_key.values()), 9)
    out: dict[str, Any] = {
        "date": DAY, "writer_id": writer, "instance_id": "host", "spend_usd": spend,
        "seq": seq, "updated_at": f"{DAY}T10:{seq:02d}:00+00:00",
        "by_budget": {"per-customer": spend}, "by_key": {"per-customer": by_key}}
    if final:
        out["final"] = True
    return out


def _stored(url: str, writer: str) -> tuple[str | None, int, int]:
    """The row's compression method, its stored size and its JSON text's size."""
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "select pg_column_compression(content), pg_column_size(content), "
            "octet_length(content::text) from public.quilt_patches "
            "where patch_type = %s and name = %s", (WRITER_TYPE, writer_row_name(DAY, writer)),
        ).fetchone()
    assert row is not None
    return row[0], row[1], row[2]


def _lz4_available(url: str) -> bool:
    with psycopg.connect(url) as conn:
        row = conn.execute("select 'lz4' = any (enumvals) from pg_settings "
                           "where name = 'default_toast_compression'").fetchone()
    return bool(row and row[0])


def test_writer_rows_are_stored_with_lz4_and_the_migration_stays_idempotent(
    pg_clean: str, postgres_store_factory: Callable[..., PostgresStore],
) -> None:
    store = postgres_store_factory()
    store.merge_writer(big_entry("a", 1, 3))
    method, size, text = _stored(pg_clean, "a")
    assert size < text / 2, "a 10,000-key row is stored compressed"
    if _lz4_available(pg_clean):  # Debian's and Supabase's builds have it
        assert method == "lz4"
    else:
        assert method == "pglz"
    apply_migration(pg_clean)  # a second run finds lz4 set and changes nothing
    store.merge_writer(big_entry("a", 2, 3))
    assert _stored(pg_clean, "a")[0] == method


def test_big_rows_merge_retire_and_sum_exactly(
    pg_clean: str, postgres_store_factory: Callable[..., PostgresStore],
) -> None:
    store = postgres_store_factory()
    latest: dict[str, dict[str, Any]] = {}
    for seq, cents in ((1, 1), (2, 7), (3, 11)):
        for writer in ("a", "b", "c"):
            entry = big_entry(writer, seq, cents + ord(writer))
            result = store.merge_writer(entry)
            assert result["applied"] and result["stored_seq"] == seq
            latest[writer] = normalize_writer_entry(entry, where="t")
            others = [e for w, e in latest.items() if w != writer]
            assert result["others"] == summarize(DAY, others)
    stale = store.merge_writer(big_entry("a", 2, 99))  # an older seq changes nothing
    assert not stale["applied"] and stale["stored_seq"] == 3
    assert store.get(WRITER_TYPE, writer_row_name(DAY, "a")) == latest["a"]
    final = big_entry("b", 4, 13, final=True)
    store.retire_writer(final)
    latest["b"] = normalize_writer_entry({k: v for k, v in final.items() if k != "final"},
                                         where="t")
    totals = store.day_totals([DAY])[DAY]
    assert (totals["total_usd"], totals["writers"], totals["by_budget"]) == (
        summarize(DAY, latest.values())["total_usd"], 3,
        summarize(DAY, latest.values())["by_budget"])
    # The shards' trigger on a big row changed by hand: deleted, or no object any more.
    with psycopg.connect(pg_clean) as conn:
        conn.execute("delete from public.quilt_patches where name = %s",
                     (writer_row_name(DAY, "c"),))
        conn.execute("update public.quilt_patches set content = "
                     "pg_catalog.jsonb_build_array(content) where name = %s",
                     (writer_row_name(DAY, "a"),))
    totals = store.day_totals([DAY])[DAY]
    assert (totals["total_usd"], totals["writers"]) == (latest["b"]["spend_usd"], 1)


def test_a_malformed_big_stored_row_is_named_and_left_as_it_is(
    pg_clean: str, postgres_store_factory: Callable[..., PostgresStore],
) -> None:
    store = postgres_store_factory()
    store.merge_writer(big_entry("a", 1, 5))
    name = writer_row_name(DAY, "a")
    with psycopg.connect(pg_clean) as conn:
        conn.execute("update public.quilt_patches set content = "
                     "pg_catalog.jsonb_set(content, '{seq}', '\"x\"') where name = %s", (name,))
    before = _stored(pg_clean, "a")
    with pytest.raises(CheckpointError, match=rf"row budget_writer/{name}: seq must be"):
        store.merge_writer(big_entry("a", 2, 5))
    assert _stored(pg_clean, "a") == before
