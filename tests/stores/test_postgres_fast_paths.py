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


def _with(**changes: Any) -> dict[str, Any]:
    out = copy.deepcopy(GOOD)
    for key, value in changes.items():
        if value is _DROP:
            out.pop(key)
        else:
            out[key] = value
    return out


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
