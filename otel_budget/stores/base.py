"""The store contract, and `open_store(url)`.

A store keeps rows of `quilt_patches`, addressed by (patch_type, name), holding
JSON objects (their layout: `otel_budget.stores.layout`). What the library asks
of one is split into small protocols, each checked with `isinstance` where it is
optional, never by probing for a method:

- `BudgetStore` (also spelled `PatchStore`, its public name since version 1):
  required. Reads and writes of rows, the writers' merge and retirement, the
  day's totals, nudges and claims. A store with only these works everywhere:
  what the others add is done without them, more slowly or less often.
- `ClaimStore`: `replace_claim`, the compare and set behind an alert's delivery
  record and takeover. Without it each alert is delivered by its claimer only.
- `LeaseStore`: `lease_acquire`/`lease_release`, the fleet-wide hard caps
  (`enforce="fleet"`). Without it such a budget is a ConfigError at start.
- `IdentifiedStore`: what the local spool is keyed by (the database itself, and
  where the URL leads without I/O). Without it the spool is keyed by the object.
- `ReapingStore`: `reap_stale`, retiring the rows of killed writers.
- `SummingStore`: the budget and per-key sums computed inside the store (one row
  per budget or key comes back, not every writer's entry). Without it they are
  summed in Python over `writer_entries`.
- `BudgetEntriesStore`: today's writer entries with each budget computed in the
  store instead of their breakdowns (PostgreSQL, Supabase). Without it they are
  read whole.

Every bundled store (memory, SQLite, PostgreSQL, Supabase) implements all of them
but the last (`BundledStore`; tests/stores/test_store_contract.py checks it).

A store that wraps another (to count or fail calls) should define the methods it
passes on: from Python 3.12, `isinstance` against a protocol no longer sees what
only `__getattr__` provides (3.11 does).
"""

from __future__ import annotations

import importlib
import json
import math
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol, Self, runtime_checkable

from ..errors import ConfigError, CorruptRowError, InvalidEntryError
from .entries import DayTotals, MergeResult

if TYPE_CHECKING:
    from ..budgets import Budget


@runtime_checkable
class BudgetStore(Protocol):
    """Rows of `quilt_patches`, addressed by (patch_type, name), holding JSON objects:
    what every store must do."""

    def get(self, patch_type: str, name: str) -> dict[str, Any] | None:
        """The row's content, or None if absent. Raises CheckpointError if it is not
        a JSON object, StoreError if the store cannot be read."""
        ...

    def merge_writer(self, entry: dict[str, Any]) -> MergeResult:
        """Validate `entry` (CheckpointError before any I/O), round its amounts to
        1e-9, and atomically store it as the writer's row for its day if its seq is
        newer than the stored one (an equal or older seq is a no-op). Returns
        whether it applied, the seq now stored, and the totals of the day's OTHER
        writers. A malformed stored row for this writer: CheckpointError naming it.

        `applied` is False when the stored seq is equal or newer; that includes a
        retry of a merge whose first answer was lost after it committed, so a
        caller treats `stored_seq >= entry["seq"]` as "my entry is durable".
        Another writer's row of the day whose amounts are not amounts (a number
        in [0, 1e12]) is left out of the others' totals and named in their
        `quarantined` list (never counted as 0, never fatal). So is a malformed
        summary row of the day (named `budget_summary/budget_{date}`): left as it
        is, never overwritten, while the day's retired rows (never deleted) stand
        for it; deleting it repairs the day (the next retirement writes it anew
        from those rows).

        The others are the day's summary row (its retired writers) plus its writer
        rows not retired. On a retired row a newer seq replaces the entry and moves
        the summary by the difference: the row stays retired and is counted once
        (an equal or older seq is a no-op, as always). An entry carrying `retired`
        raises CheckpointError: only `retire_writer` sets it."""
        ...

    def retire_writer(self, entry: dict[str, Any]) -> MergeResult:
        """A writer's last entry for its day (shutdown, or a day it has closed):
        validated and rounded as by merge_writer, then atomically (one transaction)
        stored by the same seq rule, the row marked `"retired": true` and its amounts
        (spend, by_budget, one writer, its budget_writers counts) added to the day's
        summary row (`budget_summary`/`budget_{date}`), so later merges and reads of
        the day no longer visit it (an absent summary row is first rebuilt from the
        day's retired rows; a malformed one is left alone, see merge_writer).
        Exactly once per writer row: retiring a retired
        row again is a no-op unless its seq is newer (then as merge_writer on a
        retired row), so retries are idempotent. If the stored seq is newer than the
        entry's, the stored entry is the one retired.

        Returns what merge_writer returns: whether the entry applied, the seq now
        stored, and the totals of the day's OTHER writers (for a row that was
        already retired, `others.updated_at` may be this writer's own). Malformed
        stored rows raise CheckpointError as in merge_writer, and nothing is
        written."""
        ...

    def day_totals(self, days: Sequence[str]) -> dict[str, DayTotals]:
        """Every day's totals over its writer rows, in one round trip; a day
        without rows gets zero totals. Retired or not, every row counts once: the
        day's summary row stands for the retired ones, so the totals are those of
        `entries.summarize` over all of the day's writer rows. A writer row whose
        amounts are not amounts is left out and named in `quarantined`, and so is
        a malformed summary row (the retired rows counted in its place)."""
        ...

    def writer_entries(self, days: Sequence[str], *, breakdown: bool = True) -> list[dict[str, Any]]:
        """Every writer row's content for those days (retired ones included, with
        `"retired": true`), in one round trip; without `breakdown`,
        `by_attributes` may be left out."""
        ...

    def nudges_on(self, day: str) -> list[dict[str, Any]]:
        """Every nudge document (`sibling_nudge` row) whose `date` is `day`."""
        ...

    def insert_if_absent(self, patch_type: str, name: str, content: dict[str, Any]) -> bool:
        """Insert the row unless (patch_type, name) exists; True if this call inserted."""
        ...

    def close(self) -> None:
        """Idempotent; afterwards every method raises StoreError."""
        ...

    def __enter__(self) -> Self: ...

    def __exit__(self, *exc: object) -> None: ...


