"""The lease row of a fleet budget: its requests, its arithmetic and its answers.
Pure: no I/O. `apply_acquire`/`apply_release` are the reference the SQL functions
`otel_budget_lease_acquire`/`_release` mirror; every store checks a request with
`check_lease_request` and shapes its answer with `lease_answer`. The client that
draws on a lease, and the row's shape, are described in otel_budget.leases.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from typing import Any

from ..errors import CorruptRowError, InvalidEntryError
from ..money import round_usd
from .layout import LEASE_TYPE, lease_row_name

EPS = 1e-9
#: A chunk is this share of what is free, divided among the active leases.
DEFAULT_SHARE = 0.5
#: What every lease together may hold beyond its reported use, as a share of the cap
#: (split among the active leases). Surplus an idle writer sits on is surplus a busy
#: one is refused: bounding it is what makes a refusal mean the fleet has spent or
#: holds the cap (>= 1 - this, less one call), whatever the writers do next.
DEFAULT_SURPLUS_SHARE = 0.025
#: The room is split as if at least this many writers shared it: the first writer of
#: the day must not take all of it while the others join (they would get one call
#: per round trip until it gives the surplus back).
MIN_SHARERS = 4
#: Lease lengths (seconds): the TTL after which a dead writer's lease is settled.
MIN_TTL_S = 0.2
MAX_TTL_S = 86_400.0
#: An expired lease's late report is honoured this long after its expiry, for the
#: ENDED_MAX latest expired leases of the row (older ones keep their whole grant).
ENDED_KEEP_S = 3_600.0
ENDED_MAX = 64


r9 = round_usd  # the lease arithmetic's short name for it


# --- requests -------------------------------------------------------------------------


def _amount(value: Any) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value) and value >= 0)


def lease_request_problem(req: Any, *, release: bool = False) -> str | None:
    """None if `req` is a well-formed acquire (or release) request, else what is wrong."""
    if not isinstance(req, dict):
        return f"request is {type(req).__name__}, expected an object"
    for key in ("budget", "window", "writer_id", "lease_id"):
        value = req.get(key)
        if not isinstance(value, str) or not value or len(value) > 200:
            return f"{key} must be a non-empty string of at most 200 characters"
        if "\x00" in value:
            return f"{key} contains a NUL character"
    if not _amount(req.get("used_usd")):
        return f"used_usd must be a finite number >= 0, got {req.get('used_usd')!r:.60}"
    if release:
        return None
    for key in ("cap_usd", "want_usd", "seen_usd", "min_chunk_usd", "share"):
        if not _amount(req.get(key)):
            return f"{key} must be a finite number >= 0, got {req.get(key)!r:.60}"
    if not (req["cap_usd"] > 0):
        return "cap_usd must be > 0"
    if not (0 < req["share"] <= 1):
        return "share must be in (0, 1]"
    if "surplus_share" in req and not (_amount(req["surplus_share"])
                                       and 0 < req["surplus_share"] <= 1):
        return f"surplus_share must be in (0, 1], got {req['surplus_share']!r:.60}"
    for key in ("keep_usd", "floor_usd"):
        if key in req and not _amount(req[key]):
            return f"{key} must be a finite number >= 0, got {req[key]!r:.60}"
    ttl = req.get("ttl_s")
    if not isinstance(ttl, (int, float)) or not _amount(ttl) or not (MIN_TTL_S <= ttl <= MAX_TTL_S):
        return f"ttl_s must be between {MIN_TTL_S} and {MAX_TTL_S} seconds, got {ttl!r:.60}"
    if not isinstance(req.get("new"), bool):
        return "new must be true or false"
    return None


def check_lease_request(req: Any, *, release: bool = False) -> dict[str, Any]:
    problem = lease_request_problem(req, release=release)
    if problem is not None:
        raise InvalidEntryError(f"lease request: {problem}")
    assert isinstance(req, dict)
    return req


# --- the row's arithmetic (pure) -------------------------------------------------------


def empty_lease_doc(budget: str, window: str, cap_usd: float) -> dict[str, Any]:
    return {"budget": budget, "window": window, "cap_usd": r9(cap_usd), "settled_usd": 0.0,
            "external_usd": 0.0, "short_until": 0.0, "leases": {}}


def lease_doc_problem(doc: Any) -> str | None:
    if not isinstance(doc, dict):
        return f"content is {type(doc).__name__}, expected an object"
    for key in ("settled_usd", "external_usd"):
        if not _amount(doc.get(key)):
            return f"{key} must be a finite number >= 0"
    leases = doc.get("leases")
    if not isinstance(leases, dict):
        return "leases must be an object"
    for lid, entry in leases.items():
        if not isinstance(entry, dict) or not all(
                _amount(entry.get(k)) for k in ("granted_usd", "used_usd", "expires_at")):
            return f"lease {lid!r:.60} is malformed"
    return None


def _held(entry: Mapping[str, Any]) -> float:
    return max(float(entry["granted_usd"]), float(entry["used_usd"]))


def expire_leases(doc: dict[str, Any], now: float) -> list[str]:
    """Settle every lease whose expiry passed at all it may have drawn (in place):
    its grant, or its reported use if more. A writer spends from its lease between
    its reports, so its last report is not all it may have spent; the unspent rest
    comes back only if the writer reports it late (`settle_late_report`). Each
    settled lease is kept under "ended" for that (ENDED_KEEP_S, the ENDED_MAX latest)."""
    leases: dict[str, Any] = doc["leases"]
    gone = [lid for lid, e in leases.items() if float(e["expires_at"]) <= now]
    ended = _ended_of(doc)
    for lid in sorted(gone):
        entry = leases.pop(lid)
        held = _held(entry)
        doc["settled_usd"] = r9(doc["settled_usd"] + held)
        ended[lid] = {"held_usd": r9(held), "expired_at": float(entry["expires_at"])}
    _prune_ended(ended, now)
    if ended or "ended" in doc:
        doc["ended"] = ended
    return gone


def _ended_of(doc: Mapping[str, Any]) -> dict[str, Any]:
    """The row's ended leases; a malformed one is dropped (it only loses its refund)."""
    ended = doc.get("ended")
    if not isinstance(ended, dict):
        return {}
    return {lid: dict(e) for lid, e in ended.items()
            if isinstance(e, dict) and _amount(e.get("held_usd"))
            and _amount(e.get("expired_at"))}


