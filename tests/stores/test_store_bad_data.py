"""Bad data against the stores: malformed stored writer rows, seqs going backwards,
writer ids and names carrying quotes or SQL, huge attribute sets.

Each must end in a clear StoreError/CheckpointError or a correct result, never in
SQL injection or an overwritten row. The rows are planted and read back raw
(psycopg / sqlite3), not through the store under test.
"""

from __future__ import annotations

import json
import math
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

from otel_budget import CheckpointError, read_day
from otel_budget.stores.base import PatchStore
from otel_budget.stores.entries import (
    LEGACY_TYPE,
    SUMMARY_TYPE,
    WRITER_TYPE,
    summary_quarantine_name,
    summary_row_name,
    writer_row_name,
)
from otel_budget.stores.memory import MemoryStore
from otel_budget.stores.postgres import PostgresStore
from otel_budget.stores.sqlite import SQLiteStore

DAY = "2026-11-25"
NUDGE_TYPE = "sibling_nudge"
SENTINEL = ("sibling_nudge", "budget_alert_2026-11-24_80")
SENTINEL_CONTENT = {"to": "ag_lu", "kind": "budget_alert", "ratio": 0.8}


@dataclass
class Kind:
    name: str
    store: PatchStore
    put_raw: Callable[[str, str, str], None]
    raw: Callable[[str, str], tuple[Any, ...] | None]  # (content text, updated_at)
    table_count: Callable[[], int]
    delete_raw: Callable[[str, str], None]


def _pg_helpers(url: str) -> tuple[Callable[[str, str, str], None],
                                   Callable[[str, str], tuple[Any, ...] | None],
                                   Callable[[], int], Callable[[str, str], None]]:
    def put_raw(patch_type: str, name: str, content: str) -> None:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(
                "insert into public.quilt_patches (patch_type, name, content) "
                "values (%s, %s, %s::jsonb) on conflict (patch_type, name) "
                "do update set content = excluded.content", (patch_type, name, content))

    def delete_raw(patch_type: str, name: str) -> None:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("delete from public.quilt_patches where patch_type = %s and name = %s",
                         (patch_type, name))

    def raw(patch_type: str, name: str) -> tuple[Any, ...] | None:
        with psycopg.connect(url) as conn:
            return conn.execute(
                "select content::text, updated_at from public.quilt_patches "
                "where patch_type = %s and name = %s", (patch_type, name)).fetchone()

    def count() -> int:
        with psycopg.connect(url) as conn:
            row = conn.execute("select count(*) from public.quilt_patches").fetchone()
        return int(row[0]) if row else -1

    return put_raw, raw, count, delete_raw


@pytest.fixture(params=["memory", "postgresql", "supabase", "sqlite"])
def kind(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Kind]:
    if request.param == "memory":
        mem = MemoryStore()

        def mem_put(patch_type: str, name: str, content: str) -> None:
            mem.put_raw(patch_type, name, json.loads(content))

        def mem_raw(patch_type: str, name: str) -> tuple[Any, ...] | None:
            row = mem._rows.get((patch_type, name))
            return None if row is None else (json.dumps(row, sort_keys=True),)

        def mem_delete(patch_type: str, name: str) -> None:
            del mem._rows[(patch_type, name)]

        yield Kind("memory", mem, mem_put, mem_raw, lambda: len(mem._rows), mem_delete)
        return
    if request.param == "sqlite":
        path = tmp_path / "bad.db"
        store: PatchStore = SQLiteStore(path)

        def put_raw(patch_type: str, name: str, content: str) -> None:
            with sqlite3.connect(path) as conn:
                conn.execute("insert or replace into quilt_patches (patch_type, name, content) "
                             "values (?, ?, ?)", (patch_type, name, content))

        def delete_raw(patch_type: str, name: str) -> None:
            with sqlite3.connect(path) as conn:
                conn.execute("delete from quilt_patches where patch_type = ? and name = ?",
                             (patch_type, name))

        def raw(patch_type: str, name: str) -> tuple[Any, ...] | None:
            with sqlite3.connect(path) as conn:
                row: tuple[Any, ...] | None = conn.execute(
                    "select content, updated_at from quilt_patches "
                    "where patch_type = ? and name = ?", (patch_type, name)).fetchone()
            return row

        def count() -> int:
            with sqlite3.connect(path) as conn:
                return int(conn.execute("select count(*) from quilt_patches").fetchone()[0])

        yield Kind("sqlite", store, put_raw, raw, count, delete_raw)
        store.close()
        return
    url: str = request.getfixturevalue("pg_clean")
    if request.param == "postgresql":
        store = PostgresStore(url)
    else:
        store = request.getfixturevalue("supabase_store_factory")()
    yield Kind(request.param, store, *_pg_helpers(url))
    store.close()


