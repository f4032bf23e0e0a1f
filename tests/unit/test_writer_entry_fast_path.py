"""prepare_writer_entry's fast path (plain_writer_entry, then checks on the JSON
text) agrees with the full path (normalize_writer_entry, then dumps_content) on
every entry: the same entry and JSON value when both take it, the same error
(type and message) when the full path refuses it. No database: the PostgreSQL
store tests send the texts to a real server."""

from __future__ import annotations

import copy
import json
import math
import random
from collections import OrderedDict
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest

from otel_budget.errors import CheckpointError, InvalidEntryError
from otel_budget.stores.base import dumps_content
from otel_budget.stores.entries import normalize_writer_entry, plain_writer_entry
from otel_budget.stores.sqlfunctions import prepare_writer_entry


class _Dict(dict[str, Any]):
    pass


class _Str(str):
    pass


class _Float(float):
    pass


def _meter_entry(sets: int = 5) -> dict[str, Any]:
    """An entry as Checkpointer.entry builds one."""
    return {
        "date": "2026-11-25", "writer_id": "w-1", "instance_id": "host-a",
        "timezone": "Europe/Paris", "spend_usd": 0.1 + 0.2, "seq": 7,
        "updated_at": "2026-11-25T10:00:00+00:00", "started_at": "2026-11-25T09:00:00+00:00",
        "by_attributes": [
            {"attributes": {"gen_ai.request.model": "claude-sonnet-4", "agent": f"agent-{i}",
                            "n": i, "ok": True, "ratio": 0.5, "none": None},
             "spend_usd": 0.1 * i + 1e-10}
            for i in range(sets)
        ],
        "by_budget": {"daily": 0.30000000049, "team-a": 0.0},
    }


def _full_path(entry: Any) -> tuple[dict[str, Any], str]:
    checked = normalize_writer_entry(entry, where="writer entry")
    return checked, dumps_content(checked)


def _outcome(prepare: Callable[[Any], tuple[dict[str, Any], str]], entry: Any) -> Any:
    try:
        checked, text = prepare(entry)
    except Exception as exc:  # compared by type and message
        return ("refused", type(exc), str(exc))
    assert text.isascii()
    return ("taken", checked, json.loads(text))


def _places(entry: dict[str, Any]) -> list[tuple[Any, Any]]:
    """(container, key) pairs where a value of the entry can be replaced."""
    places: list[tuple[Any, Any]] = [(entry, k) for k in list(entry)]
    items = entry.get("by_attributes")
    for item in items if isinstance(items, list) else []:
        if isinstance(item, dict):
            places += [(item, "spend_usd"), (item, "attributes")]
            if isinstance(item.get("attributes"), dict):
                places += [(item["attributes"], k) for k in list(item["attributes"])]
    if isinstance(entry.get("by_budget"), dict):
        places += [(entry["by_budget"], k) for k in list(entry["by_budget"])]
    return places


_ODD_VALUES: list[Any] = [
    math.nan, math.inf, -math.inf, -0.0, 0, 1e12, 1e12 + 1, 10**12, 10**12 + 1, 10**400, True,
    False, None, -1, -1e-12, "1.5", _Float(2.5), _Float(math.nan), "nul\x00", "lone \ud800",
    "\udfff", "pair as two \ud83d\ude00", "emoji \U0001f600", "naïve 日本", "한국어",
    "a literal \\u0000", "\\ud800 literal too", _Str("sub"), _Str("sub\x00"), Decimal("1.5"),
    {1: "int key"}, {None: 1}, {"k\x00": 1}, {"\udc80": 1}, {"deep": [{"deeper": [math.nan]}]},
    {"deep": [{"deeper": ["\x00"]}]}, {"deep": ("t", 1)}, ["a", 2, 2.5], ("t", "u"), [math.inf],
    {"set": {1, 2}}, _Dict(a=1), OrderedDict(a=1.0), [], {}, "", "x" * 201, {"": ""},
]


