"""PostgresStore beyond the shared contract: the SQL merge is ledger.merge_entry,
timeouts and a missing schema are clear StoreErrors, secrets stay out of messages,
and the benchmark runs."""

from __future__ import annotations

import copy
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
from otel_budget.ledger import BUDGET_TYPE, merge_entry
from otel_budget.stores import pgbench
from otel_budget.stores.base import open_store
from otel_budget.stores.postgres import PostgresStore

NAME = "budget_2026-11-25"


def _random_step(rng: random.Random, step: int) -> tuple[str, dict[str, Any], dict[str, Any]]:
    instance = rng.choice(["a", "b", "c", "it's", 'q"d'])
    spend = rng.choice([rng.uniform(0, 50), rng.random() / 1e6, round(rng.uniform(0, 9), 3),
                        float(rng.randint(0, 5)), rng.randint(0, 5)])
    entry: dict[str, Any] = {"spend_usd": spend, "seq": rng.randint(0, 12),
                             "updated_at": f"t{step}"}
    if rng.random() < 0.5:
        entry["by_attributes"] = [{"attributes": {"agent": rng.choice("xyz")}, "spend_usd": spend}]
    meta: dict[str, Any] = {"date": "2026-11-25", "updated_at": f"t{step}",
                            "daily_cap_usd": rng.choice([10.0, 50, 1e6])}
    if rng.random() < 0.1:  # day_meta can never replace the computed keys
        meta |= {"instances": "junk", "total_usd": -1}
    return instance, entry, meta


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_sql_merge_is_ledger_merge_entry(pg_clean: str, seed: int) -> None:
    rng = random.Random(seed)
    store = PostgresStore(pg_clean)
    expected: dict[str, Any] | None = None
    try:
        for step in range(150):
            instance, entry, meta = _random_step(rng, step)
            expected, applied = merge_entry(copy.deepcopy(expected), instance, entry,
                                            name=NAME, day_meta=meta)
            got = store.merge_budget(NAME, instance, entry, day_meta=meta)
            assert got == expected, (step, instance, entry, applied)
        assert store.get(BUDGET_TYPE, NAME) == expected
    finally:
        store.close()


def test_the_sql_function_rounds_like_python_when_called_directly(pg_clean: str) -> None:
    """Without the store's own rounding: other clients (psql, the Supabase SQL editor,
    another language) get the same document."""
    rng = random.Random(7)
    expected: dict[str, Any] | None = None
    with psycopg.connect(pg_clean, autocommit=True) as conn:
        for step in range(100):
            instance = rng.choice(["a", "b", "c"])
            entry = {"spend_usd": rng.uniform(0, 3) / rng.choice([1, 7, 1e3]), "seq": step}
            expected, _ = merge_entry(expected, instance, entry, name=NAME, day_meta={})
            row = conn.execute(
                "select public.otel_budget_merge(%s::text, %s::text, %s::jsonb, '{}'::jsonb)",
                (NAME, instance, json.dumps(entry))).fetchone()
            assert row is not None and row[0] == expected


def test_a_statement_timeout_is_a_store_error_and_changes_nothing(pg_clean: str) -> None:
    store = PostgresStore(pg_clean, statement_timeout_ms=200)
    try:
        store.merge_budget(NAME, "a", {"spend_usd": 1.0, "seq": 1}, day_meta={})
        with psycopg.connect(pg_clean) as blocker:
            blocker.execute("select 1 from public.quilt_patches where name = %s for update",
                            (NAME,))
            with pytest.raises(StoreError, match="statement timeout"):
                store.merge_budget(NAME, "a", {"spend_usd": 2.0, "seq": 2}, day_meta={})
            blocker.rollback()
        doc = store.get(BUDGET_TYPE, NAME)
        assert doc is not None and doc["total_usd"] == 1.0
        # The timeout is per transaction (SET LOCAL): the next merge has its full time.
        assert store.merge_budget(NAME, "a", {"spend_usd": 2.0, "seq": 2},
                                  day_meta={})["total_usd"] == 2.0
    finally:
        store.close()


