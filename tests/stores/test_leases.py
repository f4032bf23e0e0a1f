"""Budget leases: the pure arithmetic (no DB), the store steps on every store, and
fleet budgets through BudgetMeter (several meters on one store)."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest

from otel_budget import Budget, BudgetConfig, BudgetMeter
from otel_budget.errors import BudgetExceeded, CheckpointError, ConfigError, StoreError
from otel_budget.leases import (
    DEFAULT_SURPLUS_SHARE,
    LEASE_TYPE,
    FleetLease,
    apply_acquire,
    apply_release,
    empty_lease_doc,
    expire_leases,
    grant_size,
    lease_row_name,
    lease_totals,
    surplus_room,
)
from otel_budget.stores.memory import MemoryStore
from tests.support.helpers import StoreFactory

W = "2026-11-25"


def req(lease_id: str, *, used: float = 0.0, want: float = 0.0, seen: float = 0.0,
        new: bool = True, cap: float = 1.0, ttl: float = 10.0, writer: str = "w",
        share: float = 0.5, min_chunk: float = 0.0, budget: str = "fleet",
        surplus_share: float | None = None) -> dict[str, Any]:
    out = {"budget": budget, "window": W, "cap_usd": cap, "writer_id": writer,
           "lease_id": lease_id, "new": new, "used_usd": used, "want_usd": want,
           "seen_usd": seen, "ttl_s": ttl, "min_chunk_usd": min_chunk, "share": share}
    if surplus_share is not None:  # older clients send none: their chunks are unbounded
        out["surplus_share"] = surplus_share
    return out


def invariant(doc: dict[str, Any]) -> bool:
    return bool(lease_totals(doc)["accounted_usd"] <= float(doc["cap_usd"]) + 1e-9)


# --- pure arithmetic ------------------------------------------------------------------


def test_grant_size_is_a_share_of_what_is_free_per_active_lease() -> None:
    assert grant_size(avail=1.0, want=0.05, active=1, share=0.5, min_chunk=0.0,
                      contended=False) == 0.5
    assert grant_size(avail=1.0, want=0.05, active=4, share=0.5, min_chunk=0.0,
                      contended=False) == 0.125
    # near the cap the chunk shrinks to the call itself
    assert grant_size(avail=0.06, want=0.05, active=4, share=0.5, min_chunk=0.0,
                      contended=False) == 0.05
    assert grant_size(avail=1.0, want=0.05, active=4, share=0.5, min_chunk=0.3,
                      contended=False) == 0.3
    assert grant_size(avail=1.0, want=0.05, active=4, share=0.5, min_chunk=0.0,
                      contended=True) == 0.05
    assert grant_size(avail=0.04, want=0.05, active=1, share=0.5, min_chunk=0.0,
                      contended=False) is None
    assert grant_size(avail=0.05, want=0.05, active=1, share=0.5, min_chunk=0.0,
                      contended=False) == 0.05  # landing on the cap is allowed


def test_the_surplus_room_bounds_the_chunk_but_never_the_call() -> None:
    # split as if 4 writers shared it: the first of the day must not take it all
    assert surplus_room(cap=100.0, surplus_share=0.025, active=1, others_surplus=0.0) == 0.625
    assert surplus_room(cap=100.0, surplus_share=0.025, active=10,
                        others_surplus=0.0) == 0.25
    assert surplus_room(cap=100.0, surplus_share=0.025, active=4,
                        others_surplus=2.0) == pytest.approx(0.5)
    assert surplus_room(cap=100.0, surplus_share=0.025, active=2, others_surplus=3.0) == 0.0
    assert grant_size(avail=100.0, want=0.05, active=1, share=0.5, min_chunk=0.0,
                      contended=False, surplus_room=2.5) == 2.5
    # the call itself is always granted when it fits: the bound is on the surplus
    assert grant_size(avail=100.0, want=0.05, active=1, share=0.5, min_chunk=0.0,
                      contended=False, surplus_room=0.0) == 0.05
    assert grant_size(avail=100.0, want=5.0, active=1, share=0.5, min_chunk=0.0,
                      contended=False, surplus_room=2.5) == 5.0


def test_the_fleets_surplus_stays_under_its_share_of_the_cap() -> None:
    """8 writers topping up in random order, each asking again when its lease cannot
    cover a call: at every step the surplus all leases hold (granted beyond what
    their writers drew) stays under surplus_share * cap."""
    import random

    rng = random.Random(5)
    doc: dict[str, Any] | None = None
    used = dict.fromkeys(range(8), 0.0)
    granted = dict.fromkeys(range(8), 0.0)
    now = 1000.0
    refused_at = None
    for _ in range(20000):
        i = rng.randrange(8)
        want = round(rng.uniform(0.01, 0.05), 6)
        if granted[i] - used[i] >= want:
            used[i] += want  # drawn in memory, reported at the next ask
            continue
        doc, answer = apply_acquire(doc, req(f"l{i}", used=used[i], want=want, cap=100.0,
                                             new=granted[i] == 0.0, writer=f"w{i}",
                                             surplus_share=0.025), now)
        now += 0.001
        if not answer["ok"]:
            refused_at = sum(used.values())
            break
        granted[i] = answer["granted_usd"]
        used[i] += want  # the reservation that asked draws its call
        surplus = sum(granted[k] - used[k] for k in granted)
        assert surplus <= 0.025 * 100.0 + 1e-9
        assert invariant(doc)
    # so the first refusal comes once the writers drew all but that surplus and a call
    assert refused_at is not None and refused_at >= 100.0 - 2.5 - 0.05


def test_acquire_grants_within_the_cap_and_refuses_beyond() -> None:
    doc, a = apply_acquire(None, req("a", want=0.05), now=100.0)
    assert a["ok"] and a["granted_usd"] == 0.5 and invariant(doc)
    doc, b = apply_acquire(doc, req("b", want=0.05, writer="w2"), now=100.0)
    # 0.5 free, two active leases: a quarter of it
    assert b["ok"] and b["granted_usd"] == 0.125 and invariant(doc)
    doc, c = apply_acquire(doc, req("c", want=0.4, writer="w3"), now=100.0)
    assert not c["ok"] and "c" not in doc["leases"]  # only 0.375 is free
    doc, c = apply_acquire(doc, req("c", want=0.3, writer="w3"), now=100.0)
    assert c["ok"] and c["granted_usd"] == 0.3 and invariant(doc)
    assert lease_totals(doc)["free_usd"] == 0.075
    doc, d = apply_acquire(doc, req("d", want=0.1, writer="w4"), now=100.0)
    assert not d["ok"] and d["granted_usd"] == 0.0 and d["contended"]
    assert "d" not in doc["leases"] and invariant(doc)


def test_contention_makes_holders_give_back_their_unused_lease() -> None:
    doc, _ = apply_acquire(None, req("a", want=0.05), now=0.0)          # 0.5
    doc, _ = apply_acquire(doc, req("b", want=0.5, writer="w2"), now=0.0)  # 0.5
    doc, refused = apply_acquire(doc, req("c", want=0.2, writer="w3"), now=0.0)
    assert not refused["ok"]
    # a renews having used 0.1 of its 0.5: gives back 0.4
    doc, renewed = apply_acquire(doc, req("a", used=0.1, new=False), now=1.0)
    assert renewed["granted_usd"] == 0.1 and renewed["contended"]
    doc, again = apply_acquire(doc, req("c", want=0.2, writer="w3"), now=1.0)
    assert again["ok"] and again["granted_usd"] == 0.2  # contended: exactly the want
    assert invariant(doc)


def test_expired_lease_settles_at_its_whole_grant_until_reported_late() -> None:
    doc, _ = apply_acquire(None, req("a", want=0.05, ttl=5.0), now=0.0)
    doc, _ = apply_acquire(doc, req("a", used=0.2, new=False, ttl=5.0), now=1.0)
    assert doc["leases"]["a"] == {"writer_id": "w", "granted_usd": 0.5, "used_usd": 0.2,
                                  "expires_at": 6.0}
    assert expire_leases(dict(doc, leases=dict(doc["leases"])), 5.9) == []
    # The writer may have drawn all of its grant since it reported 0.2: expiry
    # settles 0.5, not 0.2, so no other writer is granted what it may have spent.
    doc, b = apply_acquire(doc, req("b", want=0.05, writer="w2"), now=6.0)
    assert "a" not in doc["leases"] and doc["settled_usd"] == 0.5
    assert doc["ended"] == {"a": {"held_usd": 0.5, "expired_at": 6.0}}
    assert b["ok"] and b["granted_usd"] == 0.25  # half of the 0.5 left
    assert invariant(doc)
    # Its owner comes back having used 0.3 (open holds at their maximum): the 0.2 it
    # did not use returns, once; it learns its lease ended.
    doc, late = apply_acquire(doc, req("a", used=0.3, new=False), now=7.0)
    assert late["expired"] and not late["ok"] and "a" not in doc["leases"]
    assert doc["settled_usd"] == 0.3 and doc["ended"] == {}
    doc, again = apply_acquire(doc, req("a", used=0.0, new=False), now=7.5)
    assert again["expired"] and doc["settled_usd"] == 0.3
    # a release after expiry is a late report too
    doc, _ = apply_acquire(doc, req("c", want=0.05, writer="w3", ttl=1.0), now=8.0)
    c_grant = doc["leases"]["c"]["granted_usd"]
    doc, _ = apply_acquire(doc, req("b", used=0.25, new=False, ttl=10.0), now=9.5)
    assert doc["settled_usd"] == pytest.approx(0.3 + c_grant)
    released, answer = apply_release(doc, {"lease_id": "c", "used_usd": 0.01}, now=9.6)
    assert released is not None and answer["expired"]
    assert released["settled_usd"] == pytest.approx(0.31) and "c" not in released["ended"]
    assert invariant(released)


def test_ended_leases_are_kept_an_hour_and_64_at_most() -> None:
    doc = empty_lease_doc("fleet", W, 1000.0)
    for i in range(70):
        doc, _ = apply_acquire(doc, req(f"l{i:02d}", want=1.0, cap=1000.0, ttl=1.0, share=0.001),
                               now=float(i))
    doc, _ = apply_acquire(doc, req("x", cap=1000.0, ttl=1.0), now=100.0)
    assert sorted(doc["ended"]) == [f"l{i:02d}" for i in range(6, 70)]
    settled = doc["settled_usd"]
    # a late report of a lease no longer kept: its whole grant stays settled
    doc, late = apply_acquire(doc, req("l00", cap=1000.0, new=False), now=101.0)
    assert late["expired"] and doc["settled_usd"] == settled
    doc, _ = apply_acquire(doc, req("y", cap=1000.0, ttl=1.0), now=69.0 + 1.0 + 3600.5)
    assert doc["ended"] == {}
    # a hand-edited ended entry is dropped, not an error: it only loses its refund
    doc["ended"] = {"bad": {"held_usd": "x"}, "l69": [1]}
    doc, ok = apply_acquire(doc, req("z", want=0.5, cap=1000.0), now=5000.0)
    assert ok["ok"] and doc["ended"] == {}


def test_release_settles_exact_use_and_returns_the_rest() -> None:
    doc, _ = apply_acquire(None, req("a", want=0.05), now=0.0)
    new_doc, answer = apply_release(doc, {"lease_id": "a", "used_usd": 0.123}, now=1.0)
    assert new_doc is not None
    assert answer["ok"] and not answer["expired"]
    assert new_doc["settled_usd"] == 0.123 and new_doc["leases"] == {}
    assert lease_totals(new_doc)["free_usd"] == 0.877
    again, second = apply_release(new_doc, {"lease_id": "a", "used_usd": 0.123}, now=1.0)
    assert second["expired"] and again is not None and again["settled_usd"] == 0.123


def test_spend_outside_the_leases_counts_against_the_cap() -> None:
    # The fleet spent 0.7 before leases existed (its checkpoints): the first
    # writer's view says so, and only 0.3 is left to lease.
    doc, a = apply_acquire(None, req("a", want=0.05, seen=0.7), now=0.0)
    assert doc["external_usd"] == 0.7 and a["granted_usd"] == 0.15
    # a later, staler view never lowers it
    doc, _ = apply_acquire(doc, req("b", want=0.05, seen=0.1, writer="w2"), now=0.0)
    assert doc["external_usd"] == 0.7 and invariant(doc)
    doc, c = apply_acquire(doc, req("c", want=0.2, writer="w3"), now=0.0)
    assert not c["ok"]


def test_spend_drawn_from_leases_is_not_counted_twice() -> None:
    doc, _ = apply_acquire(None, req("a", want=0.05), now=0.0)  # granted 0.5
    # a used 0.3; its view (own 0.3 + nothing else) is all inside the leases
    doc, renewed = apply_acquire(doc, req("a", used=0.3, seen=0.3, new=False), now=1.0)
    assert doc["external_usd"] == 0.0 and renewed["granted_usd"] == 0.5
    released, _ = apply_release(doc, {"lease_id": "a", "used_usd": 0.3}, now=2.0)
    assert released is not None
    doc, b = apply_acquire(released, req("b", want=0.05, seen=0.3, writer="w2"), now=2.0)
    assert doc["external_usd"] == 0.0 and b["granted_usd"] == 0.35


def test_a_writer_past_its_lease_is_accounted_at_its_use() -> None:
    doc, _ = apply_acquire(None, req("a", want=0.05, cap=1.0), now=0.0)   # 0.5
    doc, renewed = apply_acquire(doc, req("a", used=0.6, new=False), now=1.0)
    assert renewed["granted_usd"] == 0.6 and invariant(doc)
    doc, b = apply_acquire(doc, req("b", want=0.45, writer="w2"), now=1.0)
    assert not b["ok"]
    doc, b = apply_acquire(doc, req("b", want=0.4, writer="w2"), now=1.0)
    assert b["ok"] and invariant(doc)


def test_random_sequences_keep_the_invariant() -> None:
    import random

    rng = random.Random(7)
    doc = empty_lease_doc("fleet", W, 1.0)
    used: dict[str, float] = {}
    now = 0.0
    for step in range(3000):
        now += rng.random() * 0.3
        lid = f"l{rng.randrange(6)}"
        if lid in used and rng.random() < 0.1:
            new_doc, _ = apply_release(doc, {"lease_id": lid, "used_usd": used.pop(lid)}, now)
            assert new_doc is not None
            doc = new_doc
            continue
        granted = doc["leases"].get(lid, {}).get("granted_usd", 0.0)
        u = used.get(lid, 0.0)
        if lid in used and lid not in doc["leases"]:
            used.pop(lid)  # expired
            continue
        u = min(granted, u + rng.random() * 0.05)  # draws stay inside the lease
        doc, answer = apply_acquire(doc, req(lid, used=u, want=rng.choice([0.0, 0.01, 0.05]),
                                             new=lid not in used, ttl=2.0), now)
        if answer["granted_usd"] or lid in doc["leases"]:
            used[lid] = u
        assert invariant(doc), step


# --- the store steps, on every store ---------------------------------------------------


def test_store_lease_steps(store: Any) -> None:
    a = store.lease_acquire(req("a", want=0.05, ttl=0.5))
    assert a["ok"] and a["granted_usd"] == pytest.approx(0.5) and a["expires_in_s"] == 0.5
    b = store.lease_acquire(req("b", want=0.05, writer="w2", ttl=0.5))
    assert b["ok"] and b["granted_usd"] == pytest.approx(0.125) and b["active"] == 2
    refused = store.lease_acquire(req("c", want=0.9, writer="w3", ttl=0.5))
    assert not refused["ok"] and refused["contended"]
    released = store.lease_release({"budget": "fleet", "window": W, "writer_id": "w2",
                                    "lease_id": "b", "used_usd": 0.1})
    assert released["ok"] and not released["expired"]
    assert released["settled_usd"] == pytest.approx(0.1)
    row = store.get(LEASE_TYPE, lease_row_name("fleet", W))
    assert row is not None and set(row["leases"]) == {"a"}
    renewed = store.lease_acquire(req("a", used=0.2, new=False, ttl=0.5))
    assert renewed["granted_usd"] == pytest.approx(0.2)  # contended: gives back
    e = store.lease_acquire(req("e", want=0.05, writer="w5", ttl=0.5))
    assert e["ok"] and e["granted_usd"] >= 0.05
    time.sleep(0.6)
    later = store.lease_acquire(req("d", want=0.05, writer="w4", ttl=30.0))  # outlives the test
    # a expired at its grant (0.2), e at its grant: it may have drawn all of it
    assert later["ok"] and later["settled_usd"] == pytest.approx(0.3 + e["granted_usd"])
    expired = store.lease_acquire(req("a", used=0.2, new=False, ttl=0.5))
    assert expired["expired"] and not expired["ok"]
    assert expired["settled_usd"] == pytest.approx(0.3 + e["granted_usd"])
    # e's owner reports it late, having used 0.01: the rest comes back, once
    for _ in range(2):
        late = store.lease_release({"budget": "fleet", "window": W, "writer_id": "w5",
                                    "lease_id": "e", "used_usd": 0.01})
        assert late["expired"] and late["settled_usd"] == pytest.approx(0.31)
    row = store.get(LEASE_TYPE, lease_row_name("fleet", W))
    assert row is not None and row["ended"] == {}


def test_store_lease_grants_bound_the_fleets_surplus(store: Any) -> None:
    """The SQL functions and the Python reference agree on the surplus bound."""
    a = store.lease_acquire(req("a", want=0.05, cap=1000.0, surplus_share=0.04))
    assert a["ok"] and a["granted_usd"] == pytest.approx(10.0)  # 40 / 4, not 0.5 * 1000
    b = store.lease_acquire(req("b", want=0.05, cap=1000.0, writer="w2", surplus_share=0.04))
    assert b["ok"] and b["granted_usd"] == pytest.approx(10.0)
    c = store.lease_acquire(req("c", want=0.05, cap=1000.0, writer="w3", surplus_share=0.04,
                                used=25.0))  # used beyond its grant: reported, counted
    assert c["ok"] and c["granted_usd"] == pytest.approx(35.0)
    d = store.lease_acquire(req("d", want=0.05, cap=1000.0, writer="w4", surplus_share=0.04))
    assert d["ok"] and d["granted_usd"] == pytest.approx(10.0)
    e = store.lease_acquire(req("e", want=0.05, cap=1000.0, writer="w5", surplus_share=0.04))
    assert e["ok"] and e["granted_usd"] == pytest.approx(0.05)  # the room is held
    # a reports 9.0 used: 5 leases now, so a's fair part is 40 / 5
    a2 = store.lease_acquire(req("a", used=9.0, want=0.05, cap=1000.0, new=False,
                                 surplus_share=0.04))
    assert a2["ok"] and a2["granted_usd"] == pytest.approx(9.0 + 8.0)
    # a renewal trims the grant to what the writer keeps
    a3 = store.lease_acquire(req("a", used=9.5, cap=1000.0, new=False, surplus_share=0.04)
                             | {"keep_usd": 10.0})
    assert a3["ok"] and a3["granted_usd"] == pytest.approx(10.0)
    old = store.lease_acquire(req("f", want=0.05, cap=1000.0, writer="w6"))
    assert old["ok"] and old["granted_usd"] > 0.05  # an older client: unbounded, as before
    with pytest.raises(CheckpointError, match="surplus_share"):
        store.lease_acquire(req("g", want=0.05, cap=1000.0, surplus_share=1.5))
    with pytest.raises(CheckpointError, match="keep_usd"):
        store.lease_acquire(req("a", used=9.5, cap=1000.0, new=False) | {"keep_usd": -1})


class _WatchedStore(MemoryStore):
    """A real MemoryStore that keeps the lease requests it was sent; while it answers
    one, `during` (if set, once) runs first: a reservation on another thread drawing
    on the lease meanwhile."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[dict[str, Any]] = []
        self.during: Any = None

    def lease_acquire(self, request: dict[str, Any]) -> dict[str, Any]:
        self.sent.append(dict(request))
        during, self.during = self.during, None
        if during is not None:
            during()
        return super().lease_acquire(request)