#: The name the protocol had before it was split (public: `otel_budget.PatchStore`).
PatchStore = BudgetStore


@runtime_checkable
class ClaimStore(Protocol):
    def replace_claim(self, patch_type: str, name: str, expected: dict[str, Any],
                      content: dict[str, Any]) -> bool:
        """Replace the row's content only if it still equals `expected` (True if this
        call replaced it; an absent row is False): the compare and set behind an
        alert's delivery record and takeover."""
        ...


@runtime_checkable
class LeaseStore(Protocol):
    """The lease rows of fleet budgets (otel_budget.leases: the requests, the
    answers, and `apply_acquire`/`apply_release`, the reference the SQL mirrors)."""

    def lease_acquire(self, request: dict[str, Any]) -> dict[str, Any]:
        """Acquire, top up or renew a writer's lease on a budget's window, atomically."""
        ...

    def lease_release(self, request: dict[str, Any]) -> dict[str, Any]:
        """Give a lease back, settling its exact use."""
        ...


@runtime_checkable
class IdentifiedStore(Protocol):
    """What the local spool keys a store's entries by.

    `identity()` names the database itself, whatever spelling of the URL led to it
    (SQLite: the file's real path; PostgreSQL: the cluster's system identifier and
    the database; Supabase: the project); it may do I/O, bounded by the store's
    deadlines, and raises StoreError while the store has never answered.
    `known_identity` is that name when known already (no I/O), else None.
    `spool_key` is where the URL leads as far as it can be told without I/O (no
    secret in it); entries spooled before the store ever answered wait under it
    (PostgreSQL: host, port, database and user with libpq's environment defaults
    applied). `legacy_spool_key`: what version 2 keyed the spool by, or None."""

    def identity(self) -> str: ...

    @property
    def known_identity(self) -> str | None: ...

    @property
    def spool_key(self) -> str: ...

    @property
    def legacy_spool_key(self) -> str | None: ...


@runtime_checkable
class ReapingStore(Protocol):
    def reap_stale(self, stale_after_s: float, *, limit: int = 100) -> list[str]:
        """Retire, as retire_writer does with the row's own stored entry, at most
        `limit` live writer rows of any day not written for `stale_after_s` seconds,
        and return their names. Retiring only moves a row's sums from the day's live
        writers to its retired ones: a late merge of a writer that was only slow
        applies against the stored row and never counts it twice; malformed rows are
        left alone (quarantined). The bundled stores run it themselves, piggybacked
        on merges (their `stale_after_s`, default DEFAULT_STALE_AFTER_S; None:
        never)."""
        ...


@runtime_checkable
class SummingStore(Protocol):
    def budget_day_spend(self, days: Sequence[str], budgets: Sequence[Budget], *,
                         closed_before: str) -> dict[str, dict[str, float]]:
        """{day: {budget: spend}} over each closed day's writers (a writer's own
        figure, else its breakdown's share; see otel_budget.stores.shares)."""
        ...

    def key_sums(self, days: Sequence[str], budgets: Sequence[str], *,
                 exclude_writer: str = "") -> tuple[dict[str, dict[str, float]], list[str]]:
        """Each per-key budget's spend per key over the writer rows of `days`,
        leaving out the rows of `exclude_writer`, and the rows left out as malformed.
        An item that is no amount is skipped (SQL) or leaves its row out, named
        (Python: `otel_budget.stores.keysums`)."""
        ...


@runtime_checkable
class BudgetEntriesStore(Protocol):
    def writer_budget_entries(self, days: Sequence[str],
                              budgets: Sequence[Budget]) -> list[dict[str, Any]]:
        """`writer_entries(days)` without the breakdowns, every budget of `budgets` an
        entry lacks computed from its breakdown in the store (a malformed row comes
        whole, for the caller to name); NotImplementedError for a match the store
        cannot mirror. PostgreSQL and Supabase; the others' entries are read whole."""
        ...


@runtime_checkable
class BundledStore(BudgetStore, ClaimStore, LeaseStore, IdentifiedStore, ReapingStore,
                   SummingStore, Protocol):
    """All of the above: what memory, SQLite, PostgreSQL and Supabase implement."""


