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