def _mutate(rng: random.Random, entry: dict[str, Any]) -> None:
    """One odd change somewhere in `entry`."""
    roll = rng.random()
    if roll < 0.6:
        container, key = rng.choice(_places(entry))
        container[key] = copy.copy(rng.choice(_ODD_VALUES))
    elif roll < 0.7:
        target = rng.choice([c for c, _ in _places(entry) if isinstance(c, dict)])
        target[rng.choice([1, None, 2.5, "new\x00", "fine", "\ud800", ("t",)])] = 1.0
    elif roll < 0.8 and isinstance(entry.get("by_attributes"), list) and all(
            isinstance(i, dict) and isinstance(i.get("attributes"), dict)
                and "spend_usd" in i
            for i in entry["by_attributes"]) and entry["by_attributes"]:
        i = rng.randrange(len(entry["by_attributes"]))
        item = entry["by_attributes"][i]
        entry["by_attributes"][i] = rng.choice([
            _Dict(item), {**item, "extra": "x"}, {"attributes": item["attributes"]},
            {"spend_usd": item["spend_usd"], "attributes": item["attributes"]},
            {**item, "attributes": _Dict(item["attributes"])}, [item], None])
    elif roll < 0.9:
        key = rng.choice(["retired", "final", "timezone", "by_budget", "by_attributes",
                          "seq", "date", "by_key"])
        entry[key] = rng.choice([True, False, 1, "UTC", {}, [], (), None, "2026-02-30",
                                 {"per-customer": {'["c1"]': 0.25, '["c\x00"]': 1.0}},
                                 {"per-customer": {'["c1"]': 0.25}}, _Dict(a=1.0)])
    else:
        entry.pop(rng.choice(list(entry)))


def test_the_fast_path_agrees_with_the_full_path_on_odd_entries() -> None:
    rng = random.Random(18)
    seen = {"fast_taken": 0, "full_taken": 0, "refused": 0}
    for trial in range(6000):
        entry: Any = _meter_entry(rng.randint(0, 4))
        for _ in range(rng.choice([0, 1, 1, 1, 2, 3])):
            _mutate(rng, entry)
        if trial % 97 == 0:
            entry = rng.choice([_Dict(entry), [entry], None, "entry"])
        snapshot = copy.deepcopy(entry) if not isinstance(entry, _Dict) else None
        expected = _outcome(_full_path, entry)
        got = _outcome(prepare_writer_entry, entry)
        assert got == expected, (entry, got, expected)
        if snapshot is not None:
            assert _same(entry, snapshot), "the caller's entry was changed"
        fast = plain_writer_entry(entry)
        if fast is not None:
            # plain_writer_entry leaves strings and stray floats to the text checks:
            # when it takes an entry the full path refuses, prepare must refuse it.
            if expected[0] == "taken":
                assert fast == expected[1]
                seen["fast_taken"] += 1
        elif expected[0] == "taken":
            seen["full_taken"] += 1
        if expected[0] == "refused":
            seen["refused"] += 1
    # Each kind of outcome was met often enough to mean something.
    assert seen["fast_taken"] > 500 and seen["full_taken"] > 200 and seen["refused"] > 2000, seen


def _same(a: Any, b: Any) -> bool:
    # == with NaN equal to itself (a NaN planted in the entry stays one).
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(map(_same, a, b))
    return bool(a == b)


def test_a_meter_entry_takes_the_fast_path_and_is_rounded_alike() -> None:
    entry = _meter_entry(20)
    entry["by_attributes"][0]["spend_usd"] = -0.0
    entry["by_attributes"][1]["spend_usd"] = 3  # an int amount
    entry["by_attributes"][2]["spend_usd"] = 1e12
    entry["by_attributes"][3]["attributes"]["tags"] = ["a", "b"]  # a sequence value
    entry["by_attributes"][4]["attributes"]["name"] = "naïve ✓ 日本"
    fast = plain_writer_entry(entry)
    assert fast is not None
    assert fast == normalize_writer_entry(entry, where="writer entry")
    assert math.copysign(1.0, fast["by_attributes"][0]["spend_usd"]) == 1.0  # -0.0 folded
    assert type(fast["by_attributes"][1]["spend_usd"]) is float
    assert fast["spend_usd"] == 0.3 and fast["by_budget"]["daily"] == 0.3
    checked, text = prepare_writer_entry(entry)
    assert checked == fast and json.loads(text) == json.loads(dumps_content(fast))
    # The text keeps the entry's key order (jsonb keeps none): not sorted.
    assert text.startswith('{"date":"2026-11-25","writer_id":"w-1"')