# scheme -> "module:Class"; imported lazily so optional drivers cost nothing unused.
_BACKENDS: dict[str, str] = {
    "memory": "otel_budget.stores.memory:MemoryStore",
    "sqlite": "otel_budget.stores.sqlite:SQLiteStore",
    "postgresql": "otel_budget.stores.postgres:PostgresStore",
    "postgres": "otel_budget.stores.postgres:PostgresStore",
    "supabase": "otel_budget.stores.supabase:SupabaseStore",
}


def open_store(url: str) -> BudgetStore:
    """Open the store a URL names: `memory://`, `sqlite:///relative.db`,
    `sqlite:////absolute.db`, `postgresql://user@host/db`, `supabase://`."""
    if not isinstance(url, str) or "://" not in url:
        raise ConfigError(
            f"store: expected a URL such as sqlite:///otel_budget.db, got {redact_url(str(url))!r}"
        )
    scheme = url.split("://", 1)[0].lower()
    target = _BACKENDS.get(scheme)
    if target is None:
        raise ConfigError(
            f"store: unknown scheme {scheme!r} in {redact_url(url)!r}; "
            f"expected one of {', '.join(sorted(_BACKENDS))}"
        )
    module_name, class_name = target.split(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    store: BudgetStore = cls.from_url(url)
    return store


def redact_url(url: str) -> str:
    """The URL with any password or token replaced, safe for logs and reprs."""
    from ..redact import redact_dsn

    return redact_dsn(url)


#: One encoder each for every call (json.dumps with arguments builds a new one each
#: time). Sorted keys for rows stored as text (SQLite's: their texts are compared);
#: the dict's own order for a jsonb argument: jsonb keeps no key order, and sorting a
#: merge's entry took half its serialising time.
_sorted_text = json.JSONEncoder(separators=(",", ":"), sort_keys=True, allow_nan=False).encode
jsonb_text = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode


def _serialised(encode: Callable[[Any], str], content: dict[str, Any]) -> str:
    try:
        return encode(content)
    except (TypeError, ValueError) as exc:
        raise InvalidEntryError(f"content is not JSON-serialisable: {exc}") from None


def dumps_content(content: dict[str, Any]) -> str:
    """Serialise a row's content, refusing NaN/inf (not JSON) with a clear error."""
    return _serialised(_sorted_text, content)


def dumps_jsonb(content: dict[str, Any]) -> str:
    """dumps_content for a jsonb argument: the same checks and errors, keys unsorted."""
    return _serialised(jsonb_text, content)


def loads_content(raw: str | bytes | dict[str, Any], *, patch_type: str, name: str) -> dict[str, Any]:
    """Parse a row's content; a non-object or invalid JSON names the row."""
    if isinstance(raw, dict):
        return raw
    try:
        value = json.loads(raw, parse_constant=_reject_constant)
    except (TypeError, ValueError) as exc:
        raise CorruptRowError(f"row {patch_type}/{name} holds invalid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise CorruptRowError(
            f"row {patch_type}/{name} holds {type(value).__name__}, expected a JSON object"
        )
    return value


def _reject_constant(token: str) -> float:
    raise ValueError(f"{token} is not a number")


def is_finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


#: A live writer row not written for this long is retired by the stores' reaper: its
#: writer was killed (SIGKILL, OOM, a frozen instance) and never retired it. A writer
#: that was only slow loses nothing: its next merge applies against the stored row
#: (retired rows stay counted once). 15 minutes: 90 of the default checkpoints.
DEFAULT_STALE_AFTER_S = 900.0


class ReapSchedule:
    """When a store runs its reaper next: at most once per quarter of
    `stale_after_s` (and at least a second apart) per store object, piggybacked on
    a merge, so no thread or process of its own is needed. None: never."""

    def __init__(self, stale_after_s: float | None) -> None:
        if stale_after_s is not None and (not is_finite_number(stale_after_s)
                                          or stale_after_s <= 0):
            raise ConfigError(f"store: stale_after_s must be a number > 0 or None, "
                              f"got {stale_after_s!r:.40}")
        self.stale_after_s = None if stale_after_s is None else float(stale_after_s)
        self._next = 0.0
        self._lock = threading.Lock()

    def due(self) -> bool:
        """True (once) when the reaper should run now."""
        if self.stale_after_s is None:
            return False
        now = time.monotonic()
        with self._lock:
            if now < self._next:
                return False
            self._next = now + max(1.0, self.stale_after_s / 4)
            return True


def check_reap_args(stale_after_s: float, limit: int) -> tuple[float, int]:
    """reap_stale's arguments, or CheckpointError before any I/O."""
    if not is_finite_number(stale_after_s) or stale_after_s < 0:
        raise InvalidEntryError(f"reap_stale: stale_after_s must be a number >= 0, "
                              f"got {stale_after_s!r:.40}")
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
        raise InvalidEntryError(f"reap_stale: limit must be an integer >= 1, got {limit!r:.40}")
    return float(stale_after_s), limit


class ContextStore:
    """`with store:` closes the store at exit."""

    def close(self) -> None:  # pragma: no cover - every store defines it
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