def _prune_ended(ended: dict[str, Any], now: float) -> None:
    for lid in [lid for lid, e in ended.items() if float(e["expired_at"]) < now - ENDED_KEEP_S]:
        del ended[lid]
    if len(ended) > ENDED_MAX:
        keep = sorted(ended, key=lambda lid: (-float(ended[lid]["expired_at"]), lid))[:ENDED_MAX]
        for lid in set(ended) - set(keep):
            del ended[lid]


def settle_late_report(doc: dict[str, Any], lid: str, used: float) -> bool:
    """A writer reports lease `lid` after it expired: it spent at most `used` of it
    (open holds at their maximum; later settles are ignored by the writer), so what
    expiry settled beyond that comes back, once. True if the lease was found."""
    ended = _ended_of(doc)
    entry = ended.pop(lid, None)
    if entry is None:
        return False
    refund = max(0.0, float(entry["held_usd"]) - used)
    doc["settled_usd"] = r9(max(0.0, float(doc["settled_usd"]) - refund))
    doc["ended"] = ended
    return True


def grant_size(*, avail: float, want: float, active: int, share: float, min_chunk: float,
               contended: bool, surplus_room: float | None = None) -> float | None:
    """How much to grant beyond the writer's reported use: None when `want` does not
    fit in `avail`; else `want` plus, unless the pool is contended, a chunk of
    `share * avail / active` (at least `min_chunk`), never more than `avail`. With
    `surplus_room` (what the fleet's surplus bound leaves this lease), the chunk
    beyond `want` never exceeds it."""
    if want > avail + EPS:
        return None
    chunk = want if contended else max(want, min_chunk, share * avail / max(1, active))
    if surplus_room is not None:
        chunk = max(want, min(chunk, surplus_room))
    return max(0.0, min(avail, chunk))


