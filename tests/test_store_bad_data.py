"""Bad data against the durable stores: malformed stored documents, seqs going
backwards, instance ids and names carrying quotes or SQL, huge attribute sets.

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

from otel_budget import CheckpointError, StoreError
from otel_budget.ledger import BUDGET_TYPE, NUDGE_TYPE
from otel_budget.stores.base import PatchStore
from otel_budget.stores.postgres import PostgresStore
from otel_budget.stores.sqlite import SQLiteStore

NAME = "budget_2026-11-25"
META = {"date": "2026-11-25", "timezone": "UTC", "daily_cap_usd": 50.0}
SENTINEL = ("sibling_nudge", "budget_alert_2026-11-24_80")
SENTINEL_CONTENT = {"to": "ag_lu", "kind": "budget_alert", "ratio": 0.8}


@dataclass
class Kind:
    name: str
    store: PatchStore
    put_raw: Callable[[str, str, str], None]
    raw: Callable[[str, str], tuple[Any, ...] | None]  # (content text, updated_at)
    table_count: Callable[[], int]


def _pg_helpers(url: str) -> tuple[Callable[[str, str, str], None],
                                   Callable[[str, str], tuple[Any, ...] | None],
                                   Callable[[], int]]:
    def put_raw(patch_type: str, name: str, content: str) -> None:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(
                "insert into public.quilt_patches (patch_type, name, content) "
                "values (%s, %s, %s::jsonb)", (patch_type, name, content))

    def raw(patch_type: str, name: str) -> tuple[Any, ...] | None:
        with psycopg.connect(url) as conn:
            return conn.execute(
                "select content::text, updated_at from public.quilt_patches "
                "where patch_type = %s and name = %s", (patch_type, name)).fetchone()

    def count() -> int:
        with psycopg.connect(url) as conn:
            row = conn.execute("select count(*) from public.quilt_patches").fetchone()
        return int(row[0]) if row else -1

    return put_raw, raw, count


@pytest.fixture(params=["postgresql", "supabase", "sqlite"])
def kind(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Kind]:
    if request.param == "sqlite":
        path = tmp_path / "bad.db"
        store: PatchStore = SQLiteStore(path)

        def put_raw(patch_type: str, name: str, content: str) -> None:
            with sqlite3.connect(path) as conn:
                conn.execute("insert into quilt_patches (patch_type, name, content) "
                             "values (?, ?, ?)", (patch_type, name, content))

        def raw(patch_type: str, name: str) -> tuple[Any, ...] | None:
            with sqlite3.connect(path) as conn:
                row: tuple[Any, ...] | None = conn.execute(
                    "select content, updated_at from quilt_patches "
                    "where patch_type = ? and name = ?", (patch_type, name)).fetchone()
            return row

        def count() -> int:
            with sqlite3.connect(path) as conn:
                return int(conn.execute("select count(*) from quilt_patches").fetchone()[0])

        yield Kind("sqlite", store, put_raw, raw, count)
        store.close()
        return
    url: str = request.getfixturevalue("pg_clean")
    if request.param == "postgresql":
        store = PostgresStore(url)
    else:
        store = request.getfixturevalue("supabase_store_factory")()
    yield Kind(request.param, store, *_pg_helpers(url))
    store.close()


def _entry(spend: float, seq: int, **extra: Any) -> dict[str, Any]:
    return {"spend_usd": spend, "seq": seq, "updated_at": "2026-11-25T10:00:00+00:00",
            "by_attributes": [{"attributes": {"agent": "cloud_lu"}, "spend_usd": spend}],
            **extra}


# --- malformed stored documents -------------------------------------------------------

MALFORMED = {
    "array": "[]",
    "string": '"a budget"',
    "number": "42",
    "json null": "null",
    "instances is a list": '{"instances": []}',
    "entry is a number": '{"total_usd": 5, "instances": {"a": 5}}',
    "spend is text": '{"instances": {"a": {"spend_usd": "abc", "seq": 1}}}',
    "spend negative": '{"instances": {"a": {"spend_usd": -3, "seq": 1}}}',
    "seq fractional": '{"instances": {"a": {"spend_usd": 1, "seq": 1.5}}}',
    "seq missing": '{"instances": {"a": {"spend_usd": 1}}}',
    "by_attributes not a list": '{"instances": {"a": {"spend_usd": 1, "seq": 1, '
                                '"by_attributes": {"agent": 1}}}}',
}


@pytest.mark.parametrize("content", MALFORMED.values(), ids=list(MALFORMED))
@pytest.mark.parametrize("writer", ["another instance", "the broken instance"])
def test_malformed_document_is_reported_and_never_overwritten(
    kind: Kind, content: str, writer: str
) -> None:
    kind.put_raw(BUDGET_TYPE, NAME, content)
    kind.put_raw(*SENTINEL, json.dumps(SENTINEL_CONTENT))
    before = kind.raw(BUDGET_TYPE, NAME)
    instance = "b" if writer == "another instance" else "a"
    with pytest.raises(CheckpointError) as caught:
        kind.store.merge_budget(NAME, instance, _entry(1.0, 99), day_meta=META)
    assert NAME in str(caught.value), "the message names the row"
    assert kind.raw(BUDGET_TYPE, NAME) == before
    assert kind.store.get(*SENTINEL) == SENTINEL_CONTENT


@pytest.mark.parametrize("content", ["[]", '"a budget"', "42", "null"])
def test_reading_a_non_object_names_the_row(kind: Kind, content: str) -> None:
    kind.put_raw(BUDGET_TYPE, NAME, content)
    with pytest.raises(CheckpointError, match=NAME):
        kind.store.get(BUDGET_TYPE, NAME)


def test_sqlite_invalid_json_text_is_reported_not_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "broken.db"
    store = SQLiteStore(path)
    try:
        with sqlite3.connect(path) as conn:
            conn.execute("insert into quilt_patches (patch_type, name, content) "
                         "values ('budget', ?, '{\"instances\": {')", (NAME,))
        with pytest.raises(CheckpointError, match=NAME):
            store.get(BUDGET_TYPE, NAME)
        with pytest.raises(CheckpointError, match=NAME):
            store.merge_budget(NAME, "a", _entry(1.0, 1), day_meta=META)
        with sqlite3.connect(path) as conn:
            assert conn.execute("select content from quilt_patches").fetchone() == (
                '{"instances": {',)
    finally:
        store.close()


# --- seq going backwards -----------------------------------------------------------------

@pytest.mark.parametrize("stale_seq", [4, 5, 0])
def test_seq_going_backwards_leaves_the_row_as_it_was(kind: Kind, stale_seq: int) -> None:
    kind.store.merge_budget(NAME, "b", _entry(0.5, 1), day_meta=META)
    stored = kind.store.merge_budget(NAME, "a", _entry(5.0, 5), day_meta=META)
    before = kind.raw(BUDGET_TYPE, NAME)
    later_meta = {**META, "daily_cap_usd": 99.0, "updated_at": "later"}
    doc = kind.store.merge_budget(NAME, "a", _entry(9.0, stale_seq), day_meta=later_meta)
    assert doc == stored, "the stored document is returned, unchanged"
    assert doc["instances"]["a"]["spend_usd"] == 5.0 and doc["daily_cap_usd"] == 50.0
    assert kind.raw(BUDGET_TYPE, NAME) == before, "not even updated_at moves"


def test_seqs_beyond_64_bits_still_compare(kind: Kind) -> None:
    big = 2**70
    kind.store.merge_budget(NAME, "a", _entry(1.0, big), day_meta=META)
    assert kind.store.merge_budget(NAME, "a", _entry(2.0, big - 1),
                                   day_meta=META)["instances"]["a"]["spend_usd"] == 1.0
    doc = kind.store.merge_budget(NAME, "a", _entry(3.0, big + 1), day_meta=META)
    assert doc["instances"]["a"] == _entry(3.0, big + 1)


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
    "🙂 ünïcødé",
    " ",
]


@pytest.mark.parametrize("instance_id", AWKWARD)
def test_awkward_instance_ids_are_data_not_sql(kind: Kind, instance_id: str) -> None:
    kind.put_raw(*SENTINEL, json.dumps(SENTINEL_CONTENT))
    kind.store.merge_budget(NAME, "plain", _entry(1.0, 1), day_meta=META)
    doc = kind.store.merge_budget(NAME, instance_id, _entry(2.0, 3), day_meta=META)
    assert set(doc["instances"]) == {"plain", instance_id}
    assert doc["instances"][instance_id] == _entry(2.0, 3)
    again = kind.store.merge_budget(NAME, instance_id, _entry(7.0, 2), day_meta=META)
    assert again["instances"][instance_id]["spend_usd"] == 2.0  # its own seq, compared
    assert kind.store.get(BUDGET_TYPE, NAME) == doc and doc["total_usd"] == 3.0
    assert kind.store.get(*SENTINEL) == SENTINEL_CONTENT
    assert kind.table_count() == 2


@pytest.mark.parametrize("name", AWKWARD)
def test_awkward_row_names_are_data_not_sql(kind: Kind, name: str) -> None:
    kind.put_raw(*SENTINEL, json.dumps(SENTINEL_CONTENT))
    doc = kind.store.merge_budget(name, "a", _entry(1.5, 1), day_meta=META)
    assert kind.store.get(BUDGET_TYPE, name) == doc
    assert kind.store.get(BUDGET_TYPE, name + "' OR '1'='1") is None
    assert kind.store.insert_if_absent(NUDGE_TYPE, name, {"n": name}) is True
    assert kind.store.insert_if_absent(NUDGE_TYPE, name, {"n": "again"}) is False
    assert kind.store.get(NUDGE_TYPE, name) == {"n": name}
    assert kind.store.get(*SENTINEL) == SENTINEL_CONTENT
    assert kind.table_count() == 3


def test_nul_characters_are_refused_by_postgres_or_kept_by_sqlite(kind: Kind) -> None:
    kind.store.merge_budget(NAME, "a", _entry(1.0, 1), day_meta=META)
    before = kind.raw(BUDGET_TYPE, NAME)
    if kind.name == "sqlite":
        doc = kind.store.merge_budget(NAME, "nul\x00id", _entry(1.0, 1), day_meta=META)
        assert "nul\x00id" in doc["instances"]
        return
    # PostgreSQL text and jsonb cannot hold U+0000: a clear error, nothing written.
    with pytest.raises((StoreError, CheckpointError)):
        kind.store.merge_budget(NAME, "nul\x00id", _entry(1.0, 1), day_meta=META)
    with pytest.raises((StoreError, CheckpointError)):
        kind.store.merge_budget(NAME, "a", _entry(2.0, 2, note="nul\x00"), day_meta=META)
    assert kind.raw(BUDGET_TYPE, NAME) == before


# --- huge attribute sets ------------------------------------------------------------------

def test_a_huge_attribute_set_round_trips(kind: Kind) -> None:
    items = [
        {"attributes": {"agent": f"agent-{i}", "gen_ai.request.model": "m" * 60,
                        f"custom.key.{i}": "v" * 100, "nested": [i, str(i)]},
         "spend_usd": 0.000123}
        for i in range(3000)
    ]
    entry = _entry(0.369, 1) | {"by_attributes": items}
    assert len(json.dumps(entry)) > 600_000
    doc = kind.store.merge_budget(NAME, "wide", entry, day_meta=META)
    assert doc["instances"]["wide"]["by_attributes"] == items
    assert kind.store.get(BUDGET_TYPE, NAME) == doc
    assert doc["total_usd"] == 0.369


def test_a_huge_attribute_set_with_one_bad_value_writes_nothing(kind: Kind) -> None:
    first = kind.store.merge_budget(NAME, "wide", _entry(0.1, 1), day_meta=META)
    items = [{"attributes": {"k": i}, "spend_usd": 0.001} for i in range(2000)]
    items[1234]["spend_usd"] = math.nan
    with pytest.raises(CheckpointError):
        kind.store.merge_budget(NAME, "wide", _entry(0.2, 2) | {"by_attributes": items},
                                day_meta=META)
    items[1234] = {"attributes": {"k": math.inf}, "spend_usd": 0.001}
    with pytest.raises(CheckpointError):
        kind.store.merge_budget(NAME, "wide", _entry(0.2, 2) | {"by_attributes": items},
                                day_meta=META)
    assert kind.store.get(BUDGET_TYPE, NAME) == first
