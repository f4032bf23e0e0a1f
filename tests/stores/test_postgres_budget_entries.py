"""otel_budget_writer_budget_entries (PostgresStore.writer_budget_entries): today's
writer entries for start(), without breakdowns, every budget an entry lacks computed
from its breakdown in SQL. It must equal the Python reference, fleet.entry_budget_spend
over the whole entries, and return a malformed row whole for the client to name."""

from __future__ import annotations

import json
import random
from typing import Any

import psycopg
import pytest

from otel_budget.budgets import Budget
from otel_budget.fleet import entry_budget_spend, entry_problem
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


def _reference(whole: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What the SQL must answer, from the whole entries: the Python rule."""
    out = []
    for entry in whole:
        if entry_problem(entry) is not None:
            out.append(entry)
            continue
        light = {k: v for k, v in entry.items() if k != "by_attributes"}
        own = entry.get("by_budget") or {}
        missing = {b.name: entry_budget_spend(entry, b) for b in BUDGETS if b.name not in own}
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