def surplus_room(*, cap: float, surplus_share: float, active: int,
                 others_surplus: float) -> float:
    """The surplus one lease may hold: its fair part of `surplus_share * cap` (split
    among the active leases, at least MIN_SHARERS), and no more than the others'
    reported surplus leaves of it (their real surplus is at most that: a writer's
    use only grows between its reports)."""
    limit = surplus_share * cap
    return max(0.0, min(limit / max(MIN_SHARERS, active), limit - others_surplus))


def apply_acquire(doc: dict[str, Any] | None, req: Mapping[str, Any],
                  now: float) -> tuple[dict[str, Any], dict[str, Any]]:
    """Acquire, top up or renew a lease (report its use). Returns (new doc, answer)."""
    doc = copy.deepcopy(doc) if doc is not None else empty_lease_doc(
        req["budget"], req["window"], req["cap_usd"])
    doc["cap_usd"] = cap = r9(req["cap_usd"])
    expire_leases(doc, now)
    leases: dict[str, Any] = doc["leases"]
    lid = req["lease_id"]
    own = leases.get(lid)
    used = r9(req["used_usd"])
    want = r9(req["want_usd"])
    ttl = float(req["ttl_s"])
    if own is None and not req["new"]:
        # Expired here (settled at its whole grant): what the writer did not use of
        # it comes back, and the writer starts a new lease.
        settle_late_report(doc, lid, used)
        return doc, _answer(doc, lid, None, ok=False, expired=True, now=now, ttl=0.0)
    others = r9(sum(_held(e) for k, e in leases.items() if k != lid))
    live = r9(others + (max(float(own["granted_usd"]), used) if own else used))
    estimate = r9(float(req["seen_usd"]) - float(doc["settled_usd"]) - live)
    doc["external_usd"] = r9(max(float(doc["external_usd"]), estimate))
    free = r9(cap - float(doc["settled_usd"]) - float(doc["external_usd"]) - others)
    avail = r9(free - used)
    contended = float(doc.get("short_until") or 0.0) > now
    active = len(leases) + (0 if own else 1)
    old_granted = float(own["granted_usd"]) if own else 0.0
    room = None
    if "surplus_share" in req:
        room = surplus_room(
            cap=cap, surplus_share=float(req["surplus_share"]), active=active,
            others_surplus=sum(max(0.0, float(e["granted_usd"]) - float(e["used_usd"]))
                               for k, e in leases.items() if k != lid))
    ok = True
    if want > 0:
        extra = grant_size(avail=avail, want=want, active=active, share=float(req["share"]),
                           min_chunk=float(req["min_chunk_usd"]), contended=contended,
                           surplus_room=room)
        if extra is None:
            ok = False
            doc["short_until"] = r9(now + ttl)
            granted = used  # contended: every holder gives its surplus back
        else:
            granted = r9(used + extra)
    else:
        # A renewal keeps the grant (never more than is free), or trims it to what
        # the writer says it keeps (`keep_usd`: it already draws no further).
        keep = float(req["keep_usd"]) if "keep_usd" in req else old_granted
        granted = used if contended else r9(max(used, min(old_granted, free, keep)))
    if own is not None:
        # The writer draws on its grant while this request is on its way (another
        # thread's call, during a prefetch or a renewal): `floor_usd` is what it may
        # have drawn by the answer. Taking that back would leave those draws
        # counted nowhere, so the grant never falls below it (nor rises above
        # what it was: the row already counts it).
        floor = min(float(req.get("floor_usd") or 0.0), old_granted)
        granted = r9(max(granted, floor))
    if own is None and granted <= 0 and used <= 0:
        return doc, _answer(doc, lid, None, ok=ok, expired=False, now=now, ttl=0.0)
    leases[lid] = {"writer_id": req["writer_id"], "granted_usd": granted, "used_usd": used,
                   "expires_at": r9(now + ttl)}
    return doc, _answer(doc, lid, leases[lid], ok=ok, expired=False, now=now, ttl=ttl)