def _entry(writer: str, spend: float, seq: int, **extra: Any) -> dict[str, Any]:
    return {"date": DAY, "writer_id": writer, "instance_id": "host-a", "spend_usd": spend,
            "seq": seq, "updated_at": "2026-11-25T10:00:00+00:00",
            "by_attributes": [{"attributes": {"agent": "cloud_lu"}, "spend_usd": spend}],
            **extra}


# --- malformed stored writer rows -------------------------------------------------------

MALFORMED = {
    "array": "[]",
    "string": '"a budget"',
    "number": "42",
    "json null": "null",
    "empty object": "{}",
    "spend is text": json.dumps(_entry("a", 1.0, 1) | {"spend_usd": "abc"}),
    "spend negative": json.dumps(_entry("a", 1.0, 1) | {"spend_usd": -3}),
    "seq fractional": json.dumps(_entry("a", 1.0, 1) | {"seq": 1.5}),
    "seq missing": json.dumps({k: v for k, v in _entry("a", 1.0, 1).items() if k != "seq"}),
    "by_attributes not a list": json.dumps(_entry("a", 1.0, 1) | {"by_attributes": {"a": 1}}),
    "by_budget negative": json.dumps(_entry("a", 1.0, 1) | {"by_budget": {"daily": -1}}),
}


@pytest.mark.parametrize("content", MALFORMED.values(), ids=list(MALFORMED))
def test_a_malformed_stored_row_is_reported_and_never_overwritten(
    kind: Kind, content: str
) -> None:
    name = writer_row_name(DAY, "a")
    kind.put_raw(WRITER_TYPE, name, content)
    kind.put_raw(*SENTINEL, json.dumps(SENTINEL_CONTENT))
    before = kind.raw(WRITER_TYPE, name)
    with pytest.raises(CheckpointError) as caught:
        kind.store.merge_writer(_entry("a", 1.0, 99))
    assert name in str(caught.value), "the message names the row"
    assert kind.raw(WRITER_TYPE, name) == before
    assert kind.store.get(*SENTINEL) == SENTINEL_CONTENT
    # Other days and writers are unaffected by a row they never read.
    other = kind.store.merge_writer(_entry("a", 1.0, 1) | {"date": "2026-11-26"})
    assert other["applied"] is True


QUARANTINED_AMOUNTS = {
    "spend_usd text": {"spend_usd": "abc"},
    "spend_usd negative": {"spend_usd": -5},
    "spend_usd absurd": {"spend_usd": 1e13},
    "by_budget text": {"by_budget": {"daily": "x"}},
    "by_budget negative": {"by_budget": {"daily": -1}},
    "by_budget a list": {"by_budget": [1]},
}


@pytest.mark.parametrize("bad", QUARANTINED_AMOUNTS.values(), ids=list(QUARANTINED_AMOUNTS))
def test_a_malformed_amount_in_another_writers_row_is_quarantined_not_counted_as_zero(
    kind: Kind, bad: dict[str, Any]
) -> None:
    """The row is left out and named; the rest of the day still counts, and a merge
    of another writer still lands (one bad row must not block the fleet)."""
    kind.store.merge_writer(_entry("c", 2.5, 1) | {"by_budget": {"daily": 2.5}})
    row = _entry("b", 1.0, 1) | bad
    kind.put_raw(WRITER_TYPE, writer_row_name(DAY, "b"), json.dumps(row))
    totals = kind.store.day_totals([DAY])[DAY]
    assert totals["quarantined"] == [writer_row_name(DAY, "b")]
    assert totals["total_usd"] == 2.5 and totals["writers"] == 1
    assert totals["by_budget"] == {"daily": 2.5}
    result = kind.store.merge_writer(_entry("a", 1.0, 1))
    assert result["applied"] is True
    assert result["others"]["quarantined"] == [writer_row_name(DAY, "b")]
    assert result["others"]["total_usd"] == 2.5
    assert kind.raw(WRITER_TYPE, writer_row_name(DAY, "b")) is not None, "left as it was"


