"""A writer entry's JSON text reaches PostgreSQL whole, whichever path built it.

merge_writer and retire_writer quote the entry themselves (libpq's
PQescapeLiteral) and send it with PQexec, and the entry's text is built by
prepare_writer_entry's fast path or, for anything unusual, its full path. Texts
that need quoting or escaping (quotes, backslashes, a literal backslash-u, a
dollar quote, characters beyond the BMP, non-ASCII keys) must be stored as the
entry holds them, on both paths, and a server-side error must still be a
CheckpointError with nothing written."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from otel_budget.errors import CheckpointError
from otel_budget.stores.base import jsonb_text
from otel_budget.stores.entries import (
    WRITER_TYPE,
    normalize_writer_entry,
    plain_writer_entry,
    writer_row_name,
)
from otel_budget.stores.postgres import PostgresStore
from otel_budget.stores.sqlfunctions import _REFUSED_ESCAPE

DAY = "2026-11-25"

AWKWARD = [
    "it's", 'quote"d', "back\\slash", "a literal \\u0000", "\\ud800 spelled out", "$$ $q$ E'x'",
    "naïve ✓ 日本", "emoji \U0001f600", "tab\tnew\nline", "%s %(x)s {}",
]


def _entry(writer: str, seq: int, text: str) -> dict[str, Any]:
    return {
        "date": DAY, "writer_id": writer, "instance_id": text, "seq": seq,
        "spend_usd": 0.1 + 0.2, "updated_at": f"{DAY}T10:00:00+00:00", "timezone": "UTC",
        "by_budget": {text: 0.25},
        "by_attributes": [{"attributes": {text: text, "agent": "a"}, "spend_usd": 0.25}],
    }


@pytest.mark.parametrize("text", AWKWARD)
def test_awkward_texts_are_stored_as_the_entry_holds_them(
        postgres_store_factory: Callable[..., PostgresStore], text: str) -> None:
    store = postgres_store_factory()
    merged, retired = _entry("w-merge", 3, text), _entry("w-retire", 4, text) | {"final": True}
    store.merge_writer(merged)
    store.retire_writer(retired)
    stored = {e["writer_id"]: e for e in store.writer_entries([DAY])}
    assert stored["w-merge"] == normalize_writer_entry(merged, where="t")
    assert stored["w-retire"] == normalize_writer_entry(retired, where="t") | {"retired": True}
    totals = store.day_totals([DAY])[DAY]
    assert totals["by_budget"] == {text: 0.5} and totals["writers"] == 2


def test_both_paths_are_met_by_the_texts_above() -> None:
    # plain_writer_entry takes every one; the text check sends to the full path the
    # ones whose JSON holds what looks like a NUL or surrogate escape: a character
    # beyond the BMP (a surrogate pair), and a backslash followed by such text.
    fast = [plain_writer_entry(_entry("w", 1, t)) for t in AWKWARD]
    full = [t for t, entry in zip(AWKWARD, fast, strict=True)
            if entry is not None and _REFUSED_ESCAPE.search(jsonb_text(entry))]
    assert None not in fast
    assert full == ["a literal \\u0000", "\\ud800 spelled out", "emoji \U0001f600"]


def test_a_server_side_refusal_is_a_checkpoint_error_and_nothing_is_written(
        postgres_store_factory: Callable[..., PostgresStore], pg_clean: str) -> None:
    store = postgres_store_factory()
    store.merge_writer(_entry("w", 3, "x"))
    # A stored row the SQL finds malformed (put there by hand): OB002 from the
    # function, raised through the merge's own round trip.
    with psycopg.connect(pg_clean, autocommit=True) as conn:
        conn.execute("update public.quilt_patches set content = content || '{\"seq\": \"x\"}' "
                     "where patch_type = %s and name = %s", (WRITER_TYPE, writer_row_name(DAY, "w")))
    with pytest.raises(CheckpointError, match=r"^row budget_writer/budget_2026-11-25/w: seq "
                       r"must be an integer >= 0, got \"x\" \[SQLSTATE OB002\]$"):
        store.merge_writer(_entry("w", 4, "y"))
    row = store.get(WRITER_TYPE, writer_row_name(DAY, "w"))
    assert row is not None and row["seq"] == "x" and row["instance_id"] == "x"
    # The connection is still usable afterwards (the implicit transaction ended).
    assert store.merge_writer(_entry("w2", 1, "z"))["applied"] is True
