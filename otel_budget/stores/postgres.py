"""PostgreSQL store: psycopg 3 with a small connection pool, calling the SQL
functions of `schema.sql` (apply it first: `otel-budget migrate --url ...`).

Every operation is one short transaction with its own statement timeout
(`set_config(..., is_local => true)`, so it also holds behind a transaction
pooler such as PgBouncer or Supavisor, where session settings would leak to
other clients). The hot paths (merge_writer, retire_writer, day_totals,
writer_entries) send
the timeout and the call as ONE simple-query message, which PostgreSQL runs as
one implicit transaction: one round trip instead of four (BEGIN, SET, call,
COMMIT), which took 16 writers from ~600 to ~1,400 merges/s on 2 cores. Prepared statements are
off (`prepare_threshold=None`) for the same pooler. Parameters carry explicit
casts: psycopg sends typed values, and `otel_budget_claim(unknown, ...)` with a
Python int would not resolve.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import psycopg
from psycopg import pq
from psycopg import sql as pgsql
from psycopg.types.json import Jsonb

from ..errors import CheckpointError, ConfigError, StoreError
from ..redact import password_of, scrub_known
from .base import (
    DEFAULT_STALE_AFTER_S,
    ContextStore,
    ReapSchedule,
    check_reap_args,
    dumps_content,
    redact_url,
)
from .entries import DayTotals, MergeResult, check_days
from .keysums import PG_KEY_SUMS, PG_KEY_SUMS_CHECKED, PG_KEY_SUMS_SETTINGS, key_sums_of_rows
from .layout import NUDGE_TYPE, WRITER_TYPE, writer_row_name
from .leaserows import LEASE_TYPE, check_lease_request, lease_answer, lease_row_name
from .sqlfunctions import (
    CHECKPOINT_SQLSTATES,
    MIGRATE_HINT,
    as_object,
    budget_specs,
    days_totals,
    entry_list,
    merge_result,
    prepare_writer_entry,
    reap_one_at_a_time,
    reap_quietly,
    spend_in_rounds,
)

if TYPE_CHECKING:
    from ..budgets import Budget

_log = logging.getLogger(__name__)

T = TypeVar("T")

_GET = pgsql.SQL(
    "select q.content from public.quilt_patches as q "
    "where q.patch_type = %s::text and q.name = %s::text"
)
# One simple-query message, two statements, one implicit transaction: the
# statement timeout (SET LOCAL) and the merge (or retirement) in a single round
# trip. Put together by _write_trip, up to the entry: "<head>'<entry>'::jsonb)".
_WRITE_HEAD = ("select pg_catalog.set_config('statement_timeout', '{timeout}', true); "
               "select public.otel_budget_{function}(")
_REAP = pgsql.SQL(
    "select pg_catalog.set_config('statement_timeout', %s::text, true); "
    "select public.otel_budget_reap(%s::numeric, %s::integer)"
)
_SPEND = pgsql.SQL(
    "select pg_catalog.set_config('statement_timeout', %s::text, true); "
    "select public.otel_budget_budget_spend(%s::text[], %s::jsonb, %s::text)"
)
_TOTALS = pgsql.SQL(
    "select pg_catalog.set_config('statement_timeout', %s::text, true); "
    "select public.otel_budget_day_totals(%s::text[])"
)
_BUDGET_ENTRIES = pgsql.SQL(
    "select pg_catalog.set_config('statement_timeout', %s::text, true); "
    "select public.otel_budget_writer_budget_entries(%s::text[], %s::jsonb)"
)
_ENTRIES = pgsql.SQL(
    "select pg_catalog.set_config('statement_timeout', %s::text, true); "
    "select public.otel_budget_writer_entries(%s::text[], %s::boolean)"
)
_NUDGES = pgsql.SQL(
    "select q.name, q.content from public.quilt_patches as q "
    "where q.patch_type = %s::text and q.content->>'date' = %s::text order by q.name"
)
_LEASE_ACQUIRE = pgsql.SQL(
    "select pg_catalog.set_config('statement_timeout', %s::text, true); "
    "select public.otel_budget_lease_acquire(%s::jsonb)"
)
_LEASE_RELEASE = pgsql.SQL(
    "select pg_catalog.set_config('statement_timeout', %s::text, true); "
    "select public.otel_budget_lease_release(%s::jsonb)"
)
_CLAIM = pgsql.SQL("select public.otel_budget_claim(%s::text, %s::text, %s::jsonb)")
_CLAIM_REPLACE = pgsql.SQL(
    "select public.otel_budget_claim_replace(%s::text, %s::text, %s::jsonb, %s::jsonb)")
_IDENTITY = pgsql.SQL(
    "select 'system', (select s.system_identifier from pg_catalog.pg_control_system() as s), "
    "pg_catalog.current_database()"
)
_IDENTITY_FALLBACK = pgsql.SQL(
    "select 'address', pg_catalog.inet_server_addr(), pg_catalog.inet_server_port(), "
    "pg_catalog.current_database(), "
    "(select d.oid from pg_catalog.pg_database as d where d.datname = pg_catalog.current_database())"
)
_TIMEOUT = pgsql.SQL("select pg_catalog.set_config('statement_timeout', %s::text, true)")


def _dumps(value: Any) -> str:
    # The same JSON rules as the other stores: NaN/inf are refused before any I/O.
    return json.dumps(value, separators=(",", ":"), sort_keys=True, allow_nan=False)


class PostgresStore(ContextStore):
    """`postgresql://user:password@host:5432/db?sslmode=require` (any libpq URL)."""

    def __init__(
        self,
        conninfo: str,
        *,
        min_size: int = 1,
        max_size: int = 4,
        pool_timeout_s: float = 5.0,
        statement_timeout_ms: int = 5000,
        connect_timeout_s: int = 5,
        reconnect_timeout_s: float = 10.0,
        io_timeout_s: float | None = None,
        stale_after_s: float | None = DEFAULT_STALE_AFTER_S,
    ) -> None:
        try:
            from psycopg_pool import ConnectionPool
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise ConfigError(
                "store: postgresql:// needs psycopg-pool: pip install 'otel-budget[postgres]'"
            ) from exc
        if statement_timeout_ms <= 0 or pool_timeout_s <= 0 or connect_timeout_s <= 0:
            raise ConfigError("store: statement_timeout_ms, pool_timeout_s and "
                              "connect_timeout_s must be > 0")
        self._reaps = ReapSchedule(stale_after_s)
        self._redacted = redact_url(conninfo)
        self._password = password_of(conninfo)
        self._params = _parse_conninfo(conninfo, self._redacted)
        self._statement_timeout = f"{int(statement_timeout_ms)}ms"
        self._merge_head, self._retire_head = (
            _WRITE_HEAD.format(timeout=self._statement_timeout, function=f).encode()
            for f in ("merge_writer", "retire_writer"))
        # The server enforces statement_timeout only while it runs: a hung (stopped,
        # partitioned) server answers nothing, so the client keeps its own deadline.
        self._io_timeout = (float(io_timeout_s) if io_timeout_s is not None
                            else statement_timeout_ms / 1000 + 1.0)
        if self._io_timeout <= 0:
            raise ConfigError("store: io_timeout_s must be > 0")
        self._pool_timeout = float(pool_timeout_s)
        self._identity: str | None = None
        self._spool_key = self._offline_key()
        self._max_size = max_size
        self._closed = False
        self._make_pool: Callable[[], Any] = lambda: ConnectionPool(
            conninfo,
            min_size=min_size,
            max_size=max_size,
            timeout=pool_timeout_s,
            # Short, so a pool that gave up during an outage tries afresh soon after.
            reconnect_timeout=reconnect_timeout_s,
            kwargs={
                "prepare_threshold": None,
                "connect_timeout": max(2, int(connect_timeout_s)),
                "application_name": "otel-budget",
                # A peer that vanished (host down, network partition) is noticed by
                # the kernel: keepalive probes, and unacknowledged data times out.
                "keepalives": 1,
                "keepalives_idle": 10,
                "keepalives_interval": 5,
                "keepalives_count": 3,
                "tcp_user_timeout": int(max(self._io_timeout, 1.0) * 1000),
            },
            configure=self._configure,
            name="otel-budget",
            # Connections are made in the background: opening never blocks on an
            # unreachable server, the first operation reports it as a StoreError.
            open=True,
        )
        self._lock = threading.Lock()
        self._pool = self._make_pool()
        self._pid = os.getpid()

    @classmethod
    def from_url(cls, url: str) -> PostgresStore:
        return cls(url)

    def __repr__(self) -> str:
        return f"PostgresStore({self._redacted!r})"

    @property
    def spool_key(self) -> str:
        """Where the DSN leads as far as it can be told without connecting: host,
        port, database and user, with libpq's environment defaults (PGDATABASE,
        PGHOST...) as they were when the store was opened, never the password.
        Spooled entries made before the store ever answered are kept under it;
        `identity()` names the database."""
        return self._spool_key

    def _offline_key(self) -> str:
        defaults: dict[str, str] = {}
        with contextlib.suppress(Exception):
            for option in pq.Conninfo.get_defaults():
                if option.val is not None:
                    defaults[option.keyword.decode()] = option.val.decode("utf-8", "replace")

        def value(name: str) -> str:
            return self._params.get(name) or defaults.get(name) or ""

        user = value("user") or _login_name()
        return "postgresql:" + json.dumps(
            {"host": value("host") or value("hostaddr"), "port": value("port") or "5432",
             "dbname": value("dbname") or user, "user": user}, sort_keys=True)

    @property
    def legacy_spool_key(self) -> str:
        """What version 2 keyed this store's spool by (its entries are shown, not
        replayed: see otel_budget.spool)."""
        return f"postgresql:{self._redacted}"

    def identity(self) -> str:
        """The database itself: the cluster's system identifier (fixed at initdb)
        and the database's name, whatever DSN spelling led here. Asked once, on the
        first connection; StoreError while the server has never answered."""
        if self._identity is None:
            self._run("reading the server's identity",
                      lambda conn: self._learn_identity(conn), retry=True)
        assert self._identity is not None
        return self._identity

    @property
    def known_identity(self) -> str | None:
        """`identity()` if it is known already (no I/O), else None."""
        return self._identity

    def _configure(self, conn: psycopg.Connection[Any]) -> None:
        # Autocommit: transactions are explicit (conn.transaction()) or one message.
        conn.autocommit = True
        conn.isolation_level = psycopg.IsolationLevel.READ_COMMITTED
        if self._identity is None:
            try:
                self._learn_identity(conn)
            except psycopg.Error as exc:  # asked again by identity()
                _log.debug("otel_budget: reading the server identity failed: %s",
                           self._message(exc))

    def _learn_identity(self, conn: psycopg.Connection[Any]) -> None:
        try:
            with conn.transaction():  # a savepoint inside _run's transaction
                row = conn.execute(_IDENTITY).fetchone()
        except psycopg.errors.InsufficientPrivilege:
            # pg_control_system() revoked from this role: the server's address and
            # the database's oid name it, less firmly (a restored copy looks alike).
            row = conn.execute(_IDENTITY_FALLBACK).fetchone()
        assert row is not None
        self._identity = "postgresql:" + json.dumps([str(v) for v in row])

    # --- the PatchStore protocol ---------------------------------------------------

    def get(self, patch_type: str, name: str) -> dict[str, Any] | None:
        self._check_open()
        row = self._run(
            f"reading {patch_type}/{name}",
            lambda conn: conn.execute(_GET, (patch_type, name)).fetchone(),
            retry=True,
        )
        if row is None:
            return None
        return as_object(row[0], patch_type=patch_type, name=name)

    def merge_writer(self, entry: dict[str, Any]) -> MergeResult:
        # Retried: idempotent, the same seq applies at most once.
        result = self._write_writer(entry, self._merge_head, "merging")
        if self._reaps.due():
            self._reap_quietly()
        return result

    def reap_stale(self, stale_after_s: float, *, limit: int = 100) -> list[str]:
        """Retire live writer rows not written for `stale_after_s` seconds (this
        server's clock), at most `limit`: otel_budget_reap (see PatchStore)."""
        self._check_open()
        seconds, limit = check_reap_args(stale_after_s, limit)

        def reap_one() -> Any:
            row = self._run(
                "reaping stale writer rows",
                lambda conn: _one_trip(conn, _REAP, (self._statement_timeout, seconds, 1)),
                retry=True, single=True,
            )
            assert row is not None
            return row[0]

        return reap_one_at_a_time(reap_one, limit)

    def _reap_quietly(self) -> None:
        assert self._reaps.stale_after_s is not None
        reap_quietly(self.reap_stale, self._reaps.stale_after_s)

    def retire_writer(self, entry: dict[str, Any]) -> MergeResult:
        # Retried: idempotent, a retired row is never added again.
        return self._write_writer(entry, self._retire_head, "retiring")

    def _write_writer(self, entry: dict[str, Any], head: bytes, verb: str) -> MergeResult:
        self._check_open()
        checked, payload = prepare_writer_entry(entry)
        day = checked["date"]
        literal = payload.encode()
        answer = self._run(
            f"{verb} {WRITER_TYPE}/{writer_row_name(day, checked['writer_id'])}",
            lambda conn: _write_trip(conn, head, literal),
            retry=True,
            single=True,
        )
        return merge_result(answer, day)

    def day_totals(self, days: Sequence[str]) -> dict[str, DayTotals]:
        self._check_open()
        wanted = check_days(days)
        row = self._run(
            "reading day totals",
            lambda conn: _one_trip(conn, _TOTALS, (self._statement_timeout, wanted)),
            retry=True,
            single=True,
        )
        assert row is not None
        return days_totals(wanted, row[0])

    def budget_day_spend(self, days: Sequence[str], budgets: Sequence[Budget], *,
                         closed_before: str) -> dict[str, dict[str, float]]:
        """{day: {budget: spend}} over each day's writers (own figure, else the
        breakdown's share), computed in SQL and kept for the days before
        `closed_before` (otel_budget_budget_spend; see otel_budget.stores.shares).
        NotImplementedError for a match SQL cannot mirror (read the entries)."""
        self._check_open()
        wanted = check_days(days)
        (closed_before,) = check_days([closed_before])
        payload = _dumps(budget_specs(budgets))

        def ask(left: list[str]) -> Any:
            row = self._run(
                "reading the budgets' spend of closed days",
                lambda conn: _one_trip(
                    conn, _SPEND, (self._statement_timeout, left, payload, closed_before)),
                retry=True, single=True,
            )
            assert row is not None
            return row[0]

        return spend_in_rounds(ask, wanted, [b.name for b in budgets])

    def writer_budget_entries(self, days: Sequence[str],
                              budgets: Sequence[Budget]) -> list[dict[str, Any]]:
        """`writer_entries(days)` without the breakdowns, every budget of `budgets` an
        entry lacks computed from its breakdown in SQL (otel_budget_writer_budget_entries;
        a malformed row comes whole, for the caller to name). NotImplementedError for
        a match SQL cannot mirror (read the entries)."""
        self._check_open()
        wanted = check_days(days)
        payload = _dumps(budget_specs(budgets))
        row = self._run(
            "reading writer entries with their budgets",
            lambda conn: _one_trip(conn, _BUDGET_ENTRIES,
                                   (self._statement_timeout, wanted, payload)),
            retry=True, single=True,
        )
        assert row is not None
        return entry_list(row[0])

    def writer_entries(
        self, days: Sequence[str], *, breakdown: bool = True
    ) -> list[dict[str, Any]]:
        self._check_open()
        wanted = check_days(days)
        row = self._run(
            "reading writer entries",
            lambda conn: _one_trip(conn, _ENTRIES, (self._statement_timeout, wanted, breakdown)),
            retry=True,
            single=True,
        )
        assert row is not None
        return entry_list(row[0])

    def nudges_on(self, day: str) -> list[dict[str, Any]]:
        """The nudge documents claimed on `day` (read_day lists them)."""
        self._check_open()
        (day,) = check_days([day])
        rows = self._run(f"reading the nudges of {day}",
                         lambda conn: conn.execute(_NUDGES, (NUDGE_TYPE, day)).fetchall(),
                         retry=True)
        return [as_object(content, patch_type=NUDGE_TYPE, name=name) for name, content in rows]

    def key_sums(self, days: Sequence[str], budgets: Sequence[str], *,
                 exclude_writer: str = "") -> tuple[dict[str, dict[str, float]], list[str]]:
        """Each per-key budget's spend per key, summed in SQL (see SummingStore):
        items that are no amount are skipped, so no row is named."""
        self._check_open()
        params = (list(days), list(budgets), exclude_writer)

        def work(conn: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
            # The store's statement timeout, as its own reads set it (this transaction only).
            conn.execute(PG_KEY_SUMS_SETTINGS, (self._statement_timeout,))
            try:
                with conn.transaction():  # a savepoint: a failed cast leaves the rest usable
                    return conn.execute(PG_KEY_SUMS, params).fetchall()
            except psycopg.errors.DataError:
                return conn.execute(PG_KEY_SUMS_CHECKED, params).fetchall()

        return key_sums_of_rows(self._run("reading the spend per key", work, retry=True)), []

    def insert_if_absent(self, patch_type: str, name: str, content: dict[str, Any]) -> bool:
        self._check_open()
        dumps_content(content)  # CheckpointError for NaN/inf, before any I/O
        payload = Jsonb(content, dumps=_dumps)
        try:
            row = self._run(
                f"claiming {patch_type}/{name}",
                lambda conn: conn.execute(_CLAIM, (patch_type, name, payload)).fetchone(),
                retry=False,
            )
        except _Ambiguous:
            # The connection broke after the claim was sent: it may have committed.
            # Try again; if the row is there now, it is ours exactly when it holds
            # our content (nudge documents name their instance and time).
            row = self._run(
                f"claiming {patch_type}/{name}",
                lambda conn: conn.execute(_CLAIM, (patch_type, name, payload)).fetchone(),
                retry=True,
            )
            if row is not None and row[0] is False:
                stored = self.get(patch_type, name)
                return stored is not None and stored == json.loads(_dumps(content))
        assert row is not None
        return bool(row[0])

    def replace_claim(self, patch_type: str, name: str, expected: dict[str, Any],
                      content: dict[str, Any]) -> bool:
        """Replace the row's content if it still holds `expected` (compare and set in
        otel_budget_claim_replace): True if this call replaced it."""
        self._check_open()
        dumps_content(content)
        params = (patch_type, name, Jsonb(expected, dumps=_dumps), Jsonb(content, dumps=_dumps))
        try:
            row = self._run(
                f"replacing {patch_type}/{name}",
                lambda conn: conn.execute(_CLAIM_REPLACE, params).fetchone(), retry=False)
        except _Ambiguous:
            # The answer was lost: it replaced exactly when the row holds our content now.
            stored = self.get(patch_type, name)
            return stored is not None and stored == json.loads(_dumps(content))
        assert row is not None
        return bool(row[0])

    # --- budget leases (otel_budget.leases) --------------------------------------------

    def lease_acquire(self, request: dict[str, Any]) -> dict[str, Any]:
        """Acquire, top up or renew a lease: one round trip to
        otel_budget_lease_acquire, which locks the budget window's lease row. A retry
        after a lost answer is safe: the grant replaces the writer's lease (it does
        not add to it), computed from the same reported use."""
        return self._lease_step(check_lease_request(request), _LEASE_ACQUIRE, "lease_acquire")

    def lease_release(self, request: dict[str, Any]) -> dict[str, Any]:
        """Give a lease back (otel_budget_lease_release); a retry finds it gone."""
        return self._lease_step(check_lease_request(request, release=True), _LEASE_RELEASE,
                                "lease_release")

    def _lease_step(self, req: dict[str, Any], query: pgsql.SQL, what: str) -> dict[str, Any]:
        self._check_open()
        payload = dumps_content(req)
        row = self._run(
            f"{what} on {LEASE_TYPE}/{lease_row_name(req['budget'], req['window'])}",
            lambda conn: _one_trip(conn, query, (self._statement_timeout, payload)),
            retry=True, single=True,
        )
        assert row is not None
        return lease_answer(row[0], f"otel_budget_{what}")

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            if self._pid == os.getpid():  # never close the parent's connections
                self._pool.close()

    # --- plumbing ------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError(f"{self!r} is closed")

    def _run(
        self, what: str, work: Callable[[psycopg.Connection[Any]], T], *, retry: bool,
        single: bool = False,
    ) -> T:
        """Run `work` in one transaction. A connection that broke under us (the
        server restarted, a pooler dropped it) is replaced and, when `retry`,
        the work is tried again, up to once per pooled connection."""
        if self._closed:
            raise StoreError(f"{self!r} is closed")
        # One deadline for the whole call, retries included: waiting for a pooled
        # connection, then each statement's round trip.
        deadline = time.monotonic() + self._pool_timeout + self._io_timeout
        attempts = self._max_size + 1 if retry else 1
        for attempt in range(attempts):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            hung = False
            try:
                # getconn/putconn rather than pool.connection(): its `with conn` only
                # commits or rolls back, and every transaction here is explicit
                # (conn.transaction()) or one message, over on return; putconn still
                # rolls back or discards a connection left otherwise.
                pool = self._current_pool()
                conn = pool.getconn(timeout=min(self._pool_timeout, left))
                try:
                    token = _WATCHDOG.arm(min(self._io_timeout, max(0.05, left)),
                                          _severer(conn))
                    try:
                        if single:  # `work` is one message: its own implicit transaction
                            result = work(conn)
                        else:
                            with conn.transaction():
                                conn.execute(_TIMEOUT, (self._statement_timeout,))
                                result = work(conn)
                        if self._identity is None:  # not learnt when this connection opened
                            with contextlib.suppress(psycopg.Error):
                                self._learn_identity(conn)
                        return result
                    finally:
                        hung = not _WATCHDOG.disarm(token)
                finally:
                    pool.putconn(conn)
            except psycopg.Error as exc:
                if exc.sqlstate in CHECKPOINT_SQLSTATES:
                    raise CheckpointError(self._message(exc)) from None
                if hung:
                    if not retry:
                        raise _Ambiguous(what) from None
                    raise StoreError(
                        f"PostgreSQL {self._redacted}: {what} failed: the server did not "
                        f"answer within {self._io_timeout:g} s"
                    ) from None
                broken = _is_broken_connection(exc)
                if broken and attempt + 1 < attempts:
                    _log.info("retrying %s on a new connection: %s", what, self._message(exc))
                    continue
                if broken and not retry:
                    raise _Ambiguous(what) from None
                raise StoreError(
                    f"PostgreSQL {self._redacted}: {what} failed: {self._message(exc)}"
                ) from None
        raise StoreError(
            f"PostgreSQL {self._redacted}: {what} failed: no answer within "
            f"{self._pool_timeout + self._io_timeout:g} s"
        )

    def _current_pool(self) -> Any:
        # A forked child (a pre-forking web server) must not share the parent's
        # sockets, and the pool's worker threads did not survive the fork.
        if self._pid != os.getpid():
            with self._lock:
                if self._pid != os.getpid():
                    self._pool = self._make_pool()
                    self._pid = os.getpid()
        return self._pool

    def _message(self, exc: BaseException) -> str:
        diag = getattr(exc, "diag", None)
        text = (diag.message_primary if diag is not None else None) or str(exc)
        text = " ".join(text.split())
        sqlstate = getattr(exc, "sqlstate", None)
        if _is_pool_timeout(exc):
            text += " (the server is unreachable, or every pooled connection is busy)"
        elif sqlstate == "42883" or (sqlstate == "42P01" and "quilt_patches" in text):
            text += f" ({MIGRATE_HINT})"
        elif sqlstate:
            text += f" [SQLSTATE {sqlstate}]"
        return scrub_known(text, self._password)


class _Watchdog:
    """One thread for every store's client-side deadlines: an operation arms it
    before its round trips and disarms it after; when a deadline passes first, its
    action (severing the connection's socket) runs, so the blocked read returns at
    once with an error, whatever the server is doing."""

    def __init__(self) -> None:
        self._cv = threading.Condition()
        self._armed: dict[int, tuple[float, Callable[[], None]]] = {}
        self._tokens = itertools.count()
        self._pid = -1
        #: When the thread wakes next by itself (inf: only when notified).
        self._wake_at = float("inf")

    def arm(self, seconds: float, action: Callable[[], None]) -> int:
        with self._cv:
            if self._pid != os.getpid():  # the thread did not survive a fork
                self._pid = os.getpid()
                self._armed.clear()
                self._wake_at = float("inf")
                threading.Thread(target=self._loop, name="OtelBudgetPgWatchdog",
                                 daemon=True).start()
            token = next(self._tokens)
            at = time.monotonic() + seconds
            self._armed[token] = (at, action)
            # Woken only for a deadline earlier than the one it sleeps until: not once
            # per operation (a thread switch each time, about a tenth of a
            # millisecond of a merge's client CPU), about once per deadline's length.
            if at < self._wake_at:
                self._cv.notify()
            return token

    def disarm(self, token: int) -> bool:
        """True if the deadline had not passed (its action did not run)."""
        with self._cv:
            return self._armed.pop(token, None) is not None

    def _loop(self) -> None:
        with self._cv:
            while True:
                now = time.monotonic()
                due = [t for t, (at, _) in self._armed.items() if at <= now]
                for token in due:
                    _, action = self._armed.pop(token)
                    # Under the lock: once disarm() returns, the action cannot run.
                    try:
                        action()
                    except Exception:  # pragma: no cover - a best-effort sever
                        _log.debug("otel_budget: severing a hung connection failed",
                                   exc_info=True)
                nxt = min((at for at, _ in self._armed.values()), default=None)
                self._wake_at = float("inf") if nxt is None else nxt
                self._cv.wait(None if nxt is None else max(0.0, nxt - time.monotonic()))


_WATCHDOG = _Watchdog()


def _severer(conn: psycopg.Connection[Any]) -> Callable[[], None]:
    def sever() -> None:
        fd = conn.pgconn.socket
        # shutdown() acts on the socket itself (shared by every descriptor of it):
        # the blocked reader sees end-of-file; the pool then discards the connection.
        with socket.socket(fileno=os.dup(fd)) as sock:
            sock.shutdown(socket.SHUT_RDWR)
    return sever


def _parse_conninfo(conninfo: str, redacted: str) -> dict[str, str]:
    """The DSN's parameters, parsed by libpq; a DSN it refuses is a ConfigError here
    rather than a message quoting part of it (a password, say) in the pool's logs."""
    from psycopg import conninfo as pgconninfo

    try:
        return {k: str(v) for k, v in pgconninfo.conninfo_to_dict(conninfo).items()}
    except psycopg.Error:
        raise ConfigError(
            f"store: the PostgreSQL connection string {redacted!r} does not parse (a value "
            "with blanks or quotes must be single-quoted, or use a URL)"
        ) from None


class _Ambiguous(Exception):
    """A write whose outcome is unknown: the connection broke after sending it."""


def _login_name() -> str:
    import getpass

    try:
        return getpass.getuser()
    except Exception:  # no name for this uid
        return str(os.getuid())


def _one_trip(conn: psycopg.Connection[Any], query: pgsql.SQL, params: tuple[Any, ...]) -> Any:
    """Run a multi-statement query as one simple-query message; the last result's row."""
    with psycopg.ClientCursor(conn) as cur:
        cur.execute(query, params, prepare=False)
        while cur.nextset():
            pass
        return cur.fetchone()


def _write_trip(conn: psycopg.Connection[Any], head: bytes, entry: bytes) -> Any:
    """otel_budget_merge_writer or otel_budget_retire_writer (`head`: the statements
    up to the argument) as one simple-query message: the function's answer, parsed.

    Below psycopg's cursor: libpq quotes the entry (PQescapeLiteral, as a ClientCursor
    would) and PQexec sends the text and waits, releasing the GIL. A cursor's query
    parsing, adaptation and result machinery took a third of a merge's client CPU
    (about 0.1 ms), and these two calls are a writer's every checkpoint. Errors are
    psycopg's own (errors.error_from_result, as a cursor raises them), so _run tells
    them apart as before; the watchdog's sever ends a wait here as in a cursor's.
    Unlike a cursor's wait, PQexec's is not cut short by Ctrl-C: KeyboardInterrupt
    comes when the call returns (a merge's milliseconds; at worst the deadline)."""
    pgconn = conn.pgconn
    result = pgconn.exec_(head + pq.Escaping(pgconn).escape_literal(entry) + b"::jsonb)")
    status = result.status
    if status == pq.ExecStatus.TUPLES_OK:
        value = result.get_value(0, 0)  # a scalar function: one row
        return None if value is None else json.loads(value)
    if status != pq.ExecStatus.FATAL_ERROR:
        raise psycopg.InterfaceError(f"the server answered {pq.ExecStatus(status).name}, expected a row")
    if (pgconn.status == pq.ConnStatus.BAD
            and not result.error_field(pq.DiagnosticField.SQLSTATE)):
        # The connection is gone (the server closed it, or the watchdog severed it):
        # an OperationalError with no SQLSTATE, as psycopg reports a lost connection.
        raise psycopg.OperationalError(result.get_error_message())
    raise psycopg.errors.error_from_result(result, encoding=conn.info.encoding)


def _is_pool_timeout(exc: BaseException) -> bool:
    from psycopg_pool import PoolTimeout

    return isinstance(exc, PoolTimeout)


def _is_broken_connection(exc: psycopg.Error) -> bool:
    if _is_pool_timeout(exc):
        return False  # no connection at all: nothing to retry on right now
    sqlstate = exc.sqlstate or ""
    # 57P01-03: admin shutdown / crash shutdown / cannot connect now; 08: connection.
    return isinstance(exc, psycopg.OperationalError) and (
        sqlstate.startswith(("08", "57P")) or not sqlstate
    )
