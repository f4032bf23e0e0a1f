"""otel_budget.stores.entries without any database: names, validation, summarize."""

from __future__ import annotations

import math
import random
from decimal import Decimal
from typing import Any

import pytest

from otel_budget import CheckpointError
from otel_budget.stores.entries import (
    LEGACY_TYPE,
    WRITER_TYPE,
    check_days,
    empty_totals,
    normalize_writer_entry,
    summarize,
    totals_from_json,
    validate_writer_entry,
    writer_row_name,
)


def good(**extra: Any) -> dict[str, Any]:
    return {"date": "2026-11-25", "writer_id": "w-1", "instance_id": "host-a",
            "spend_usd": 1.5, "seq": 3, "updated_at": "2026-11-25T10:00:00+00:00"} | extra


def test_names_and_types() -> None:
    assert WRITER_TYPE == "budget_writer" and LEGACY_TYPE == "budget"
    assert writer_row_name("2026-11-25", "abc") == "budget_2026-11-25/abc"


def test_a_good_entry_is_returned_as_is() -> None:
    entry = good(timezone="Europe/Paris", by_budget={"daily": 1.5}, by_attributes=[
        {"attributes": {"agent": "x", "n": 1}, "spend_usd": 1.5}])
    assert validate_writer_entry(entry, where="here") is entry
    assert validate_writer_entry(good(spend_usd=0, seq=0), where="here")["seq"] == 0


@pytest.mark.parametrize("bad", [
    None, [], "x", good(date="2026-02-30"), good(date="26-11-25"), good(date=None),
    good(writer_id=""), good(writer_id=5), good(instance_id="i" * 201),
    good(spend_usd=math.nan), good(spend_usd=-math.inf), good(spend_usd=-0.1),
    good(spend_usd=True), good(spend_usd="1"), good(seq=False), good(seq=1.0), good(seq=-1),
    good(updated_at=None), good(timezone=1), good(by_attributes={}),
    good(by_attributes=[{"attributes": [], "spend_usd": 1}]),
    good(by_attributes=[{"attributes": {}, "spend_usd": math.nan}]),
    good(by_attributes=[{"attributes": {"k": "\x00"}, "spend_usd": 1}]),
    good(by_attributes=[{"attributes": {"\ud800": "v"}, "spend_usd": 1}]),
    good(by_attributes=[{"attributes": {"k": ["a", "b\udfff"]}, "spend_usd": 1}]),
    good(by_budget={"daily": -1}), good(by_budget={"daily": math.nan}), good(by_budget=[]),
    good(by_budget={"x\x00": 1.0}), good(note="nul\x00"),
])
def test_malformed_entries_name_the_place(bad: Any) -> None:
    with pytest.raises(CheckpointError, match=r"^checkpoint of w-1: "):
        validate_writer_entry(bad, where="checkpoint of w-1")


def test_normalize_rounds_every_amount_on_a_copy() -> None:
    raw = good(spend_usd=0.1 + 0.2, by_budget={"daily": 0.30000000049},
               by_attributes=[{"attributes": {}, "spend_usd": 1e-10}])
    out = normalize_writer_entry(raw, where="x")
    assert out["spend_usd"] == 0.3 and out["by_budget"] == {"daily": 0.3}
    assert out["by_attributes"][0]["spend_usd"] == 0.0
    assert math.copysign(1, out["by_attributes"][0]["spend_usd"]) == 1.0
    assert raw["spend_usd"] == 0.1 + 0.2 and raw["by_attributes"][0]["spend_usd"] == 1e-10


def test_summarize_is_an_exact_decimal_sum() -> None:
    entries = [good(writer_id=str(i), spend_usd=0.1, updated_at=f"t{i}",
                    by_budget={"daily": 0.1} if i % 2 else {"daily": 0.1, "team": 0.2})
               for i in range(10)]
    totals = summarize("2026-11-25", entries)
    assert totals == {"date": "2026-11-25", "total_usd": 1.0, "writers": 10,
                      "updated_at": "t9", "by_budget": {"daily": 1.0, "team": 1.0},
                      "budget_writers": {"daily": 10, "team": 5}, "quarantined": []}
    assert sum(0.1 for _ in range(10)) != 1.0, "the float sum would be off"
    assert summarize("2026-11-24", []) == empty_totals("2026-11-24")


def test_summarize_matches_decimal_arithmetic_on_random_data() -> None:
    rng = random.Random(7)
    for _ in range(50):
        amounts = [round(rng.uniform(0, 1000), rng.randint(0, 9)) for _ in range(rng.randint(0, 30))]
        entries = [good(writer_id=str(i), spend_usd=a) for i, a in enumerate(amounts)]
        expected = float(round(sum((Decimal(repr(a)) for a in amounts), Decimal(0)), 9))
        assert summarize("2026-11-25", entries)["total_usd"] == expected