# --- a malformed summary row (the day's retired writers) --------------------------------

_SUMMARY = {"date": DAY, "spend_nanos": 1_000_000_000, "writers": 1,
            "updated_at": "2026-11-25T10:00:00+00:00",
            "by_budget_nanos": {"daily": 1_000_000_000}, "budget_writers": {"daily": 1}}
MALFORMED_SUMMARIES = {
    "array": "[]",
    "json null": "null",
    "empty object": "{}",
    "another day": json.dumps(_SUMMARY | {"date": "2026-11-24"}),
    "spend is text": json.dumps(_SUMMARY | {"spend_nanos": "abc"}),
    "spend negative": json.dumps(_SUMMARY | {"spend_nanos": -5}),
    "writers fractional": json.dumps(_SUMMARY | {"writers": 1.5}),
    "writers missing": json.dumps({k: v for k, v in _SUMMARY.items() if k != "writers"}),
    "by_budget_nanos negative": json.dumps(_SUMMARY | {"by_budget_nanos": {"daily": -1}}),
    "budget_writers not an object": json.dumps(_SUMMARY | {"budget_writers": [1]}),
    "budgets do not match": json.dumps(_SUMMARY | {"budget_writers": {"team": 1}}),
    "updated_at a number": json.dumps(_SUMMARY | {"updated_at": 5}),
}


def _spend(kind: Kind, name: str) -> float:
    row = kind.raw(WRITER_TYPE, writer_row_name(DAY, name))
    assert row is not None
    return float(json.loads(row[0])["spend_usd"])


@pytest.mark.parametrize("content", MALFORMED_SUMMARIES.values(), ids=list(MALFORMED_SUMMARIES))
def test_a_malformed_summary_row_is_quarantined_named_and_left_untouched(
    kind: Kind, content: str
) -> None:
    """The day still counts every writer, retired ones included (their rows are kept,
    so the sums are rebuilt from them), merges and retirements still land, and the
    row is named, never overwritten, never a reason to fail."""
    daily = {"by_budget": {"daily": 4.0}}
    kind.store.retire_writer(_entry("old", 4.0, 1) | daily)
    kind.store.merge_writer(_entry("live", 1.0, 1))
    name = summary_row_name(DAY)
    kind.put_raw(SUMMARY_TYPE, name, content)
    summary_before = kind.raw(SUMMARY_TYPE, name)
    bad = [summary_quarantine_name(DAY)]
    totals = kind.store.day_totals([DAY])[DAY]
    assert (totals["total_usd"], totals["writers"], totals["quarantined"]) == (5.0, 2, bad)
    assert totals["by_budget"] == {"daily": 4.0}
    others = [
        kind.store.merge_writer(_entry("a", 1.0, 1))["others"],  # a new row
        kind.store.merge_writer(_entry("live", 2.0, 2))["others"],  # a live row
        kind.store.retire_writer(_entry("b", 1.0, 1))["others"],  # retiring a new row
        kind.store.retire_writer(_entry("live", 2.0, 2))["others"],  # retiring a live row
    ]
    assert [o["total_usd"] for o in others] == [5.0, 5.0, 7.0, 6.0]
    assert all(o["quarantined"] == bad for o in others)
    assert _spend(kind, "live") == 2.0 and _spend(kind, "b") == 1.0
    totals = kind.store.day_totals([DAY])[DAY]
    assert (totals["total_usd"], totals["writers"], totals["quarantined"]) == (8.0, 4, bad)
    assert kind.raw(SUMMARY_TYPE, name) == summary_before, "left as it was"
    report = read_day(kind.store, DAY)
    assert (report["total_usd"], report["quarantined"]) == (8.0, bad)
    # Another day never reads it.
    assert kind.store.retire_writer(_entry("a", 1.0, 1) | {"date": "2026-11-26"})["applied"]
    assert kind.store.day_totals(["2026-11-26"])["2026-11-26"]["quarantined"] == []