def _lone_lease(store: MemoryStore, writer: str, ttl_s: float,
                monotonic: Any = time.monotonic) -> FleetLease:
    return FleetLease(budget="fleet", cap_usd=1.0, store=store, writer_id=lambda: writer,
                      window_of=lambda: W, seen_of=lambda: 0.0, ttl_s=ttl_s, idle_s=1e9,
                      surplus_share=None, monotonic=monotonic)


def test_a_lease_past_its_time_here_is_reported_by_its_id() -> None:
    """A writer whose round came late (a busy host) asks for its lease by its id, with
    what it drew since its last report; starting a new lease instead left that draw
    unreported, and the store settled the old lease without it (the fleet passed a
    per-customer cap by $0.006 in CI)."""
    store = _WatchedStore()
    now = [0.0]
    lease = _lone_lease(store, "a", ttl_s=10.0, monotonic=lambda: now[0])
    assert lease.acquire(0.1) and lease.remaining() == pytest.approx(0.5)
    lid = store.sent[-1]["lease_id"]
    draw = lease.try_draw(0.1)
    assert isinstance(draw, object) and draw not in (None, False)
    lease.close_draw(draw, 0.08)  # type: ignore[arg-type]
    now[0] = 9.5  # past 0.9 of the TTL here; the store's clock has not moved
    assert lease.try_draw(0.1) is None  # only the store can tell now
    assert lease.acquire(0.1)
    assert {k: store.sent[-1][k] for k in ("lease_id", "new", "used_usd")} == {
        "lease_id": lid, "new": False, "used_usd": 0.08}
    assert lease.try_draw(0.1) not in (None, False)