def test_totals_from_json_normalises_database_numbers() -> None:
    raw = {"date": "2026-11-25", "total_usd": 0, "writers": 2, "updated_at": None,
           "by_budget": {"b": 1, "a": 2.5}, "budget_writers": {"b": 1, "a": 2}}
    totals = totals_from_json("2026-11-25", raw)
    assert totals["total_usd"] == 0.0 and isinstance(totals["total_usd"], float)
    assert list(totals["by_budget"]) == ["a", "b"]
    with pytest.raises(CheckpointError):
        totals_from_json("2026-11-25", {"total_usd": "x"})
    with pytest.raises(CheckpointError):
        totals_from_json("2026-11-25", [])


def test_check_days() -> None:
    assert check_days(("2026-11-25", "2026-11-24", "2026-11-25")) == ["2026-11-25", "2026-11-24"]
    bad: Any
    for bad in (["2026-02-30"], "2026-11-25", [20261125]):
        with pytest.raises(CheckpointError):
            check_days(bad)


def test_bad_input_and_corrupt_stored_data_are_told_apart() -> None:
    import math

    from otel_budget.errors import CheckpointError, CorruptRowError, InvalidEntryError
    from otel_budget.stores.base import dumps_content, loads_content

    with pytest.raises(InvalidEntryError) as offered:
        dumps_content({"spend_usd": math.nan})
    assert isinstance(offered.value, ValueError) and isinstance(offered.value, CheckpointError)
    with pytest.raises(CorruptRowError, match="budget_writer/budget_2026-11-25/w1") as stored:
        loads_content('{"spend_usd": ', patch_type="budget_writer", name="budget_2026-11-25/w1")
    assert not isinstance(stored.value, InvalidEntryError)
    with pytest.raises(CorruptRowError):
        loads_content("[1, 2]", patch_type="budget", name="budget_2026-11-25")


_POISONS: list[Any] = [
    "nul\x00", "lone \ud800", "\udfff", math.nan, math.inf, -math.inf, 1e308,
    {1: "int key"}, {None: 1}, {True: 1}, {1.5: 1}, {("t",): 1}, {"k\x00": 1}, {"\udc80": 1},
    type("S", (str,), {})("a subclass\x00"), type("F", (float,), {})(math.nan),
    ["x", "y\x00"], ("t", "\ud800"), {"nested": [{"deep": "\x00"}]},
]
_CLEAN: list[Any] = [
    "plain", "naïve ✓ 日本", 0.0, 1e-9, 10**30, True, None, 3, [], {}, (), ["a", 1.5],
    {"k": "v", "n": 2.5}, {"deep": [{"deeper": ("t", 1)}]},
]


def _random_value(rng: random.Random, depth: int, poison: Any) -> tuple[Any, bool]:
    """A random nested value of the shapes writer entries hold; with `poison` placed
    somewhere in it (as a value, or inside a key) when one is given."""
    if depth == 0 or rng.random() < 0.3:
        if poison is not None:
            return poison, True
        return rng.choice(_CLEAN), False
    placed = False
    if rng.random() < 0.5:
        out: Any = {}
        for i in range(rng.randint(1, 6)):
            child, here = _random_value(rng, depth - 1, None if placed else poison)
            placed = placed or here
            out[f"k{i}-{rng.random():.3f}"] = child
    else:
        items = []
        for _ in range(rng.randint(1, 6)):
            child, here = _random_value(rng, depth - 1, None if placed else poison)
            placed = placed or here
            items.append(child)
        out = items if rng.random() < 0.8 else tuple(items)
    return out, placed


def test_the_fast_string_check_never_passes_what_the_walk_names() -> None:
    from otel_budget.stores.entries import _plainly_clean, _strings_problem, _strings_walk

    rng = random.Random(19)
    passed_fast = 0
    for trial in range(3000):
        poison = rng.choice(_POISONS) if trial % 2 else None
        value, _ = _random_value(rng, rng.randint(1, 5), poison)
        walked = _strings_walk(value, "entry")
        assert _strings_problem(value, "entry") == walked
        if walked is not None:
            assert not _plainly_clean(value), (value, walked)
        elif poison is None:
            assert _plainly_clean(value), value
            passed_fast += 1
    assert passed_fast > 1000


def test_a_bad_key_among_ten_thousand_is_named() -> None:
    keys = {f'["c{k:05d}"]': 0.0001 for k in range(10_000)}
    assert validate_writer_entry(good(by_key={"per-customer": keys}), where="w")
    for bad, problem in (('["c\x00"]', "contains a NUL character"),
                         ('["c\udc80"]', "contains a lone surrogate")):
        entry = good(by_key={"per-customer": {**keys, bad: 0.0001}})
        with pytest.raises(CheckpointError,
                           match=rf"^w: a key in entry\.by_key\.per-customer {problem}$"):
            validate_writer_entry(entry, where="w")
    entry = good(by_key={"per-customer": {**keys, '["c9"]': math.inf}})
    with pytest.raises(CheckpointError, match=r'per-customer\.\["c9"\] is inf, not JSON$'):
        validate_writer_entry(entry, where="w")
