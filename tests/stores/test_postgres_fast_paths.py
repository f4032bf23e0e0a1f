"""The fast paths of schema.sql's hot checks accept exactly what the checks accept.

otel_budget_writer_problem answers a well-formed entry from one expression of
jsonpath scans (and only then; anything else takes the detailed checks), and
otel_budget_amounts_ok checks by_budget with one strict jsonpath scan. jsonpath's
lax mode unwraps arrays, so an array where an object or number belongs is the
case to watch: each malformed variant below must still be refused, each
well-formed one accepted, and the answers must agree with the Python checks."""

from __future__ import annotations

import copy
from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb

from otel_budget.stores.entries import amounts_problem, writer_entry_problem

GOOD: dict[str, Any] = {
    "date": "2026-01-02", "writer_id": "w", "instance_id": "i", "spend_usd": 1.5, "seq": 3,
    "updated_at": "2026-01-02T10:00:00+00:00", "timezone": "UTC", "by_budget": {"a": 1},
    "by_attributes": [{"attributes": {"k": "v"}, "spend_usd": 1}],
}


def _changed(base: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """A copy of `base` with `changes` made (a key set to _DROP is left out)."""
    out = copy.deepcopy(base)
    for key, value in changes.items():
        if value is _DROP:
            out.pop(key)
        else:
            out[key] = value
    return out


def _with(**changes: Any) -> dict[str, Any]:
    return _changed(GOOD, **changes)


_DROP = object()

WELL_FORMED = [
    GOOD, _with(by_budget=_DROP), _with(by_attributes=_DROP), _with(timezone=_DROP),
    _with(by_attributes=[]), _with(by_budget={}), _with(writer_id="x" * 200),
    _with(by_attributes=[{"attributes": {}, "spend_usd": 0}]), _with(spend_usd=0),
]
MALFORMED = [
    _with(timezone=None), _with(by_budget=None), _with(by_attributes=None),
    _with(by_attributes=[[{"attributes": {}, "spend_usd": 1}]]),
    _with(by_attributes=[{"spend_usd": 1}]),
    _with(by_attributes=[{"attributes": None, "spend_usd": 1}]),
    _with(by_attributes=[{"attributes": [], "spend_usd": 1}]),
    _with(by_attributes=[{"attributes": [{"k": "v"}], "spend_usd": 1}]),
    _with(by_attributes=[{"attributes": {}, "spend_usd": [1]}]),
    _with(by_attributes=[{"attributes": {}, "spend_usd": "1"}]),
    _with(by_attributes=[{"attributes": {}, "spend_usd": -1}]),
    _with(by_attributes=[{"attributes": {}}]),
    _with(by_attributes=[{"attributes": {}, "spend_usd": 0}, 5]),
    _with(by_attributes={"a": 1}),
    _with(by_budget={"a": [1]}), _with(by_budget={"a": [-1]}), _with(by_budget={"a": []}),
    _with(by_budget={"a": -0.5}), _with(by_budget={"a": "1"}), _with(by_budget=[1]),
    _with(seq=3.0), _with(seq=-1), _with(seq="3"), _with(spend_usd=-1), _with(spend_usd="1"),
    _with(spend_usd=[1]), _with(writer_id=""), _with(writer_id="x" * 201),
    _with(instance_id=["i"]), _with(date="2026-1-02"), _with(date=20260102),
    _with(updated_at=None), _with(updated_at=_DROP), [GOOD], None,
]


def _sql(url: str, query: str, values: list[Any]) -> list[Any]:
    out = []
    with psycopg.connect(url) as conn:
        for value in values:
            row = conn.execute(query, (Jsonb(value),)).fetchone()
            assert row is not None
            out.append(row[0])
    return out


def test_writer_problem_accepts_the_well_formed_and_names_the_rest(pg_url: str) -> None:
    query = "select public.otel_budget_writer_problem(%s::jsonb)"
    assert _sql(pg_url, query, WELL_FORMED) == [None] * len(WELL_FORMED)
    answers = _sql(pg_url, query, MALFORMED)
    assert [v for v, a in zip(MALFORMED, answers, strict=True) if not a] == []
    # The Python checks agree on every case (they refuse nothing SQL accepts).
    assert all(writer_entry_problem(v) is None for v in WELL_FORMED)
    assert [v for v in MALFORMED if writer_entry_problem(v) is None] == []


AMOUNTS = [
    ({"spend_usd": 1, "by_budget": {"a": 0, "b": 3.5}}, True),
    ({"spend_usd": 1, "by_budget": {}}, True),
    ({"spend_usd": 1}, True),
    ({"spend_usd": 1, "by_budget": None}, True),
    ({"spend_usd": 1, "by_budget": {"a": 1e12}}, True),
    ({"spend_usd": 1, "by_budget": {"a": 1e12 + 1}}, False),
    ({"spend_usd": 1, "by_budget": {"a": -1}}, False),
    ({"spend_usd": 1, "by_budget": {"a": "x"}}, False),
    ({"spend_usd": 1, "by_budget": {"a": [5]}}, False),
    ({"spend_usd": 1, "by_budget": {"a": [[5]]}}, False),
    ({"spend_usd": 1, "by_budget": {"a": []}}, False),
    ({"spend_usd": 1, "by_budget": {"a": {}}}, False),
    ({"spend_usd": 1, "by_budget": {"a": None}}, False),
    ({"spend_usd": 1, "by_budget": {"a": True}}, False),
    ({"spend_usd": 1, "by_budget": [1]}, False),
    ({"spend_usd": -1}, False),
    ({"spend_usd": "1"}, False),
]


@pytest.mark.parametrize(("content", "ok"), AMOUNTS)
def test_amounts_ok_agrees_with_the_python_check(pg_url: str, content: Any, ok: bool) -> None:
    got = _sql(pg_url, "select public.otel_budget_amounts_ok(%s::jsonb)", [content])
    assert got == [ok]
    assert (amounts_problem(content) is None) is ok


SUMMARY_DAY = "2026-01-02"
SUMMARY: dict[str, Any] = {
    "date": SUMMARY_DAY, "spend_nanos": 1_500_000_000, "writers": 3,
    "updated_at": "2026-01-02T10:00:00+00:00",
    "by_budget_nanos": {"a": 1_000_000_000, "team.b": 0},
    "budget_writers": {"a": 2, "team.b": 1},
}


def _summary(**changes: Any) -> dict[str, Any]:
    return _changed(SUMMARY, **changes)


WELL_FORMED_SUMMARIES = [
    SUMMARY, _summary(updated_at=None), _summary(updated_at=_DROP),
    _summary(by_budget_nanos={}, budget_writers={}),
    _summary(by_budget_nanos={"a": 0.5}, budget_writers={"a": 1}),  # SQL keeps decimals
    _summary(by_budget_nanos={"a": 10**30}, budget_writers={"a": 10**20}),
    _summary(by_budget_nanos={"b": 1, "a": 0}, budget_writers={"a": 1, "b": 1}),
]
MALFORMED_SUMMARIES = [
    _summary(updated_at=5), _summary(updated_at=[]), _summary(date="2026-01-03"),
    _summary(date=None), _summary(date=_DROP), _summary(spend_nanos=1.5),
    _summary(spend_nanos=-1), _summary(spend_nanos="1"), _summary(spend_nanos=[1]),
    _summary(writers=2.0), _summary(writers=_DROP), _summary(by_budget_nanos=[1]),
    _summary(by_budget_nanos=None), _summary(budget_writers={"a": 2}),
    _summary(budget_writers={"a": 2, "team.b": 1, "c": 1}),
    _summary(budget_writers={"a": 2.0, "team.b": 1}),
    _summary(budget_writers={"a": -2, "team.b": 1}),
    _summary(budget_writers={"a": "2", "team.b": 1}),
    _summary(budget_writers={"a": [2], "team.b": 1}),
    _summary(budget_writers={"a": [[2]], "team.b": 1}),
    _summary(budget_writers={"a": {"n": 2}, "team.b": 1}),
    _summary(budget_writers={"a": None, "team.b": 1}),
    _summary(by_budget_nanos={"a": -1, "team.b": 0}),
    _summary(by_budget_nanos={"a": [1], "team.b": 0}),
    _summary(by_budget_nanos={"a": [-1], "team.b": 0}),
    _summary(by_budget_nanos={"a": "1", "team.b": 0}),
    _summary(by_budget_nanos={"a": True, "team.b": 0}),
    _summary(by_budget_nanos={"a": 1, "team.c": 0}),
    [SUMMARY], None, "x", 5,
]


def _without_fast_path(function: str, name: str) -> str:
    """schema.sql's `function` without its fast path, as pg_temp.`name`: the checks
    that name each problem, which the fast path must agree with."""
    import re

    from otel_budget.stores.migrate import schema_sql

    sql = schema_sql()
    start = sql.index(f"create or replace function public.{function}(")
    body = sql[start:sql.index("$fn$;", start) + len("$fn$;")]
    fast = body.index("    -- The fast path")
    end = body.index("\n    end if;\n", fast) + len("\n    end if;\n")
    assert "return null;" in body[fast:end]
    slow = body[:fast] + body[end:]
    return re.sub(rf"public\.{function}\(", f"pg_temp.{name}(", slow, count=1)


def test_the_summary_checks_fast_path_answers_as_its_checks_do(pg_url: str) -> None:
    with psycopg.connect(pg_url) as conn:
        conn.execute(_without_fast_path("otel_budget_summary_problem", "summary_slow"))
        answers = []
        for content in WELL_FORMED_SUMMARIES + MALFORMED_SUMMARIES:
            row = conn.execute(
                "select public.otel_budget_summary_problem(%s::jsonb, %s), "
                "pg_temp.summary_slow(%s::jsonb, %s)",
                (Jsonb(content), SUMMARY_DAY, Jsonb(content), SUMMARY_DAY)).fetchone()
            assert row is not None and row[0] == row[1], content
            answers.append(row[0])
    assert answers[:len(WELL_FORMED_SUMMARIES)] == [None] * len(WELL_FORMED_SUMMARIES)
    assert None not in answers[len(WELL_FORMED_SUMMARIES):]


def test_the_writer_checks_fast_path_answers_as_its_checks_do(pg_url: str) -> None:
    with psycopg.connect(pg_url) as conn:
        conn.execute(_without_fast_path("otel_budget_writer_problem", "writer_slow"))
        for entry in WELL_FORMED + MALFORMED:
            row = conn.execute("select public.otel_budget_writer_problem(%s::jsonb), "
                               "pg_temp.writer_slow(%s::jsonb)",
                               (Jsonb(entry), Jsonb(entry))).fetchone()
            assert row is not None and row[0] == row[1], entry


def test_a_merge_trusts_only_the_row_version_its_session_wrote(pg_clean: str) -> None:
    """otel_budget_write_writer skips checking the stored row only when it is the
    version this session wrote last (otel_budget.checked_row names it by xmin and
    ctid): a hand edit, from another session, this one, or the merge's own
    transaction, is a new version and is checked again, so a malformed row is still
    named and left as it is."""
    name = "budget_2026-01-02/w"

    def merge(conn: psycopg.Connection[Any], seq: int) -> dict[str, Any]:
        row = conn.execute("select public.otel_budget_merge_writer(%s)",
                           (Jsonb(_with(seq=seq)),)).fetchone()
        assert row is not None
        result: dict[str, Any] = row[0]
        return result

    def content(conn: psycopg.Connection[Any]) -> Any:
        row = conn.execute("select content from public.quilt_patches "
                           "where patch_type = 'budget_writer' and name = %s", (name,)).fetchone()
        assert row is not None
        return row[0]

    with psycopg.connect(pg_clean, autocommit=True) as writer, \
            psycopg.connect(pg_clean, autocommit=True) as editor:
        assert merge(writer, 3)["applied"]
        version = writer.execute("select xmin::text || ':' || ctid::text from public.quilt_patches "
                                 "where patch_type = 'budget_writer' and name = %s",
                                 (name,)).fetchone()
        assert version is not None
        assert writer.execute("select current_setting('otel_budget.checked_row')"
                              ).fetchone() == (f"{version[0]}/{name}",)
        # the trusted version: the seq rule still holds
        assert merge(writer, 4)["applied"] and not merge(writer, 4)["applied"]
        assert content(writer)["seq"] == 4
        for edit in (editor, writer):  # another session's edit, then this session's own
            bad = _with(seq=4, by_budget={"a": [1]})
            edit.execute("update public.quilt_patches set content = %s "
                         "where patch_type = 'budget_writer' and name = %s", (Jsonb(bad), name))
            with pytest.raises(psycopg.Error) as caught:
                merge(writer, 5)
            assert caught.value.sqlstate == "OB002" and name in str(caught.value)
            assert content(editor) == bad
            edit.execute("update public.quilt_patches set content = %s "
                         "where patch_type = 'budget_writer' and name = %s",
                         (Jsonb(_with(seq=4)), name))
        # an edit in the merge's own transaction: the same xmin, another version
        writer.execute("begin")
        merge(writer, 5)
        writer.execute("update public.quilt_patches set content = %s "
                       "where patch_type = 'budget_writer' and name = %s",
                       (Jsonb(_with(seq=5, by_budget={"a": [1]})), name))
        writer.execute("commit")
        with pytest.raises(psycopg.Error) as caught:
            merge(writer, 6)
        assert caught.value.sqlstate == "OB002"
        editor.execute("update public.quilt_patches set content = %s "
                       "where patch_type = 'budget_writer' and name = %s",
                       (Jsonb(_with(seq=5)), name))
        # a rolled-back merge leaves no trust behind: the setting is as it was
        before = writer.execute("select current_setting('otel_budget.checked_row')").fetchone()
        writer.execute("begin")
        merge(writer, 6)
        writer.execute("rollback")
        assert writer.execute("select current_setting('otel_budget.checked_row')"
                              ).fetchone() == before
        editor.execute("update public.quilt_patches set content = %s "
                       "where patch_type = 'budget_writer' and name = %s",
                       (Jsonb(_with(seq="4")), name))
        with pytest.raises(psycopg.Error) as caught:
            merge(writer, 7)
        assert caught.value.sqlstate == "OB002"