def test_a_lease_expired_at_the_store_counts_what_its_writer_may_have_drawn() -> None:
    store = _WatchedStore()
    now = [0.0]  # a's own clock: its lease stays valid here until the test moves it
    a = _lone_lease(store, "a", ttl_s=0.3, monotonic=lambda: now[0])
    assert a.acquire(0.1)
    grant = a.remaining()
    draw = a.try_draw(0.1)
    assert draw not in (None, False)
    a.close_draw(draw, 0.1)  # type: ignore[arg-type]
    time.sleep(0.35)  # a's round never came: its lease expired at the store
    now[0] = 1.0
    b = _lone_lease(store, "b", ttl_s=10.0)
    assert b.acquire(0.05)
    row = store.get(LEASE_TYPE, lease_row_name("fleet", W))
    assert row is not None and row["settled_usd"] == pytest.approx(grant)  # not 0
    assert invariant(row)
    # a comes back: its late report gives back what it did not draw, and it is
    # granted a new lease
    assert a.acquire(0.1)
    assert [r["new"] for r in store.sent if r["writer_id"] == "a"] == [True, False, True]
    row = store.get(LEASE_TYPE, lease_row_name("fleet", W))
    assert row is not None and row["settled_usd"] == pytest.approx(0.1) and row["ended"] == {}
    assert invariant(row)


