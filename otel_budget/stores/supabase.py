"""Supabase store: supabase-py against the Data API (PostgREST), calling the SQL
functions of `schema.sql` as RPCs (run the migration in the SQL editor or with
`otel-budget migrate`).

Why the RPCs: a REST upsert of the whole document is a blind overwrite, and a
read-modify-write through it loses concurrent replicas' updates; the function
stores one writer's entry inside the database, atomically, only if its seq is newer.

supabase-py is given an `httpx.Client` of ours: explicit timeouts, HTTP/1.1 (its
default HTTP/2 connections drop when idle), and a hook that notes each response's
status, since supabase-py's `APIError` does not carry it. supabase-py never
retries POST (every RPC here is one), so this store retries its calls itself,
with bounded exponential backoff, on network errors and 5xx answers; a 4xx is
final. That is safe because an entry with the same seq applies at most once, and a
claim that may have landed is resolved by reading the row back.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

import httpx

from ..errors import CheckpointError, ConfigError, StoreError
from ..redact import scrub_known
from .base import (
    DEFAULT_STALE_AFTER_S,
    ContextStore,
    ReapSchedule,
    check_reap_args,
    dumps_content,
)
from .entries import DayTotals, MergeResult, check_days
from .keysums import sum_entry_keys
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

TABLE = "quilt_patches"
URL_ENV = "SUPABASE_URL"
KEY_ENVS = ("SUPABASE_SERVICE_ROLE_KEY", "SUPABASE_KEY")


def _checked_specs(budgets: Sequence[Budget]) -> list[dict[str, Any]]:
    """The budgets as the SQL functions take them (budget_specs), refused with a
    CheckpointError before any I/O if they are not JSON (supabase-py would fail
    later, inside the request)."""
    specs = budget_specs(budgets)
    dumps_content({"budgets": specs})
    return specs


class SupabaseStore(ContextStore):
    """`supabase://`: the project URL from SUPABASE_URL and the service role key
    from SUPABASE_SERVICE_ROLE_KEY (or SUPABASE_KEY). Or pass `url` and `key`, or
    an existing supabase-py `client` (which the store then does not close)."""

    def __init__(
        self,
        *,
        url: str | None = None,
        key: str | None = None,
        client: Any = None,
        timeout_s: float = 10.0,
        connect_timeout_s: float = 5.0,
        max_attempts: int = 4,
        backoff_s: float = 0.25,
        max_backoff_s: float = 4.0,
        sleep: Callable[[float], None] = time.sleep,
        stale_after_s: float | None = DEFAULT_STALE_AFTER_S,
    ) -> None:
        self._reaps = ReapSchedule(stale_after_s)
        if max_attempts < 1:
            raise ConfigError("store: max_attempts must be >= 1")
        self._max_attempts = max_attempts
        self._backoff_s = backoff_s
        self._max_backoff_s = max_backoff_s
        self._sleep = sleep
        self._call_timeout = float(timeout_s) + float(connect_timeout_s)
        self._local = threading.local()
        self._http: httpx.Client | None = None
        self._pid = os.getpid()
        self._closed = False
        if client is not None:
            self._client = client
            self._key = key
            self._where = _host_of(str(getattr(client, "supabase_url", url or "")))
            _warn_if_following_redirects(client, self._where)
            return
        if not url or not key:
            raise ConfigError(
                f"store: supabase:// needs {URL_ENV} and {KEY_ENVS[0]} (or {KEY_ENVS[1]})"
            )
        self._key = key
        self._where = _host_of(url)
        self._url = url
        self._timeout = httpx.Timeout(timeout_s, connect=connect_timeout_s)
        self._lock = threading.Lock()
        self._client = self._build_client()

    def _build_client(self) -> Any:
        try:
            import supabase
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise ConfigError(
                'store: supabase:// needs supabase-py: pip install "otel-budget[supabase]"'
            ) from exc
        assert self._key is not None
        self._pid = os.getpid()
        self._http = httpx.Client(
            timeout=self._timeout,
            http2=False,
            # A redirect would carry the service key (apikey, Authorization) to
            # wherever it points: none is followed, and one is an error (below).
            follow_redirects=False,
            event_hooks={"response": [self._note_status]},
        )
        options: dict[str, Any] = {
            "httpx_client": self._http,
            "auto_refresh_token": False,
            "persist_session": False,
        }
        if "postgrest_client_retry" in {f.name for f in dataclasses.fields(supabase.ClientOptions)}:
            # Its retries (GET only, sleeping 1, 2, 4 s) would stack on ours.
            options["postgrest_client_retry"] = False
        try:
            return supabase.create_client(
                self._url, self._key, options=supabase.ClientOptions(**options)
            )
        except Exception as exc:
            self._http.close()
            raise ConfigError(
                f"store: cannot create the Supabase client for {self._where}: "
                f"{self._scrub(str(exc))}"
            ) from None

    def _current_client(self) -> Any:
        # A forked child must not share the parent's keep-alive sockets.
        if self._http is not None and self._pid != os.getpid():
            with self._lock:
                if self._pid != os.getpid():
                    self._client = self._build_client()
        return self._client

    @classmethod
    def from_url(cls, url: str) -> SupabaseStore:
        """`supabase://` reads the environment; `supabase://<project>.supabase.co`
        names the project's host (https) and still takes the key from it."""
        host = urlsplit(url).netloc
        project_url = f"https://{host}" if host else os.environ.get(URL_ENV, "").strip()
        key = next((v for name in KEY_ENVS if (v := os.environ.get(name, "").strip())), "")
        if not project_url:
            raise ConfigError(f"store: supabase:// needs the project URL in {URL_ENV}")
        if not key:
            raise ConfigError(
                f"store: supabase:// needs the service role key in {KEY_ENVS[0]} (or {KEY_ENVS[1]})"
            )
        return cls(url=project_url, key=key)

    def __repr__(self) -> str:
        return f"SupabaseStore({self._where!r})"

    @property
    def spool_key(self) -> str:
        """Names the project for the local spool, the same in every process."""
        return f"supabase:{self._where}"

    @property
    def legacy_spool_key(self) -> str:
        """What version 2 keyed this project's spool by."""
        return self.spool_key

    def identity(self) -> str:
        """The project (its host), for the local spool."""
        return self.spool_key

    @property
    def known_identity(self) -> str:
        return self.spool_key

    # --- the PatchStore protocol ---------------------------------------------------

    def get(self, patch_type: str, name: str) -> dict[str, Any] | None:
        self._check_open()
        response = self._call(
            f"reading {patch_type}/{name}",
            lambda: self._current_client().table(TABLE)
            .select("content")
            .eq("patch_type", patch_type)
            .eq("name", name)
            .limit(1)
            .execute(),
        )
        rows = response.data
        if not rows:
            return None
        return as_object(rows[0].get("content"), patch_type=patch_type, name=name)

    def merge_writer(self, entry: dict[str, Any]) -> MergeResult:
        result = self._write_writer(entry, "otel_budget_merge_writer", "merging")
        if self._reaps.due():
            self._reap_quietly()
        return result

    def reap_stale(self, stale_after_s: float, *, limit: int = 100) -> list[str]:
        """Retire live writer rows not written for `stale_after_s` seconds (the
        database's clock), at most `limit`: otel_budget_reap (see PatchStore)."""
        self._check_open()
        seconds, limit = check_reap_args(stale_after_s, limit)
        return reap_one_at_a_time(lambda: self._call(
            "reaping stale writer rows",
            lambda: self._current_client().rpc(
                "otel_budget_reap", {"p_stale_after_s": seconds, "p_limit": 1}).execute(),
        ).data, limit)

    def _reap_quietly(self) -> None:
        assert self._reaps.stale_after_s is not None
        reap_quietly(self.reap_stale, self._reaps.stale_after_s)

    def retire_writer(self, entry: dict[str, Any]) -> MergeResult:
        # Retried like a merge: a retired row is never added again.
        return self._write_writer(entry, "otel_budget_retire_writer", "retiring")

    def _write_writer(self, entry: dict[str, Any], function: str, verb: str) -> MergeResult:
        self._check_open()
        checked, _ = prepare_writer_entry(entry)
        day = checked["date"]
        response = self._call(
            f"{verb} {WRITER_TYPE}/{writer_row_name(day, checked['writer_id'])}",
            lambda: self._current_client().rpc(function, {"p_entry": checked}).execute(),
        )
        return merge_result(response.data, day)

    def day_totals(self, days: Sequence[str]) -> dict[str, DayTotals]:
        self._check_open()
        wanted = check_days(days)
        response = self._call(
            "reading day totals",
            lambda: self._current_client()
            .rpc("otel_budget_day_totals", {"p_days": wanted})
            .execute(),
        )
        return days_totals(wanted, response.data)

    def budget_day_spend(self, days: Sequence[str], budgets: Sequence[Budget], *,
                         closed_before: str) -> dict[str, dict[str, float]]:
        """As PostgresStore.budget_day_spend: otel_budget_budget_spend over RPC."""
        self._check_open()
        wanted = check_days(days)
        (closed_before,) = check_days([closed_before])
        specs = _checked_specs(budgets)

        def ask(left: list[str]) -> Any:
            return self._call(
                "reading the budgets' spend of closed days",
                lambda: self._current_client().rpc("otel_budget_budget_spend", {
                    "p_days": left, "p_budgets": specs, "p_closed_before": closed_before,
                }).execute(),
            ).data

        return spend_in_rounds(ask, wanted, [b.name for b in budgets])

    def writer_budget_entries(self, days: Sequence[str],
                              budgets: Sequence[Budget]) -> list[dict[str, Any]]:
        """As PostgresStore.writer_budget_entries: otel_budget_writer_budget_entries
        over RPC (a POST: it keeps what it computes)."""
        self._check_open()
        wanted = check_days(days)
        specs = _checked_specs(budgets)
        response = self._call(
            "reading writer entries with their budgets",
            lambda: self._current_client().rpc("otel_budget_writer_budget_entries", {
                "p_days": wanted, "p_budgets": specs}).execute(),
        )
        return entry_list(response.data)

    def writer_entries(
        self, days: Sequence[str], *, breakdown: bool = True
    ) -> list[dict[str, Any]]:
        self._check_open()
        wanted = check_days(days)
        response = self._call(
            "reading writer entries",
            lambda: self._current_client()
            .rpc("otel_budget_writer_entries", {"p_days": wanted, "p_breakdown": breakdown})
            .execute(),
        )
        return entry_list(response.data)

    def nudges_on(self, day: str) -> list[dict[str, Any]]:
        """The nudge documents claimed on `day` (read_day lists them)."""
        self._check_open()
        (day,) = check_days([day])
        response = self._call(
            f"reading the nudges of {day}",
            lambda: self._current_client().rpc("otel_budget_nudges_on", {"p_day": day}).execute(),
        )
        rows = response.data if isinstance(response.data, list) else []
        return [as_object(row, patch_type=NUDGE_TYPE, name=f"nudge of {day}") for row in rows]

    def key_sums(self, days: Sequence[str], budgets: Sequence[str], *,
                 exclude_writer: str = "") -> tuple[dict[str, dict[str, float]], list[str]]:
        """Each per-key budget's spend per key, summed here over the writer entries
        (see SummingStore; rows whose by_key is malformed are named)."""
        return sum_entry_keys(self.writer_entries(days, breakdown=False), budgets,
                              exclude_writer=exclude_writer)

    def insert_if_absent(self, patch_type: str, name: str, content: dict[str, Any]) -> bool:
        return self._claim_rpc("otel_budget_claim", f"claiming {patch_type}/{name}", {
            "p_type": patch_type, "p_name": name, "p_content": content})

    def replace_claim(self, patch_type: str, name: str, expected: dict[str, Any],
                      content: dict[str, Any]) -> bool:
        """Replace the row's content if it still holds `expected` (compare and set in
        the otel_budget_claim_replace RPC): True if this call replaced it."""
        return self._claim_rpc("otel_budget_claim_replace", f"replacing {patch_type}/{name}", {
            "p_type": patch_type, "p_name": name, "p_expected": expected, "p_content": content})

    def _claim_rpc(self, function: str, what: str, params: dict[str, Any]) -> bool:
        """Call a claim RPC (true: this call wrote `p_content`; false: the row was
        taken, or held something else)."""
        self._check_open()
        content = params["p_content"]
        dumps_content(content)  # CheckpointError for NaN/inf, before any I/O
        attempts: list[int] = []

        def call() -> Any:
            attempts.append(1)
            return self._current_client().rpc(function, params).execute()

        answer = self._call(what, call).data
        if answer is not True and answer is not False:
            raise StoreError(
                f"Supabase {self._where}: {function} answered {answer!r:.80}, "
                "expected true or false (is the migration applied?)"
            )
        if not answer and len(attempts) > 1:
            # An earlier attempt may have written the row before its answer was lost;
            # it did exactly when the row holds our content.
            stored = self.get(params["p_type"], params["p_name"])
            return stored is not None and stored == json.loads(dumps_content(content))
        return answer

    # --- budget leases (otel_budget.leases) --------------------------------------------

    def lease_acquire(self, request: dict[str, Any]) -> dict[str, Any]:
        """Acquire, top up or renew a lease through the otel_budget_lease_acquire RPC
        (retried like the merge: a repeated grant replaces, never adds)."""
        req = check_lease_request(request)
        response = self._call(
            f"lease_acquire on {LEASE_TYPE}/{lease_row_name(req['budget'], req['window'])}",
            lambda: self._current_client()
            .rpc("otel_budget_lease_acquire", {"p_request": req}).execute(),
        )
        return lease_answer(response.data, "otel_budget_lease_acquire")

    def lease_release(self, request: dict[str, Any]) -> dict[str, Any]:
        """Give a lease back through the otel_budget_lease_release RPC."""
        req = check_lease_request(request, release=True)
        response = self._call(
            f"lease_release on {LEASE_TYPE}/{lease_row_name(req['budget'], req['window'])}",
            lambda: self._current_client()
            .rpc("otel_budget_lease_release", {"p_request": req}).execute(),
        )
        return lease_answer(response.data, "otel_budget_lease_release")

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            if self._http is not None and self._pid == os.getpid():
                self._http.close()

    # --- plumbing ------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError(f"{self!r} is closed")

    def _note_status(self, response: httpx.Response) -> None:
        self._local.status = response.status_code
        if response.is_redirect:
            raise _RedirectRefused(
                f"the API answered {response.status_code} with a redirect; not followed "
                "(it would send the service key elsewhere): check the project URL",
                request=response.request,
            )

    def _call(self, what: str, request: Callable[[], T]) -> T:
        from postgrest.exceptions import APIError

        if self._closed:
            raise StoreError(f"{self!r} is closed")
        # Retries stop at the call's deadline; one attempt is bounded by the
        # client's connect and read timeouts.
        deadline = time.monotonic() + self._call_timeout
        for attempt in range(1, self._max_attempts + 1):
            self._local.status = None
            try:
                return request()
            except APIError as exc:
                if (exc.code or "") in CHECKPOINT_SQLSTATES:
                    raise CheckpointError(self._scrub(exc.message or str(exc))) from None
                status = self._local.status or _status_for(exc.code)
                problem = self._describe_api_error(exc, status)
                retryable = status is not None and status >= 500
            except httpx.HTTPError as exc:
                problem = (str(exc) if isinstance(exc, _RedirectRefused)
                           else f"{type(exc).__name__}: {exc}")
                retryable = isinstance(exc, httpx.TransportError)
            if retryable and time.monotonic() >= deadline:
                retryable = False  # the call's deadline: no retry starts after it
            if not retryable or attempt == self._max_attempts:
                raise StoreError(
                    f"Supabase {self._where}: {what} failed"
                    f"{f' after {attempt} attempts' if attempt > 1 else ''}: {self._scrub(problem)}"
                ) from None
            delay = min(self._max_backoff_s, self._backoff_s * 2 ** (attempt - 1))
            delay *= random.uniform(0.5, 1.0)  # spread replicas retrying together
            delay = max(0.0, min(delay, deadline - time.monotonic()))
            _log.info(
                "%s failed (%s); retry %d in %.2fs", what, self._scrub(problem), attempt, delay
            )
            self._sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    def _describe_api_error(self, exc: Any, status: int | None) -> str:
        code = exc.code or (str(status) if status else "error")
        text = f"{code} {exc.message or ''}".strip()
        if exc.code == "PGRST202" or exc.code == "42883":
            text += f" ({MIGRATE_HINT})"
        elif exc.code == "42501" or status in (401, 403):
            text += f" (use the service role key: {KEY_ENVS[0]})"
        elif exc.details and status is not None and status >= 500:
            text += f" ({' '.join(str(exc.details).split())[:200]})"
        return text

    def _scrub(self, text: str) -> str:
        return scrub_known(text, self._key)


