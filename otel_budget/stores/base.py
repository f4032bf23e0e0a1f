"""The PatchStore protocol every backend implements, and `open_store(url)`."""

from __future__ import annotations

import importlib
import json
import math
import threading
import time
from collections.abc import Sequence
from typing import Any, Protocol, Self, runtime_checkable

from ..errors import CheckpointError, ConfigError, CorruptRowError, InvalidEntryError
from .entries import DayTotals, MergeResult


@runtime_checkable
class PatchStore(Protocol):
    """Rows of `quilt_patches`, addressed by (patch_type, name), holding JSON objects.

    Every bundled store also has `reap_stale(stale_after_s, *, limit=100) ->
    list[str]` (optional for others, so not part of the protocol): retire, as
    retire_writer does with the row's own stored entry, at most `limit` live writer
    rows of any day not written for `stale_after_s` seconds, and return their names.
    Retiring only moves a row's sums from the day's live writers to its retired ones:
    a late merge of a writer that was only slow applies against the stored row and
    never counts it twice; malformed rows are left alone (quarantined). The bundled
    stores run it themselves, piggybacked on merges (their `stale_after_s`, default
    DEFAULT_STALE_AFTER_S; None: never)."""

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
        `quarantined` list (never counted as 0, never fatal); a malformed summary
        row of the day raises CheckpointError naming it, and nothing is written.

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
        the day no longer visit it. Exactly once per writer row: retiring a retired
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
        amounts are not amounts is left out and named in `quarantined`; a
        malformed summary row raises CheckpointError naming it."""
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
        """Insert the row unless (patch_type, name) exists; True if this call inserted.
        (Every bundled store also has `replace_claim(patch_type, name, expected,
        content) -> bool`: replace the row's content only if it still equals
        `expected`, the compare and set behind an alert's delivery record and
        takeover; a store without it delivers each alert from its claimer only.)"""
        ...

    def close(self) -> None:
        """Idempotent; afterwards every method raises StoreError."""
        ...

    def __enter__(self) -> Self: ...

    def __exit__(self, *exc: object) -> None: ...


class IdentifiedStore(Protocol):
    """What the local spool asks of a store (optional: without it a store's spool is
    keyed by the object itself, as for `memory://`).

    `identity()` names the database itself, whatever spelling of the URL led to it
    (SQLite: the file's real path; PostgreSQL: the cluster's system identifier and
    the database; Supabase: the project); it may do I/O, bounded by the store's
    deadlines, and raises StoreError while the store has never answered.
    `known_identity` is that name when known already (no I/O), else None.
    A store may also have `spool_key`: where the URL leads as far as it can be told
    without I/O (no secret in it); entries spooled before the store ever answered
    wait under it (PostgreSQL: host, port, database and user with libpq's
    environment defaults applied)."""

    def identity(self) -> str: ...

    @property
    def known_identity(self) -> str | None: ...


# scheme -> "module:Class"; imported lazily so optional drivers cost nothing unused.
_BACKENDS: dict[str, str] = {
    "memory": "otel_budget.stores.memory:MemoryStore",
    "sqlite": "otel_budget.stores.sqlite:SQLiteStore",
    "postgresql": "otel_budget.stores.postgres:PostgresStore",
    "postgres": "otel_budget.stores.postgres:PostgresStore",
    "supabase": "otel_budget.stores.supabase:SupabaseStore",
}


def open_store(url: str) -> PatchStore:
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
    store: PatchStore = cls.from_url(url)
    return store


def redact_url(url: str) -> str:
    """The URL with any password or token replaced, safe for logs and reprs."""
    from ..redact import redact_dsn

    return redact_dsn(url)


def dumps_content(content: dict[str, Any]) -> str:
    """Serialise a row's content, refusing NaN/inf (not JSON) with a clear error."""
    try:
        return json.dumps(content, separators=(",", ":"), sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidEntryError(f"content is not JSON-serialisable: {exc}") from None


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
        raise CheckpointError(f"reap_stale: stale_after_s must be a number >= 0, "
                              f"got {stale_after_s!r:.40}")
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
        raise CheckpointError(f"reap_stale: limit must be an integer >= 1, got {limit!r:.40}")
    return float(stale_after_s), limit


class ContextStore:
    """`with store:` closes the store at exit."""

    def close(self) -> None:  # pragma: no cover - every store defines it
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