def test_what_is_drawn_while_a_request_is_on_its_way_stays_granted() -> None:
    """A renewal (or a prefetch) on a contended pool used to take the grant back to
    the use it reported, while another thread drew on the lease: those draws were
    counted nowhere, and the pool granted them again. (Draws of 0.1 leave the lease
    far from low: no background prefetch runs beside the test's requests.)"""
    store = _WatchedStore()
    a = _lone_lease(store, "a", ttl_s=10.0)
    b = _lone_lease(store, "b", ttl_s=10.0)

    def held_by_a() -> float:
        row = store.get(LEASE_TYPE, lease_row_name("fleet", W))
        assert row is not None and invariant(row)
        (entry,) = [e for e in row["leases"].values() if e["writer_id"] == "a"]
        return max(float(entry["granted_usd"]), float(entry["used_usd"]))

    assert a.acquire(0.1) and a.remaining() == pytest.approx(0.5)
    assert not b.acquire(0.6)  # refused: the pool is contended now
    drawn: list[Any] = []
    store.during = lambda: drawn.append(a.try_draw(0.1))
    assert a.acquire(0.0)  # the renewal that gives back what is not in use
    assert drawn[-1] not in (None, False)
    assert held_by_a() >= 0.1 - 1e-9  # not the 0 it reported
    assert b.acquire(0.4)  # contended: exactly what b asks
    # a asks for more than the pool has, drawing 0.1 more meanwhile: refused, and
    # the grant stays over both draws
    store.during = lambda: drawn.append(a.try_draw(0.1))
    assert not a.acquire(0.6)
    assert drawn[-1] not in (None, False)
    assert held_by_a() >= 0.2 - 1e-9
    # b's 0.4 and a's 0.5 leave 0.1: what a drew is not granted again
    assert not b.acquire(0.55)