def _warn_if_following_redirects(client: Any, where: str) -> None:
    """A client passed in is the caller's to configure; say so when it would carry
    the key along a redirect (ours never follow one)."""
    try:
        session = getattr(getattr(client, "postgrest", None), "session", None)
    except Exception:  # a client of another shape: nothing to check
        return
    if isinstance(session, httpx.Client) and session.follow_redirects:
        _log.warning("otel_budget: the Supabase client passed for %s follows redirects, which "
                     "would send its key to wherever one points; build its httpx client with "
                     "follow_redirects=False", where)


class _RedirectRefused(httpx.RequestError):
    """A 3xx answer: final (never retried, never followed)."""


def _status_for(code: str | None) -> int | None:
    """The HTTP status PostgREST answers an error code with (docs.postgrest.org,
    "Errors"), for clients whose responses we cannot see."""
    if not code:
        return None
    if code.isdigit() and len(code) == 3:  # a non-JSON body: supabase-py puts the status here
        return int(code)
    if code.startswith("PGRST"):
        return 503 if code in ("PGRST000", "PGRST001", "PGRST002") else (
            504 if code == "PGRST003" else 400
        )
    exact = {"23503": 409, "23505": 409, "25006": 405, "53400": 500, "P0001": 400,
             "42883": 404, "42P01": 404, "42P17": 500, "42501": 401}
    if code in exact:
        return exact[code]
    prefixes = {"08": 503, "09": 500, "0L": 403, "0P": 403, "25": 500, "28": 403, "2D": 500,
                "38": 500, "39": 500, "3B": 500, "40": 500, "53": 503, "54": 500, "55": 500,
                "57": 500, "58": 500, "F0": 500, "HV": 500, "P0": 500, "XX": 500}
    return prefixes.get(code[:2], 400)


def _host_of(url: str) -> str:
    """The project's host[:port]: never the user info a URL may carry."""
    try:
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        port = parts.port
    except ValueError:
        return "<supabase>"
    if not host:
        return "<supabase>"
    return f"{host}:{port}" if port else host