@pytest.mark.parametrize(("where", "bad", "message"), [
    (("by_attributes", 3, "attributes", "agent"), "a\x00b",
     r"^writer entry: entry\.by_attributes\[3\]\.attributes\.agent contains a NUL character$"),
    (("by_attributes", 3, "attributes", "agent"), "x\ud800",
     r"^writer entry: entry\.by_attributes\[3\]\.attributes\.agent contains a lone surrogate$"),
    (("by_attributes", 3, "attributes", "ratio"), math.nan,
     r"^writer entry: entry\.by_attributes\[3\]\.attributes\.ratio is nan, not JSON$"),
    (("by_attributes", 3, "attributes", "tags"), [["deep", [math.inf]]],
     r"^writer entry: entry\.by_attributes\[3\]\.attributes\.tags\[0\]\[1\]\[0\] is inf, not JSON$"),
    (("writer_id",), "w\x00", r"^writer entry: entry\.writer_id contains a NUL character$"),
    (("by_budget", "daily"), True, r"^writer entry: by_budget\['daily'\] must be a finite"),
    (("by_attributes", 0, "spend_usd"), 1e12 * 1.000001,
     r"^writer entry: by_attributes\[0\] must be"),
])
def test_a_problem_the_fast_path_leaves_to_the_text_is_named_as_before(
        where: tuple[Any, ...], bad: Any, message: str) -> None:
    entry = _meter_entry(5)
    target: Any = entry
    for step in where[:-1]:
        target = target[step]
    target[where[-1]] = bad
    with pytest.raises(CheckpointError, match=message):
        prepare_writer_entry(entry)
    with pytest.raises(CheckpointError, match=message):
        normalize_writer_entry(entry, where="writer entry")


def test_non_string_keys_and_unknown_types_are_refused_as_before() -> None:
    entry = _meter_entry(2)
    entry["by_attributes"][1]["attributes"][7] = "int key"  # json would write "7"
    with pytest.raises(CheckpointError, match=r"has a non-string key 7$"):
        prepare_writer_entry(entry)
    entry = _meter_entry(2)
    entry["by_key"] = {"per-customer": {'["c1"]': Decimal("0.25")}}
    with pytest.raises(InvalidEntryError, match=r"^content is not JSON-serialisable: "):
        prepare_writer_entry(entry)
    entry = _meter_entry(2) | {"retired": True}
    with pytest.raises(InvalidEntryError, match="retired is set by the store"):
        prepare_writer_entry(entry)


def test_the_shortcut_rounding_is_round_usd_on_every_kind_of_amount() -> None:
    """money.round_usd skips round() for a value rounded already: on every kind of
    amount it answers what round(value, 9) + 0.0 answers."""
    from otel_budget.money import MAX_STORED_USD, round_usd

    def reference(value: float) -> float:
        return round(float(value), 9) + 0.0

    rng = random.Random(23)
    values: list[float] = [0.0, -0.0, 0, 1, 5e-324, 1e-10, 5e-10, 1.5e-9, 0.1 + 0.2, 1e12,
                           MAX_STORED_USD, 10**12, 2.0**23, 2.0**24, 9007199.254740992]
    for _ in range(20000):
        magnitude = 10.0 ** rng.uniform(-12, 12)
        raw = rng.random() * magnitude
        values += [raw, round(raw, rng.randint(0, 12)), round_usd(raw)]
        # A rounded amount's neighbours: not rounded, though x * 1e9 may look whole.
        values += [math.nextafter(round_usd(raw), math.inf), math.nextafter(round_usd(raw), 0)]
        values.append(rng.randint(0, 10**12))
    for edge in (2.0**23, 2.0**24, 2.0**52 / 1e9, 2.0**53 / 1e9):
        below = above = edge
        for _ in range(50):
            below, above = math.nextafter(below, 0), math.nextafter(above, math.inf)
            values += [below, above]
    shortcut = 0
    for value in values:
        if not 0 <= value <= MAX_STORED_USD:
            continue
        expected = reference(value)
        got = round_usd(value)
        assert got == expected and math.copysign(1, got) == 1.0, (value, got, expected)
        assert type(got) is float
        shortcut += float(value) == expected
    assert shortcut > 20000  # the already-rounded values were met, and often
    # Everywhere else round_usd is used too: negatives, beyond the stored bound,
    # the float's ends, inf and nan.
    others = [-v for v in values if v != 0] + [1e15, 1e20, 1e299, 1.7e308, 2.0**63 + 0.5]
    for value in others + [-x for x in (1e15, 1e20, 1e299, 1.7e308)]:
        expected, got = reference(value), round_usd(value)
        assert got == expected and type(got) is float, (value, got, expected)
        assert math.copysign(1, got) == math.copysign(1, expected)
    assert round_usd(math.inf) == math.inf and round_usd(-math.inf) == -math.inf
    assert math.isnan(round_usd(math.nan))