def test_a_floor_never_raises_a_grant_past_what_it_was(store: Any) -> None:
    a = store.lease_acquire(req("a", want=0.05))
    assert a["granted_usd"] == pytest.approx(0.5)
    refused = store.lease_acquire(req("b", want=0.9, writer="w2"))
    assert not refused["ok"] and refused["contended"]
    kept = store.lease_acquire(req("a", used=0.1, new=False) | {"floor_usd": 0.3})
    assert kept["granted_usd"] == pytest.approx(0.3)  # contended: back to the floor, not 0.1
    capped = store.lease_acquire(req("a", used=0.1, new=False) | {"floor_usd": 5.0})
    assert capped["granted_usd"] == pytest.approx(0.3)  # never above what it was
    with pytest.raises(CheckpointError, match="floor_usd"):
        store.lease_acquire(req("a", used=0.1, new=False) | {"floor_usd": -1})


def test_a_lease_granted_before_the_others_joined_gives_its_surplus_back() -> None:
    store = MemoryStore()
    now = [0.0]

    def lease(i: int) -> FleetLease:
        return FleetLease(budget="fleet", cap_usd=1000.0, store=store,
                          writer_id=lambda: f"w{i}", window_of=lambda: W,
                          seen_of=lambda: 0.0, ttl_s=60.0, idle_s=1e9,
                          monotonic=lambda: now[0])

    leases = [lease(i) for i in range(10)]
    for each in leases:
        assert each.acquire(0.05)
    first = leases[0]
    # granted while it was alone: a quarter of the $25 room (2.5% of the cap)
    assert first.remaining() == pytest.approx(6.25)
    assert leases[-1].remaining() == pytest.approx(0.05)  # the room was taken
    now[0] = 25.0  # a third of the TTL later: a renewal is due
    first.on_round(1.0)
    # 10 leases now share the room: it keeps its tenth, the store has the rest back
    assert first.remaining() == pytest.approx(2.5)
    row = store.get(LEASE_TYPE, lease_row_name("fleet", W))
    assert row is not None and row["leases"][first._lease_id]["granted_usd"] == pytest.approx(2.5)


def test_store_lease_requests_are_checked_before_io(store: Any) -> None:
    with pytest.raises(CheckpointError, match="used_usd"):
        store.lease_acquire(req("a", used=-1.0))
    with pytest.raises(CheckpointError, match="ttl_s"):
        store.lease_acquire(req("a", ttl=0.0))
    with pytest.raises(CheckpointError, match="lease_id"):
        store.lease_release({"budget": "fleet", "window": W, "writer_id": "w",
                             "lease_id": "", "used_usd": 0.0})
    assert store.get(LEASE_TYPE, lease_row_name("fleet", W)) is None


def test_store_lease_grants_race_without_overshoot(store_factory: StoreFactory) -> None:
    """Threads, each with its own store handle, grabbing $0.05 chunks of a $1 pool."""
    granted: list[float] = []
    lock = threading.Lock()

    def worker(i: int) -> None:
        store: Any = store_factory()
        for j in range(12):
            answer = store.lease_acquire(req(f"l{i}-{j}", want=0.05, writer=f"w{i}",
                                             cap=1.0, share=0.01))
            if answer["ok"]:
                with lock:
                    granted.append(answer["granted_usd"])

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sum(granted) <= 1.0 + 1e-9
    assert sum(granted) == pytest.approx(1.0)  # 48 asks for 0.05: the pool is used up


# --- fleet budgets through BudgetMeter ------------------------------------------------


def fleet_config(cap: float = 1.0, **kw: Any) -> BudgetConfig:
    return BudgetConfig(budgets=(Budget("fleet", cap, hard=True, enforce="fleet"),),
                        collect_interval_s=kw.pop("collect_interval_s", 3600.0),
                        lease_ttl_s=kw.pop("lease_ttl_s", 5.0), **kw)