def test_deleting_a_malformed_summary_row_repairs_the_day(kind: Kind) -> None:
    kind.store.retire_writer(_entry("old", 4.0, 1))
    kind.store.merge_writer(_entry("live", 1.0, 1))
    kind.put_raw(SUMMARY_TYPE, summary_row_name(DAY), MALFORMED_SUMMARIES["spend is text"])
    kind.store.retire_writer(_entry("b", 2.0, 1))  # while it is quarantined
    kind.delete_raw(SUMMARY_TYPE, summary_row_name(DAY))
    totals = kind.store.day_totals([DAY])[DAY]
    assert (totals["total_usd"], totals["writers"], totals["quarantined"]) == (7.0, 3, [])
    # The next retirement writes the summary anew from every retired row.
    kind.store.retire_writer(_entry("live", 1.0, 1))
    stored = kind.raw(SUMMARY_TYPE, summary_row_name(DAY))
    assert stored is not None
    summary = json.loads(stored[0])
    assert (summary["spend_nanos"], summary["writers"]) == (7_000_000_000, 3)
    totals = kind.store.day_totals([DAY])[DAY]
    assert (totals["total_usd"], totals["writers"], totals["quarantined"]) == (7.0, 3, [])


def test_a_retired_row_whose_summary_is_gone_is_counted_once_from_its_row(
    kind: Kind
) -> None:
    kind.store.merge_writer(_entry("other", 1.0, 1))
    kind.put_raw(WRITER_TYPE, writer_row_name(DAY, "gone"),
                 json.dumps(_entry("gone", 2.0, 1) | {"retired": True}))
    totals = kind.store.day_totals([DAY])[DAY]
    assert (totals["total_usd"], totals["writers"], totals["quarantined"]) == (3.0, 2, [])
    result = kind.store.merge_writer(_entry("gone", 3.0, 2))
    assert result["applied"] is True and result["others"]["total_usd"] == 1.0
    gone = kind.raw(WRITER_TYPE, writer_row_name(DAY, "gone"))
    assert gone is not None and json.loads(gone[0])["spend_usd"] == 3.0
    assert json.loads(gone[0])["retired"] is True, "stays retired"
    stored = kind.raw(SUMMARY_TYPE, summary_row_name(DAY))
    assert stored is not None
    assert (json.loads(stored[0])["spend_nanos"], json.loads(stored[0])["writers"]) == (
        3_000_000_000, 1)
    totals = kind.store.day_totals([DAY])[DAY]
    assert (totals["total_usd"], totals["writers"]) == (4.0, 2)


@pytest.mark.parametrize("content", ["[]", '"a budget"', "42", "null"])
def test_reading_a_non_object_names_the_row(kind: Kind, content: str) -> None:
    name = f"budget_{DAY}"
    kind.put_raw(LEGACY_TYPE, name, content)
    with pytest.raises(CheckpointError, match=name):
        kind.store.get(LEGACY_TYPE, name)


def test_sqlite_invalid_json_text_is_reported_not_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "broken.db"
    store = SQLiteStore(path)
    name = f"budget_{DAY}"
    try:
        with sqlite3.connect(path) as conn:
            conn.execute("insert into quilt_patches (patch_type, name, content) "
                         "values ('budget', ?, '{\"instances\": {')", (name,))
        with pytest.raises(CheckpointError, match=name):
            store.get(LEGACY_TYPE, name)
        store.merge_writer(_entry("a", 1.0, 1))
        with sqlite3.connect(path) as conn:
            assert conn.execute(
                "select content from quilt_patches where patch_type = 'budget'"
            ).fetchone() == ('{"instances": {',)
            # The view skips what it cannot read rather than failing every reader.
            assert conn.execute("select * from otel_budget_days").fetchall() == [
                (DAY, 1.0, 1, "2026-11-25T10:00:00+00:00")]
    finally:
        store.close()


# --- seq going backwards -----------------------------------------------------------------

@pytest.mark.parametrize("stale_seq", [4, 5, 0])
def test_seq_going_backwards_leaves_the_row_as_it_was(kind: Kind, stale_seq: int) -> None:
    kind.store.merge_writer(_entry("b", 0.5, 1))
    kind.store.merge_writer(_entry("a", 5.0, 5))
    name = writer_row_name(DAY, "a")
    before = kind.raw(WRITER_TYPE, name)
    result = kind.store.merge_writer(_entry("a", 9.0, stale_seq))
    assert result["applied"] is False and result["stored_seq"] == 5
    assert result["others"]["total_usd"] == 0.5
    assert kind.raw(WRITER_TYPE, name) == before, "not even updated_at moves"


# --- quotes and SQL in ids and names -------------------------------------------------------

AWKWARD = [
    "x'); DROP TABLE quilt_patches; --",
    'Robert"); DELETE FROM quilt_patches; --',
    "a'b\"c`d",
    "{instances,a}",
    "$.instances[0].seq",
    "back\\slash",
    "tab\tnew\nline",
    "%s %(x)s {} $1",
    "eq.x,or(seq.gt.0)",
    "50%_",
    "🙂 ünïcødé",
    " ",
]


