"""otel_budget_writer_budget_entries (PostgresStore.writer_budget_entries): today's
writer entries for start(), without breakdowns, every budget an entry lacks computed
from its breakdown in SQL. It must equal the Python reference, fleet.entry_budget_spend
over the whole entries, and return a malformed row whole for the client to name."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from otel_budget.budgets import Budget
from otel_budget.fleet import entry_budget_spend, entry_problem
from otel_budget.stores.layout import FIGURES_TYPE, figures_row_name
from otel_budget.stores.postgres import PostgresStore
from otel_budget.stores.shares import open_day_entries
from tests.support.match_cases import MATCH_BUDGETS, MATCH_ITEMS

DAY = "2026-11-25"
BUDGETS = [
    *MATCH_BUDGETS,
    Budget("dots", 10.0, period="month", match={"team": ["t.*(x)", "é?", "line*"]}),
]
ITEMS: list[tuple[dict[str, Any], float]] = [
    *MATCH_ITEMS,
    ({"otel.metric.overflow": 1, "agent": "ax"}, 0.03125),  # not the overflow bucket
    ({"agent": ["ab"], "gen_ai.request.model": ["claude-opus-4"]}, 8.0),  # arrays: no match
    ({"team": "t.*(x)"}, 0.25), ({"team": "tX*(x)"}, 16.0), ({"team": "éa"}, 0.5),
    ({"team": "line\nbreak"}, 0.75), ({"team": "LINE"}, 32.0), ({"team": {"a": 1}}, 64.0),
]


def _entry(writer: str, items: list[tuple[dict[str, Any], float]],
           budgets: dict[str, float] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "date": DAY, "writer_id": writer, "instance_id": "host", "seq": 1,
        "spend_usd": round(sum(s for _, s in items), 9), "updated_at": f"{DAY}T10:00:00+00:00",
        "by_attributes": [{"attributes": a, "spend_usd": s} for a, s in items]}
    if budgets is not None:
        out["by_budget"] = budgets
    return out


def _reference(whole: list[dict[str, Any]],
               budgets: list[Budget] = BUDGETS) -> list[dict[str, Any]]:
    """What the SQL must answer, from the whole entries: the Python rule."""
    out = []
    for entry in whole:
        if entry_problem(entry) is not None:
            out.append(entry)
            continue
        light = {k: v for k, v in entry.items() if k != "by_attributes"}
        own = entry.get("by_budget") or {}
        missing = {b.name: entry_budget_spend(entry, b) for b in budgets if b.name not in own}
        if missing:
            light["by_budget"] = {**own, **missing}
        out.append(light)
    return out


def test_writer_budget_entries_equal_the_python_rule(pg_clean: str) -> None:
    rng = random.Random(7)
    store = PostgresStore(pg_clean)
    try:
        store.merge_writer(_entry("old-config", ITEMS))
        store.merge_writer(_entry("new-config", ITEMS[:3], budgets={"opus": 9.0, "daily": 3.75}))
        store.merge_writer(_entry("no-breakdown", [], budgets={"daily": 1.0}))
        for i in range(20):  # random draws over the same attribute values
            items = [(dict(rng.choice(ITEMS)[0]), round(rng.random(), 6)) for _ in range(30)]
            store.merge_writer(_entry(f"random-{i}", items,
                                      budgets={"daily": 1.0} if i % 3 == 0 else None))
        with psycopg.connect(pg_clean, autocommit=True) as conn:
            # Rows the stores would refuse, written by hand: returned whole, named later.
            for name, content in (
                ("bad-item", _entry("bad-item", ITEMS[:1]) | {"by_attributes": [
                    {"attributes": {"agent": "ab"}, "spend_usd": "1"}]}),
                ("bad-attrs", _entry("bad-attrs", ITEMS[:1]) | {"by_attributes": [
                    {"attributes": None, "spend_usd": 1}]}),
                ("bad-amount", _entry("bad-amount", ITEMS[:1]) | {"spend_usd": -1}),
            ):
                conn.execute("insert into public.quilt_patches (patch_type, name, content) "
                             "values ('budget_writer', %s, %s::jsonb)",
                             (f"budget_{DAY}/{name}", json.dumps(content)))
        whole = store.writer_entries([DAY])
        got = store.writer_budget_entries([DAY], BUDGETS)
        want = _reference(whole)
        assert [e["writer_id"] for e in got] == [e["writer_id"] for e in want]
        for g, w in zip(got, want, strict=True):
            assert set(g) == set(w), w["writer_id"]
            assert {k: v for k, v in g.items() if k != "by_budget"} == {
                k: v for k, v in w.items() if k != "by_budget"}, w["writer_id"]
            assert g.get("by_budget") == pytest.approx(w.get("by_budget"), abs=1e-9), (
                w["writer_id"])
        old = next(e for e in got if e["writer_id"] == "old-config")
        assert "by_attributes" not in old
        assert old["by_budget"]["opus"] == pytest.approx(1.25 + 2.0)
        assert old["by_budget"]["dots"] == pytest.approx(0.25 + 0.5 + 0.75)
        assert old["by_budget"]["daily"] == pytest.approx(sum(s for _, s in ITEMS) - 4.0)
        named = [e["writer_id"] for e in got if "by_attributes" in e or e["spend_usd"] == -1]
        assert sorted(named) == ["bad-amount", "bad-attrs", "bad-item"]
        # What start() reads for today: the same entries.
        assert open_day_entries(store, [DAY], BUDGETS) == got
    finally:
        store.close()


def test_a_match_sql_cannot_mirror_reads_the_entries_whole(pg_clean: str) -> None:
    store = PostgresStore(pg_clean)
    try:
        store.merge_writer(_entry("w", ITEMS[:2]))
        odd = [Budget("b", 1.0, match={"agent": "[ab]*"})]
        with pytest.raises(NotImplementedError):
            store.writer_budget_entries([DAY], odd)
        assert open_day_entries(store, [DAY], odd) == store.writer_entries([DAY])
    finally:
        store.close()


@pytest.fixture
def store(pg_clean: str) -> Iterator[PostgresStore]:
    opened = PostgresStore(pg_clean)
    yield opened
    opened.close()


def _kept(url: str) -> dict[str, dict[str, Any]]:
    with psycopg.connect(url, autocommit=True) as conn:
        return {name: content for name, content in conn.execute(
            "select name, content from public.quilt_patches where patch_type = %s "
            "order by name", (FIGURES_TYPE,))}


def _set_kept(url: str, name: str, content: Any) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("update public.quilt_patches set content = %s::jsonb "
                     "where patch_type = %s and name = %s",
                     (json.dumps(content), FIGURES_TYPE, name))


def _want(store: PostgresStore, budgets: list[Budget]) -> list[dict[str, Any]]:
    """The Python rule over the rows as they are now."""
    return _reference(store.writer_entries([DAY]), budgets)


def _assert_equal(got: list[dict[str, Any]], want: list[dict[str, Any]]) -> None:
    assert [e["writer_id"] for e in got] == [e["writer_id"] for e in want]
    for g, w in zip(got, want, strict=True):
        assert {k: v for k, v in g.items() if k != "by_budget"} == {
            k: v for k, v in w.items() if k != "by_budget"}, w["writer_id"]
        assert g.get("by_budget") == pytest.approx(w.get("by_budget"), abs=1e-9), w["writer_id"]


def test_each_row_versions_answer_is_kept_and_a_new_version_is_computed_again(
    store: PostgresStore, pg_clean: str,
) -> None:
    """A finished writer's breakdown is read once, not at every start(): the answer
    is kept per row version, and a merge, a retirement or a hand edit of the row
    (each a new version) is computed again."""
    store.merge_writer(_entry("old-config", ITEMS))
    store.merge_writer(_entry("finished", ITEMS[:4]))
    store.retire_writer(_entry("finished", ITEMS[:4]) | {"seq": 2, "final": True})
    store.merge_writer(_entry("new-config", ITEMS[:3], budgets={"opus": 9.0, "daily": 3.75}))
    with psycopg.connect(pg_clean, autocommit=True) as conn:
        conn.execute("insert into public.quilt_patches (patch_type, name, content) "
                     "values ('budget_writer', %s, %s::jsonb)",
                     (f"budget_{DAY}/bad", json.dumps(_entry("bad", ITEMS[:1]) | {
                         "by_attributes": [{"attributes": None, "spend_usd": 1}]})))
    first = store.writer_budget_entries([DAY], BUDGETS)
    _assert_equal(first, _want(store, BUDGETS))
    kept = _kept(pg_clean)
    assert sorted(n.split("/")[1] for n in kept) == ["finished", "new-config", "old-config"], (
        "well-formed rows only: a malformed one comes whole, named at every start")
    assert all(n.startswith(f"figures_{DAY}/") for n in kept)
    assert store.writer_budget_entries([DAY], BUDGETS) == first

    # The kept answer is what the next call reads (changed by hand to show it) ...
    name = next(n for n in kept if n.split("/")[1] == "old-config")
    forged = json.loads(json.dumps(kept[name]))
    forged["entry"]["by_budget"]["opus"] = 999.0
    _set_kept(pg_clean, name, forged)
    got = store.writer_budget_entries([DAY], BUDGETS)
    assert next(e for e in got if e["writer_id"] == "old-config")["by_budget"]["opus"] == 999.0
    # ... until the row has a new version: a merge,
    store.merge_writer(_entry("old-config", ITEMS[:5]) | {"seq": 2})
    _assert_equal(store.writer_budget_entries([DAY], BUDGETS), _want(store, BUDGETS))
    # a hand edit that keeps the seq (and the updated_at column),
    _set_kept(pg_clean, name, forged | {"version": _kept(pg_clean)[name]["version"]})
    with psycopg.connect(pg_clean, autocommit=True) as conn:
        conn.execute("update public.quilt_patches set content = jsonb_set(content, "
                     "'{by_attributes,0,spend_usd}', '0.5') where name = %s",
                     (f"budget_{DAY}/old-config",))
    again = store.writer_budget_entries([DAY], BUDGETS)
    _assert_equal(again, _want(store, BUDGETS))
    assert next(e for e in again if e["writer_id"] == "old-config")["by_budget"]["opus"] != 999
    # or the retirement of the row as it stands (what the reaper does to a writer
    # that stopped: the row keeps its content and seq, and is marked retired).
    before = _kept(pg_clean)[name]["version"]
    store.retire_writer(_entry("old-config", ITEMS[:5]) | {"seq": 2, "final": True})
    _assert_equal(store.writer_budget_entries([DAY], BUDGETS), _want(store, BUDGETS))
    assert _kept(pg_clean)[name]["version"] != before


@pytest.mark.parametrize("content", [
    "junk", None, [], {"version": None, "entry": {}}, {"entry": "x"},
])
def test_a_malformed_kept_answer_is_computed_again_and_replaced(
    store: PostgresStore, pg_clean: str, content: Any,
) -> None:
    store.merge_writer(_entry("w", ITEMS))
    first = store.writer_budget_entries([DAY], BUDGETS)
    (name,) = _kept(pg_clean)
    good = _kept(pg_clean)[name]
    if isinstance(content, dict) and content.get("version") is None and "version" in content:
        content = {"version": good["version"], "entry": "not an object"}
    _set_kept(pg_clean, name, content)
    assert store.writer_budget_entries([DAY], BUDGETS) == first
    assert _kept(pg_clean)[name] == good


def test_other_budgets_keep_answers_of_their_own(store: PostgresStore, pg_clean: str) -> None:
    store.merge_writer(_entry("w", ITEMS))
    few = BUDGETS[:1]
    a = store.writer_budget_entries([DAY], BUDGETS)
    b = store.writer_budget_entries([DAY], few)
    _assert_equal(a, _want(store, BUDGETS))
    _assert_equal(b, _want(store, few))
    assert set(a[0]["by_budget"]) != set(b[0]["by_budget"])
    assert len(_kept(pg_clean)) == 2
    assert store.writer_budget_entries([DAY], BUDGETS) == a


def test_a_read_only_session_gets_the_answer_and_keeps_nothing(
    store: PostgresStore, pg_clean: str,
) -> None:
    """A replica or a read-only role: nothing can be kept, everything is computed."""
    store.merge_writer(_entry("w", ITEMS))
    want = _want(store, BUDGETS)
    from otel_budget.stores.shares import budget_spec

    specs = json.dumps([budget_spec(b) for b in BUDGETS])
    with psycopg.connect(pg_clean, autocommit=True,
                         options="-c default_transaction_read_only=on") as conn:
        row = conn.execute("select public.otel_budget_writer_budget_entries(%s::text[], "
                           "%s::jsonb)", ([DAY], specs)).fetchone()
    assert row is not None
    _assert_equal(row[0], want)
    assert _kept(pg_clean) == {}


def test_kept_answers_a_week_older_than_the_day_asked_are_deleted(pg_clean: str) -> None:
    old, recent = "2026-11-17", "2026-11-19"  # DAY minus 8 and minus 6 days
    with psycopg.connect(pg_clean, autocommit=True) as conn:
        for day in (old, recent):
            conn.execute("insert into public.quilt_patches (patch_type, name, content) "
                         "values (%s, %s, '{}'::jsonb)",
                         (FIGURES_TYPE, figures_row_name(day, "w", "k")))
    store = PostgresStore(pg_clean)
    try:
        store.merge_writer(_entry("w", ITEMS))
        store.writer_budget_entries([DAY], BUDGETS)
        names = list(_kept(pg_clean))
        assert figures_row_name(old, "w", "k") not in names
        assert figures_row_name(recent, "w", "k") in names
        assert len(names) == 2
    finally:
        store.close()


def test_a_read_only_session_gets_a_closed_days_share_and_keeps_nothing(
    pg_clean: str,
) -> None:
    """The status page or report with a read-only role (or on a replica): the
    closed day's share is computed, not kept, and the answer is the same."""
    from otel_budget.stores.shares import budget_spec

    closed = "2026-11-24"
    store = PostgresStore(pg_clean)
    try:
        store.merge_writer(_entry("w", ITEMS) | {"date": closed})
        specs = json.dumps([budget_spec(b) for b in BUDGETS])
        with psycopg.connect(pg_clean, autocommit=True,
                             options="-c default_transaction_read_only=on") as conn:
            row = conn.execute("select public.otel_budget_budget_spend(%s::text[], %s::jsonb, "
                               "%s)", ([closed], specs, DAY)).fetchone()
        assert row is not None
        with psycopg.connect(pg_clean, autocommit=True) as conn:
            shares = conn.execute("select count(*) from public.quilt_patches "
                                  "where patch_type = 'budget_share'").fetchone()
        assert shares == (0,)
        assert row[0] == {closed: store.budget_day_spend([closed], BUDGETS, closed_before=DAY)[
            closed]}
        with psycopg.connect(pg_clean, autocommit=True) as conn:
            shares = conn.execute("select count(*) from public.quilt_patches "
                                  "where patch_type = 'budget_share'").fetchone()
        assert shares == (len(BUDGETS),), "kept by a session that can write"
    finally:
        store.close()