def test_meters_sharing_a_store_hold_the_cap_together() -> None:
    store = MemoryStore()
    meters = [BudgetMeter(fleet_config(instance_id=f"r{i}"), store=store).start()
              for i in range(4)]
    spent = 0.0
    try:
        for turn in range(200):
            meter = meters[turn % 4]
            try:
                with meter.reserve(0.05) as r:
                    r.settle(0.03)
                    spent += 0.03
            except BudgetExceeded as exc:
                assert exc.budget == "fleet"
        # process-mode meters would have spent 4 x $1; fleet: at most the cap
        assert spent <= 1.0 + 1e-9
        window = meters[0].budgets()[0]["window"]
        for meter in meters:
            meter.shutdown()
        # every lease came back at shutdown, settled at its exact use
        row = store.get(LEASE_TYPE, lease_row_name("fleet", window))
        assert row is not None and row["leases"] == {}
        assert row["settled_usd"] + row["external_usd"] == pytest.approx(spent)
        # so the rest is usable by the next writer, down to less than one call
        with BudgetMeter(fleet_config(instance_id="late"), store=store) as late:
            while True:
                try:
                    late.reserve(0.05).settle(0.05)
                    spent += 0.05
                except BudgetExceeded:
                    break
        assert spent <= 1.0 + 1e-9 and 1.0 - spent < 0.05
    finally:
        for meter in meters:
            meter.shutdown()


def test_budget_dict_and_health_show_the_lease() -> None:
    store = MemoryStore()
    with BudgetMeter(fleet_config(cap=100.0, instance_id="a"), store=store) as meter:
        r = meter.reserve(0.05)
        row = meter.budgets()[0]
        # the first chunk: a quarter of the fleet's surplus room, not half the cap
        chunk = DEFAULT_SURPLUS_SHARE * 100.0 / 4
        assert row["enforce"] == "fleet" and row["leased_usd"] == pytest.approx(chunk)
        lease = row["lease"]
        assert lease["lease_used_usd"] == pytest.approx(0.05)
        assert lease["lease_round_trips"] >= 1 and lease["lease_reservations"] == 1
        assert meter.health()["budgets"][0]["leased_usd"] == pytest.approx(chunk)
        r.settle(0.01)
        assert meter.budgets()[0]["lease"]["lease_used_usd"] == pytest.approx(0.01)
        assert meter.lease_stats()["reservations"] == 1


def test_process_mode_never_touches_leases() -> None:
    store = MemoryStore()
    config = BudgetConfig(budgets=(Budget("p", 1.0, hard=True, enforce="process"),),
                          collect_interval_s=3600.0)
    with BudgetMeter(config, store=store) as meter:
        meter.reserve(0.5).settle(0.5)
        assert "leased_usd" not in meter.budgets()[0]
    assert not any(kind == LEASE_TYPE for kind, _ in store._rows)


def test_fleet_budget_needs_a_store_with_leases() -> None:
    class NoLeases:
        def __getattr__(self, name: str) -> Any:
            return getattr(MemoryStore(), name) if name != "lease_acquire" else None

    with pytest.raises(ConfigError, match="leases"):
        BudgetMeter(fleet_config(), store=NoLeases())


def test_spend_recorded_before_leases_counts() -> None:
    store = MemoryStore()
    with BudgetMeter(fleet_config(instance_id="old"), store=store) as old:
        old.record(0.9)  # no reservation: never drawn from a lease
    with BudgetMeter(fleet_config(instance_id="new"), store=store) as meter:
        meter.reserve(0.05).settle(0.05)
        with pytest.raises(BudgetExceeded):
            meter.reserve(0.06)


def test_a_store_outage_fails_safe() -> None:
    store = MemoryStore()
    with BudgetMeter(fleet_config(cap=100.0, instance_id="a"), store=store) as meter:
        meter.reserve(0.05).settle(0.05)  # holds a 0.625 lease
        store._closed = True
        meter.reserve(0.5).settle(0.5)  # inside the lease: no store needed
        with pytest.raises(BudgetExceeded, match="cannot be reached"):
            meter.reserve(1.0)
        store._closed = False


def test_the_default_hard_budget_holds_across_meters_on_every_store(
        store_factory: StoreFactory) -> None:
    """`daily_cap_usd` (hard, fleet by default) on memory, SQLite, PostgreSQL and
    Supabase: a meter whose store is gone fails closed; two meters, each with its
    own store handle, never pass the cap together and use it down to less than a
    call."""
    first: Any = store_factory()
    shared = isinstance(first, MemoryStore)  # one process: one memory store
    config = BudgetConfig(daily_cap_usd=1.0, collect_interval_s=3600.0)
    assert config.all_budgets[0].enforce == "fleet"
    # Fails closed: a writer whose store is gone refuses instead of guessing.
    lost = first if shared else store_factory()
    with BudgetMeter(config.replace(instance_id="lost"), store=lost) as meter:
        if shared:
            first._closed = True
        else:
            lost.close()
        with pytest.raises(BudgetExceeded, match="cannot be reached"):
            meter.reserve(0.05)
        with pytest.raises(BudgetExceeded, match="cannot be reached"):
            meter.guard(0.05)
        if shared:
            first._closed = False
    stores = [first, first if shared else store_factory()]
    meters = [BudgetMeter(config.replace(instance_id=f"m{i}"), store=s).start()
              for i, s in enumerate(stores)]
    spent = 0.0
    try:
        refused = [False, False]
        turn = 0
        while not all(refused):
            i = turn % 2
            turn += 1
            try:
                with meters[i].reserve(0.05) as r:
                    r.settle(0.04)
                    spent += 0.04
            except BudgetExceeded as exc:
                assert exc.budget == "daily"
                refused[i] = True
        # a per-process cap would have let each meter spend $1
        assert spent <= 1.0 + 1e-9 and 1.0 - spent < 0.05 + 1e-9
    finally:
        for meter in meters:
            meter.shutdown(timeout=5.0)