@pytest.mark.parametrize("writer", AWKWARD)
def test_awkward_writer_ids_are_data_not_sql(kind: Kind, writer: str) -> None:
    kind.put_raw(*SENTINEL, json.dumps(SENTINEL_CONTENT))
    kind.store.merge_writer(_entry("plain", 1.0, 1))
    result = kind.store.merge_writer(_entry(writer, 2.0, 3, instance_id=writer))
    assert result["applied"] is True and result["others"]["total_usd"] == 1.0
    again = kind.store.merge_writer(_entry(writer, 7.0, 2))
    assert again["applied"] is False and again["stored_seq"] == 3  # its own seq, compared
    assert kind.store.get(WRITER_TYPE, writer_row_name(DAY, writer)) == _entry(
        writer, 2.0, 3, instance_id=writer)
    assert kind.store.day_totals([DAY])[DAY]["total_usd"] == 3.0
    assert {e["writer_id"] for e in kind.store.writer_entries([DAY])} == {"plain", writer}
    assert kind.store.get(*SENTINEL) == SENTINEL_CONTENT
    assert kind.table_count() == 3


@pytest.mark.parametrize("name", AWKWARD)
def test_awkward_row_names_are_data_not_sql(kind: Kind, name: str) -> None:
    kind.put_raw(*SENTINEL, json.dumps(SENTINEL_CONTENT))
    assert kind.store.get(NUDGE_TYPE, name + "' OR '1'='1") is None
    assert kind.store.insert_if_absent(NUDGE_TYPE, name, {"n": name}) is True
    assert kind.store.insert_if_absent(NUDGE_TYPE, name, {"n": "again"}) is False
    assert kind.store.get(NUDGE_TYPE, name) == {"n": name}
    assert kind.store.get(*SENTINEL) == SENTINEL_CONTENT
    assert kind.table_count() == 2


def test_nul_characters_are_refused_before_any_io(kind: Kind) -> None:
    kind.store.merge_writer(_entry("a", 1.0, 1))
    before = kind.raw(WRITER_TYPE, writer_row_name(DAY, "a"))
    with pytest.raises(CheckpointError):
        kind.store.merge_writer(_entry("nul\x00id", 1.0, 1))
    with pytest.raises(CheckpointError):
        kind.store.merge_writer(_entry("a", 2.0, 2, note="nul\x00"))
    assert kind.raw(WRITER_TYPE, writer_row_name(DAY, "a")) == before
    assert kind.table_count() == 1


# --- huge attribute sets ------------------------------------------------------------------

def test_a_huge_attribute_set_round_trips(kind: Kind) -> None:
    items = [
        {"attributes": {"agent": f"agent-{i}", "gen_ai.request.model": "m" * 60,
                        f"custom.key.{i}": "v" * 100, "nested": [i, str(i)]},
         "spend_usd": 0.000123}
        for i in range(3000)
    ]
    entry = _entry("wide", 0.369, 1) | {"by_attributes": items}
    assert len(json.dumps(entry)) > 600_000
    assert kind.store.merge_writer(entry)["applied"] is True
    assert kind.store.get(WRITER_TYPE, writer_row_name(DAY, "wide")) == entry
    assert kind.store.writer_entries([DAY]) == [entry]
    assert kind.store.day_totals([DAY])[DAY]["total_usd"] == 0.369


def test_a_huge_attribute_set_with_one_bad_value_writes_nothing(kind: Kind) -> None:
    kind.store.merge_writer(_entry("wide", 0.1, 1))
    first = kind.store.get(WRITER_TYPE, writer_row_name(DAY, "wide"))
    items = [{"attributes": {"k": i}, "spend_usd": 0.001} for i in range(2000)]
    items[1234]["spend_usd"] = math.nan
    with pytest.raises(CheckpointError):
        kind.store.merge_writer(_entry("wide", 0.2, 2) | {"by_attributes": items})
    items[1234] = {"attributes": {"k": math.inf}, "spend_usd": 0.001}
    with pytest.raises(CheckpointError):
        kind.store.merge_writer(_entry("wide", 0.2, 2) | {"by_attributes": items})
    assert kind.store.get(WRITER_TYPE, writer_row_name(DAY, "wide")) == first