def test_merges_wait_for_each_other_on_the_row(pg_clean: str) -> None:
    """A writer holding the row makes the next one wait, then both entries are there:
    the merge serialises on the row rather than failing or overwriting."""
    store = PostgresStore(pg_clean)
    store.merge_budget(NAME, "a", {"spend_usd": 1.0, "seq": 1}, day_meta={})
    done: list[dict[str, Any]] = []
    with psycopg.connect(pg_clean) as holder:
        holder.execute("select public.otel_budget_merge(%s::text, 'h', "
                       "'{\"spend_usd\": 4, \"seq\": 1}'::jsonb, '{}'::jsonb)", (NAME,))
        waiter = threading.Thread(target=lambda: done.append(
            store.merge_budget(NAME, "a", {"spend_usd": 2.0, "seq": 2}, day_meta={})))
        waiter.start()
        waiter.join(timeout=0.5)
        assert waiter.is_alive(), "the second merge waits for the row lock"
        holder.commit()
    waiter.join(timeout=10)
    store.close()
    assert done and done[0]["total_usd"] == 6.0 and set(done[0]["instances"]) == {"a", "h"}


def test_a_database_without_the_schema_says_how_to_fix_it(
    pg_fresh_database: Callable[..., str],
) -> None:
    store = PostgresStore(pg_fresh_database())
    try:
        with pytest.raises(StoreError, match="otel-budget migrate"):
            store.merge_budget(NAME, "a", {"spend_usd": 1.0, "seq": 1}, day_meta={})
        with pytest.raises(StoreError, match="otel-budget migrate"):
            store.get(BUDGET_TYPE, NAME)
        with pytest.raises(StoreError, match="otel-budget migrate"):
            store.insert_if_absent("sibling_nudge", "n", {})
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
            store.get(BUDGET_TYPE, NAME)
        assert secret not in str(caught.value) and "postgres:***@" in str(caught.value)
    finally:
        store.close()
    with pytest.raises(StoreError, match="closed"):
        store.get(BUDGET_TYPE, NAME)


def test_open_store_gives_a_postgres_store(pg_clean: str) -> None:
    for url in (pg_clean, pg_clean.replace("postgresql://", "postgres://")):
        store = open_store(url)
        try:
            assert isinstance(store, PostgresStore)
            assert store.insert_if_absent("t", url, {"u": 1}) is True
        finally:
            store.close()


def test_the_benchmark_reports_median_and_p99(
    pg_fresh_database: Callable[..., str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pgbench, "TOTAL_MERGES", 80)
    monkeypatch.setattr(pgbench, "WARMUP_MERGES", 2)
    url = pg_fresh_database()  # the bench applies the migration itself
    result = pgbench.run_postgres_bench(url)
    for writers in (1, 8):
        figures = result[f"writers_{writers}"]
        assert figures["writers"] == writers and figures["merges"] == 80
        assert 0 < figures["median_ms"] <= figures["p99_ms"] <= figures["max_ms"]
    with psycopg.connect(url) as conn:  # it cleans up after itself
        assert conn.execute("select count(*) from public.quilt_patches").fetchone() == (0,)


def _use_after_fork(store: Any, instance: str) -> None:
    doc = store.merge_budget(NAME, instance, {"spend_usd": 1.0, "seq": 1}, day_meta={})
    store.close()
    os._exit(0 if instance in doc["instances"] else 3)


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
    store.merge_budget(NAME, "parent", {"spend_usd": 1.0, "seq": 1}, day_meta={})
    children = [multiprocessing.get_context("fork").Process(
        target=_use_after_fork, args=(store, f"child-{i}")) for i in range(2)]
    for child in children:
        child.start()
    for child in children:
        child.join(timeout=30)
    assert [c.exitcode for c in children] == [0, 0]
    doc = store.merge_budget(NAME, "parent", {"spend_usd": 2.0, "seq": 2}, day_meta={})
    assert set(doc["instances"]) == {"parent", "child-0", "child-1"}
    assert doc["total_usd"] == 4.0
