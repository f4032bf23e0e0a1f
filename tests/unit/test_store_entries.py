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