class DownStore:
    """Fault injection (a test double): a real MemoryStore whose every call fails
    while `down`; counts the lease round trips that reach it (or fail)."""

    def __init__(self) -> None:
        self.inner, self.down, self.lease_calls = MemoryStore(), False, 0

    def __getattr__(self, name: str) -> Any:
        target = getattr(self.inner, name)
        if not callable(target) or name == "close":
            return target

        def call(*args: Any, **kwargs: Any) -> Any:
            if name.startswith("lease_"):
                self.lease_calls += 1
            if self.down:
                raise StoreError("store unreachable (injected)")
            return target(*args, **kwargs)
        return call


def test_after_a_store_failure_fleet_calls_are_refused_at_once_until_a_probe_sees_it(
        ) -> None:
    store = DownStore()
    # A timer that never fires on its own: the test runs the rounds (collect()).
    config = fleet_config(cap=100.0, instance_id="a", lease_ttl_s=600.0)
    with BudgetMeter(config, store=store) as meter:
        meter.reserve(0.05).settle(0.05)  # a 0.625 lease
        store.down = True
        before = store.lease_calls
        with pytest.raises(BudgetExceeded, match="cannot be reached"):
            meter.reserve(5.0)  # beyond the lease: one try, which fails
        assert store.lease_calls == before + 1
        for _ in range(50):  # every later call beyond the lease: refused without I/O
            with pytest.raises(BudgetExceeded, match="cannot be reached"):
                meter.reserve(5.0)
            with pytest.raises(BudgetExceeded, match="cannot be reached"):
                meter.guard(5.0)
        assert store.lease_calls == before + 1
        meter.reserve(0.5).settle(0.5)  # what the lease holds is still spendable
        assert store.lease_calls == before + 1
        meter.collect()  # a timer round probes the store: still down
        assert store.lease_calls == before + 2
        with pytest.raises(BudgetExceeded, match="cannot be reached"):
            meter.reserve(5.0)
        assert store.lease_calls == before + 2
        lease = meter.budgets()[0]["lease"]
        assert "unreachable" in str(lease["lease_error"]) and lease["lease_store_down"]
        store.down = False
        meter.collect()  # the probe sees the store again
        probed = store.lease_calls
        lease = meter.budgets()[0]["lease"]
        assert probed >= before + 3 and lease["lease_error"] is None
        assert not lease["lease_store_down"]
        meter.reserve(5.0).settle(5.0)  # granted again, through the store
        assert store.lease_calls > probed


def test_areserve_refusal_is_immediate_and_lease_io_is_off_the_loop() -> None:
    store = MemoryStore()
    calls: list[str] = []
    original = store.lease_acquire

    def slow_acquire(request: dict[str, Any]) -> dict[str, Any]:
        calls.append(threading.current_thread().name)
        time.sleep(0.05)
        return original(request)

    store.lease_acquire = slow_acquire  # type: ignore[method-assign]

    async def main() -> None:
        async with BudgetMeter(fleet_config(instance_id="a"), store=store) as meter:
            loop_thread = threading.current_thread().name
            async with meter.areserve(0.4) as r:
                r.settle(0.4)
            assert calls and loop_thread not in calls
            # the pool now has 0.6 left; ask for more than that
            with pytest.raises(BudgetExceeded):
                async with meter.areserve(0.7):
                    pass
            round_trips = len(calls)
            with pytest.raises(BudgetExceeded):
                async with meter.areserve(0.7):
                    pass
            assert len(calls) == round_trips, "known short: refused without a round trip"

    asyncio.run(main())


def test_a_new_window_starts_a_new_lease(clock: Any) -> None:
    store = MemoryStore()
    with BudgetMeter(fleet_config(instance_id="a"), store=store, clock=clock) as meter:
        meter.reserve(0.05).settle(0.05)
        first = meter.budgets()[0]["window"]
        clock.advance(days=1)
        meter.reserve(0.05).settle(0.02)
        second = meter.budgets()[0]["window"]
        assert first != second
        row = store.get(LEASE_TYPE, lease_row_name("fleet", second))
        assert row is not None and len(row["leases"]) == 1
        assert meter.budgets()[0]["lease"]["lease_used_usd"] == pytest.approx(0.02)


def test_500_tasks_through_areserve_never_pass_the_fleet_cap() -> None:
    store = MemoryStore()

    async def main() -> tuple[float, int]:
        async with BudgetMeter(fleet_config(cap=5.0, instance_id="a"), store=store) as m1, \
                BudgetMeter(fleet_config(cap=5.0, instance_id="b"), store=store) as m2:
            spent = 0.0
            refused = 0

            async def call(i: int) -> None:
                nonlocal spent, refused
                meter = m1 if i % 2 else m2
                try:
                    async with meter.areserve(0.05) as r:
                        await asyncio.sleep(0.001 * (i % 5))
                        r.settle(0.03)
                        spent += 0.03
                except BudgetExceeded:
                    refused += 1

            await asyncio.gather(*(call(i) for i in range(500)))
            return spent, refused

    spent, refused = asyncio.run(main())
    # 500 calls at once: holds of $0.05 fill the cap, so some are refused while
    # others are in flight; what they settled never passes it
    assert spent <= 5.0 + 1e-9 and refused > 0
    rows = [row for (kind, _), row in store._rows.items() if kind == LEASE_TYPE]
    assert len(rows) == 1 and rows[0]["leases"] == {}  # both gave their lease back
    assert rows[0]["settled_usd"] == pytest.approx(spent)