def apply_release(doc: dict[str, Any] | None, req: Mapping[str, Any],
                  now: float) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """End a lease, settling its exact use; the unused rest returns to the pool."""
    if doc is None:
        return None, {"ok": True, "expired": True, "granted_usd": 0.0,
                      "used_usd": 0.0, "free_usd": None}
    doc = copy.deepcopy(doc)
    expire_leases(doc, now)
    own = doc["leases"].pop(req["lease_id"], None)
    if own is not None:
        doc["settled_usd"] = r9(float(doc["settled_usd"]) + float(req["used_usd"]))
    else:
        settle_late_report(doc, req["lease_id"], r9(req["used_usd"]))
    return doc, _answer(doc, req["lease_id"], None, ok=True, expired=own is None, now=now,
                        ttl=0.0)


def lease_totals(doc: Mapping[str, Any]) -> dict[str, float]:
    leases = doc.get("leases") or {}
    leased = r9(sum(float(e["granted_usd"]) for e in leases.values()))
    held = r9(sum(_held(e) for e in leases.values()))
    accounted = r9(float(doc["settled_usd"]) + float(doc["external_usd"]) + held)
    return {"leased_usd": leased, "accounted_usd": accounted,
            "free_usd": r9(max(0.0, float(doc["cap_usd"]) - accounted))}


def _answer(doc: Mapping[str, Any], lid: str, entry: Mapping[str, Any] | None, *, ok: bool,
            expired: bool, now: float, ttl: float) -> dict[str, Any]:
    totals = lease_totals(doc)
    return {
        "ok": ok, "expired": expired, "lease_id": lid,
        "granted_usd": float(entry["granted_usd"]) if entry else 0.0,
        "used_usd": float(entry["used_usd"]) if entry else 0.0,
        "expires_in_s": ttl if entry else 0.0,
        "free_usd": totals["free_usd"], "leased_usd": totals["leased_usd"],
        "active": len(doc.get("leases") or {}),
        "settled_usd": float(doc["settled_usd"]), "external_usd": float(doc["external_usd"]),
        "contended": float(doc.get("short_until") or 0.0) > now,
    }


def lease_answer(value: Any, what: str) -> dict[str, Any]:
    """A store's answer, checked (the SQL functions return jsonb)."""
    if not isinstance(value, dict) or not isinstance(value.get("ok"), bool):
        # Read back from the store (a lease row or what its function made of one).
        raise CorruptRowError(f"{what} answered {str(value)[:80]!r}, expected an object")
    out = dict(value)
    for key in ("granted_usd", "used_usd", "expires_in_s", "settled_usd", "external_usd",
                "leased_usd"):
        out[key] = float(out.get(key) or 0.0)
    out["free_usd"] = None if out.get("free_usd") is None else float(out["free_usd"])
    out["active"] = int(out.get("active") or 0)
    out["expired"] = bool(out.get("expired"))
    out["contended"] = bool(out.get("contended"))
    return out


__all__ = [
    "DEFAULT_SHARE",
    "DEFAULT_SURPLUS_SHARE",
    "ENDED_KEEP_S",
    "ENDED_MAX",
    "EPS",
    "LEASE_TYPE",
    "MAX_TTL_S",
    "MIN_SHARERS",
    "MIN_TTL_S",
    "apply_acquire",
    "apply_release",
    "check_lease_request",
    "empty_lease_doc",
    "expire_leases",
    "grant_size",
    "lease_answer",
    "lease_doc_problem",
    "lease_request_problem",
    "lease_row_name",
    "lease_totals",
    "r9",
    "settle_late_report",
    "surplus_room",
]
