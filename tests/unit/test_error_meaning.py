"""One meaning per error class: a malformed request offered to the store is bad
input (InvalidEntryError, also a ValueError), a malformed answer read back from the
store is corrupt stored data (CorruptRowError). Both stay CheckpointErrors, which
callers and older tests catch."""

from __future__ import annotations

from typing import Any

import pytest

from otel_budget.errors import CheckpointError, CorruptRowError, InvalidEntryError
from otel_budget.leases import LEASE_TYPE, check_lease_request, lease_answer, lease_row_name
from otel_budget.stores.memory import MemoryStore

W = "2026-11-25"


def _request(**changes: Any) -> dict[str, Any]:
    out = {"budget": "fleet", "window": W, "cap_usd": 1.0, "writer_id": "w",
           "lease_id": "a", "new": True, "used_usd": 0.0, "want_usd": 0.1,
           "seen_usd": 0.0, "ttl_s": 10.0, "min_chunk_usd": 0.0, "share": 0.5}
    out.update(changes)
    return out


def test_a_malformed_lease_request_is_bad_input_and_changes_nothing() -> None:
    assert check_lease_request(_request()) == _request()
    with pytest.raises(InvalidEntryError, match="used_usd") as raised:
        check_lease_request(_request(used_usd=-1.0))
    assert isinstance(raised.value, ValueError) and isinstance(raised.value, CheckpointError)
    assert not isinstance(raised.value, CorruptRowError)
    with MemoryStore() as store:
        with pytest.raises(InvalidEntryError, match="ttl_s"):
            store.lease_acquire(_request(ttl_s=0.0))
        assert store.get(LEASE_TYPE, lease_row_name("fleet", W)) is None


@pytest.mark.parametrize("answer", [None, [1], "ok", {"granted_usd": 1.0}, {"ok": "yes"}])
def test_a_malformed_lease_answer_is_corrupt_stored_data(answer: Any) -> None:
    with pytest.raises(CorruptRowError, match="otel_budget_lease_acquire answered") as raised:
        lease_answer(answer, "otel_budget_lease_acquire")
    assert isinstance(raised.value, CheckpointError)
    assert not isinstance(raised.value, InvalidEntryError)
    assert lease_answer({"ok": True, "granted_usd": 2}, "x")["granted_usd"] == 2.0


# --- the stores' own raise sites ------------------------------------------------------------


def _writer_entry(**changes: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"date": W, "writer_id": "w", "instance_id": "i", "spend_usd": 1.0,
                           "seq": 1, "updated_at": "2026-11-25T10:00:00+00:00"}
    out.update(changes)
    return out


BAD_INPUT: dict[str, Any] = {
    "a day that is not one": lambda: MemoryStore().day_totals(["25 Nov"]),
    "days given as one string": lambda: MemoryStore().day_totals(W),
    "an entry carrying the store's mark": lambda: MemoryStore().merge_writer(
        _writer_entry(retired=True)),
    "a negative reap age": lambda: MemoryStore().reap_stale(-1.0),
    "a reap limit of zero": lambda: MemoryStore().reap_stale(1.0, limit=0),
}


@pytest.mark.parametrize("call", BAD_INPUT.values(), ids=list(BAD_INPUT))
def test_bad_input_to_a_store_is_an_invalid_entry(call: Any) -> None:
    with pytest.raises(InvalidEntryError):
        call()


def _corrupt_answers() -> dict[str, Any]:
    from otel_budget.stores import sqlfunctions
    from otel_budget.stores.entries import summary_add, summary_row_name, totals_from_json
    from otel_budget.stores.shares import check_spend_answer

    summary = {"date": W, "spend_nanos": 0, "writers": 0, "updated_at": None,
               "by_budget_nanos": {}, "budget_writers": {}}
    return {
        "day totals not an object": lambda: totals_from_json(W, []),
        "day totals missing a field": lambda: totals_from_json(W, {"total_usd": 1}),
        "a merge answer not an object": lambda: sqlfunctions.merge_result("ok", W),
        "day totals answer a list": lambda: sqlfunctions.days_totals([W], []),
        "entries answer not a list": lambda: sqlfunctions.entry_list({"a": 1}),
        "reap answer not names": lambda: sqlfunctions.entry_list_of_names([1]),
        "a row not an object": lambda: sqlfunctions.as_object([], patch_type="t", name="n"),
        "a spend answer not an object": lambda: check_spend_answer([], [W], ["daily"]),
        "a summary without the retired writer": lambda: summary_add(
            summary, sub=_writer_entry() | {"name": summary_row_name(W)}),
    }


@pytest.mark.parametrize("name", list(_corrupt_answers()))
def test_a_malformed_answer_of_a_store_is_a_corrupt_row(name: str) -> None:
    with pytest.raises(CorruptRowError):
        _corrupt_answers()[name]()