@pytest.mark.parametrize("role", ["anon", "authenticated"])
@pytest.mark.parametrize("function", ["otel_budget_lease_acquire", "otel_budget_lease_release"])
def test_lease_functions_refuse_anon_and_authenticated(pg_clean: str, role: str,
                                                       function: str) -> None:
    import psycopg

    with psycopg.connect(pg_clean) as conn:
        conn.execute(f"set role {role}")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(f"select public.{function}('{{}}'::jsonb)")


def test_lease_sql_refuses_a_malformed_request(pg_clean: str) -> None:
    import psycopg

    with psycopg.connect(pg_clean) as conn, pytest.raises(psycopg.Error) as caught:
        conn.execute("select public.otel_budget_lease_acquire("
                     "'{\"budget\": \"f\", \"window\": \"w\", \"writer_id\": \"x\", "
                     "\"lease_id\": \"l\", \"used_usd\": \"abc\"}'::jsonb)")
    assert caught.value.sqlstate == "OB001"


def test_lease_sql_expiry_matches_the_reference(pg_clean: str) -> None:
    """otel_budget_lease_locked (its `now` is a parameter) settles and keeps ended
    leases as leaserows.expire_leases does: the grant, the hour, the 64 latest, a
    malformed ended entry dropped."""
    import json

    import psycopg

    doc = empty_lease_doc("fleet", W, 1000.0)
    for i in range(70):
        doc["leases"][f"l{i:02d}"] = {"writer_id": "w", "granted_usd": 1.5 + i,
                                      "used_usd": 1.0 if i % 2 else 2.0 + i,
                                      "expires_at": float(i)}
    doc["leases"]["live"] = {"writer_id": "w", "granted_usd": 1.0, "used_usd": 0.0,
                             "expires_at": 5000.0}
    doc["ended"] = {"old": {"held_usd": 1.0, "expired_at": 1.0},
                    "kept": {"held_usd": 2.0, "expired_at": 4000.0},
                    "bad": {"held_usd": -1, "expired_at": 4000.0}}
    sizes = []
    for now in (69.5, 3650.0, 4100.0):
        expected = json.loads(json.dumps(doc))
        expire_leases(expected, now)
        sizes.append(len(expected["ended"]))
        with psycopg.connect(pg_clean) as conn:
            conn.execute("delete from public.quilt_patches where patch_type = %s", (LEASE_TYPE,))
            conn.execute("insert into public.quilt_patches (patch_type, name, content) "
                         "values (%s, 'lease_x', %s::jsonb)", (LEASE_TYPE, json.dumps(doc)))
            row = conn.execute("select public.otel_budget_lease_locked('lease_x', %s::numeric)",
                               (now,)).fetchone()
        assert row is not None
        got = row[0]
        assert got["ended"] == expected["ended"], now
        assert set(got["leases"]) == set(expected["leases"]) == {"live"} | {
            f"l{i:02d}" for i in range(70) if i > now}
        assert got["settled_usd"] == pytest.approx(expected["settled_usd"])
    assert sizes == [64, 21, 1]  # the 64 latest; the last hour's 20 and kept; kept


def test_an_idle_writer_gives_its_lease_back() -> None:
    from tests.support.helpers import wait_for

    store = MemoryStore()
    config = fleet_config(instance_id="a", collect_interval_s=0.05, lease_ttl_s=0.6)
    with BudgetMeter(config, store=store) as meter:
        meter.reserve(0.05).settle(0.01)
        window = meter.budgets()[0]["window"]
        assert meter.budgets()[0]["leased_usd"] > 0

        def returned() -> bool:
            row = store.get(LEASE_TYPE, lease_row_name("fleet", window))
            return row is not None and row["leases"] == {}

        assert wait_for(returned, timeout=5.0)  # idle for ttl/3: back to the pool
        row = store.get(LEASE_TYPE, lease_row_name("fleet", window))
        assert row is not None and row["settled_usd"] == pytest.approx(0.01)
        assert meter.budgets()[0]["leased_usd"] == 0.0


def test_a_busy_writer_keeps_its_lease_past_the_ttl() -> None:
    store = MemoryStore()
    config = fleet_config(instance_id="a", collect_interval_s=0.05, lease_ttl_s=0.6)
    with BudgetMeter(config, store=store) as meter:
        held = meter.reserve(0.05)  # an open hold: never idle
        time.sleep(1.5)  # well past the TTL: renewed at the store rounds
        window = meter.budgets()[0]["window"]
        row = store.get(LEASE_TYPE, lease_row_name("fleet", window))
        assert row is not None and len(row["leases"]) == 1
        assert row["settled_usd"] == 0.0
        held.settle(0.05)


def test_guard_on_a_fleet_budget_asks_for_lease() -> None:
    store = MemoryStore()
    with BudgetMeter(fleet_config(instance_id="a"), store=store) as a, \
            BudgetMeter(fleet_config(instance_id="b"), store=store) as b:
        a.guard(0.9)  # a's lease now covers 0.9 of the $1
        with pytest.raises(BudgetExceeded):
            b.guard(0.2)
        b.guard(0.05)


def test_a_failed_checkpoint_makes_the_next_fleet_call_refuse_without_waiting() -> None:
    store = DownStore()
    config = fleet_config(cap=100.0, instance_id="a", lease_ttl_s=600.0)
    with BudgetMeter(config, store=store) as meter:
        meter.reserve(0.05).settle(0.05)
        store.down = True
        assert meter.checkpoint() is False  # the round fails on the store ...
        probed = store.lease_calls  # ... and its lease probe too
        with pytest.raises(BudgetExceeded, match="cannot be reached"):
            meter.reserve(5.0)
        assert store.lease_calls == probed  # refused without asking the dead store
        store.down = False
