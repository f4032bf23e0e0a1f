"""A PostgREST-shaped HTTP gateway: a test double for the hosted gateway only.

Supabase's Data API is PostgREST behind an API gateway; neither runs here (no
Docker, no PostgREST binary). This double answers the handful of requests
supabase-py sends for the Supabase store, and forwards each, as PostgREST would,
to the same real PostgreSQL the other tests use:

- `GET /rest/v1/<table>?select=a,b&col=eq.value&limit=n` -> one READ ONLY
  transaction running `select a, b from public.<table> where col = 'value' limit n`;
- `POST /rest/v1/rpc/<function>` with a JSON object body -> one transaction
  running `select public.<function>(arg := value, ...)`, the arguments typed from
  `pg_proc` through `json_to_record`, which is PostgREST's own technique (so a
  JSON array argument becomes `text[]`, as `otel_budget_day_totals(p_days)` and
  `otel_budget_writer_entries(p_days, p_breakdown)` need; `otel_budget_merge_writer`
  takes one jsonb object, `otel_budget_claim` three arguments).

Each request must carry `apikey` and `Authorization: Bearer <key>`; the bearer
key picks the role (`SET LOCAL ROLE service_role` or `anon`), so grants and Row
Level Security are the database's, exactly as on Supabase. Errors are answered
with PostgREST's JSON body (`code`, `message`, `details`, `hint`) and its status
for the SQLSTATE (docs.postgrest.org, "Errors").

It is a PostgREST-compatible subset, not PostgREST: it proves our SQL, grants, RLS
and supabase-py's wire format and parsing, not PostgREST-version quirks. It listens
on a real loopback port, so other processes can use it too. `faults` injects
what a real gateway does on a bad day: 5xx answers, dropped connections, and
answers lost after the database committed.

Fixtures: `supabase_gateway` (session), `supabase_env` (SUPABASE_URL and
SUPABASE_SERVICE_ROLE_KEY set for `supabase://`), `supabase_store_factory`.
"""

from __future__ import annotations

import contextlib
import json
import re
import secrets
import threading
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import psycopg
import pytest
from psycopg import sql
from psycopg_pool import ConnectionPool

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

# PostgREST's SQLSTATE -> HTTP status table (docs/references/errors.rst).
_EXACT = {"23503": 409, "23505": 409, "25006": 405, "53400": 500, "P0001": 400,
          "42883": 404, "42P01": 404, "42P17": 500}
_PREFIX = {"08": 503, "09": 500, "0L": 403, "0P": 403, "25": 500, "28": 403, "2D": 500,
           "38": 500, "39": 500, "3B": 500, "40": 500, "53": 503, "54": 500, "55": 500,
           "57": 500, "58": 500, "F0": 500, "HV": 500, "P0": 500, "XX": 500}


def status_for_sqlstate(code: str, *, authenticated: bool) -> int:
    if code == "42501":
        return 403 if authenticated else 401
    return _EXACT.get(code) or _PREFIX.get(code[:2], 400)


@dataclass
class Faults:
    """What the next matching requests suffer, in order. `kind` is one of
    `status` (answer `status` without touching the database), `drop` (close the
    connection without answering), `lost_answer` (run the request, commit, then
    answer 502 as a proxy whose upstream vanished would)."""

    queue: deque[tuple[str, str, int, str]] = field(default_factory=deque)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, kind: str, *, path_contains: str = "", status: int = 503, times: int = 1,
            message: str = "injected fault") -> None:
        """`message` may contain `{apikey}`: a careless proxy echoing the request's key."""
        with self.lock:
            for _ in range(times):
                self.queue.append((kind, path_contains, status, message))

    def take(self, path: str) -> tuple[str, int, str] | None:
        with self.lock:
            for item in list(self.queue):
                kind, needle, status, message = item
                if needle in path:
                    self.queue.remove(item)
                    return kind, status, message
        return None

    def clear(self) -> None:
        with self.lock:
            self.queue.clear()


class SupabaseGateway:
    def __init__(self, database_url: str) -> None:
        self.service_key = "test-service-role-" + secrets.token_hex(16)
        self.anon_key = "test-anon-" + secrets.token_hex(16)
        self._roles = {self.service_key: "service_role", self.anon_key: "anon"}
        self.faults = Faults()
        self.requests: list[tuple[str, str]] = []
        self._pool = ConnectionPool(
            database_url, min_size=2, max_size=16, open=True, name="gateway-double",
            kwargs={"autocommit": False, "prepare_threshold": None},
        )
        self._pool.wait(timeout=30)
        gateway = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Headers and body go out in separate writes; with Nagle on, the body
            # waits for a delayed ACK and every request takes 40 ms.
            disable_nagle_algorithm = True

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                gateway._handle(self, "GET")

            def do_POST(self) -> None:
                gateway._handle(self, "POST")

            def do_PATCH(self) -> None:
                gateway._handle(self, "PATCH")

            def do_DELETE(self) -> None:
                gateway._handle(self, "DELETE")

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True,
                                        name="supabase-gateway-double")
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._pool.close()

    # --- request handling --------------------------------------------------------------

    def _handle(self, req: BaseHTTPRequestHandler, method: str) -> None:
        length = int(req.headers.get("Content-Length") or 0)
        body = req.rfile.read(length) if length else b""
        parts = urlsplit(req.path)
        self.requests.append((method, req.path))
        fault = self.faults.take(req.path)
        if fault is not None and fault[0] == "drop":
            req.close_connection = True
            with contextlib.suppress(OSError):
                req.connection.shutdown(2)
            return
        if fault is not None and fault[0] == "status":
            message = fault[2].replace("{apikey}", req.headers.get("apikey") or "")
            self._send(req, fault[1], {"message": message, "code": None,
                                       "details": None, "hint": None})
            return
        role = self._authorise(req)
        if isinstance(role, tuple):
            self._send(req, *role)
            return
        profile = req.headers.get("Accept-Profile" if method == "GET" else "Content-Profile")
        if profile not in (None, "public"):
            self._send(req, 406, _error("PGRST106", f"The schema must be one of: public, not {profile}"))
            return
        path = parts.path
        try:
            if method == "GET" and path.startswith("/rest/v1/") and "/rpc/" not in path:
                status, payload = self._select(role, path.removeprefix("/rest/v1/"), parts.query)
            elif method == "POST" and path.startswith("/rest/v1/rpc/"):
                status, payload = self._rpc(role, path.removeprefix("/rest/v1/rpc/"), body)
            else:
                status, payload = 405, _error(
                    "PGRST117", f"Unsupported HTTP verb or path in this test double: {method} {path}"
                )
        except psycopg.Error as exc:
            code = exc.sqlstate or "XX000"
            diag = exc.diag
            status = status_for_sqlstate(code, authenticated=role != "anon")
            payload = {"code": code, "message": diag.message_primary or str(exc),
                       "details": diag.message_detail, "hint": diag.message_hint}
        if fault is not None and fault[0] == "lost_answer":
            self._send(req, fault[1], {"message": "upstream connection lost (injected)"})
            return
        self._send(req, status, payload)

    def _authorise(self, req: BaseHTTPRequestHandler) -> str | tuple[int, Any]:
        apikey = req.headers.get("apikey")
        if apikey not in self._roles:
            # The gateway (Kong) answers this itself, without a PostgREST code.
            return 401, {"message": "Invalid API key",
                         "hint": "Double check your Supabase `anon` or `service_role` API key."}
        auth = req.headers.get("Authorization", "")
        token = auth.removeprefix("Bearer ").strip() if auth.startswith("Bearer ") else None
        if token not in self._roles:
            return 401, _error("PGRST301", "JWT could not be decoded")
        return self._roles[token]

    def _select(self, role: str, table: str, query: str) -> tuple[int, Any]:
        if not _IDENT.match(table):
            return 404, _error("PGRST205", f"Could not find the table 'public.{table}'")
        columns: list[sql.Composable] = [sql.SQL("*")]
        where: list[sql.Composable] = []
        args: list[Any] = []
        limit: int | None = None
        for key, value in parse_qsl(query, keep_blank_values=True):
            if key == "select":
                names = [c.strip() for c in value.split(",") if c.strip()]
                if not names or not all(_IDENT.match(n) or n == "*" for n in names):
                    return 400, _error("PGRST100", f"unsupported select in this double: {value}")
                columns = [sql.SQL("*") if n == "*" else sql.Identifier(n) for n in names]
            elif key == "limit":
                limit = int(value)
            elif key in ("order", "offset"):
                return 400, _error("PGRST100", f"{key} is not implemented by this test double")
            else:
                if not _IDENT.match(key) or not value.startswith("eq."):
                    return 400, _error("PGRST100", f"only col=eq.value filters: {key}={value}")
                where.append(sql.SQL("{} = %s").format(sql.Identifier(key)))
                args.append(value.removeprefix("eq."))
        query_sql = sql.SQL("select {cols} from public.{table}").format(
            cols=sql.SQL(", ").join(columns), table=sql.Identifier(table))
        if where:
            query_sql += sql.SQL(" where ") + sql.SQL(" and ").join(where)
        if limit is not None:
            query_sql += sql.SQL(" limit {}").format(sql.Literal(limit))
        wrapped = sql.SQL("select coalesce(json_agg(t), '[]'::json) from ({}) as t").format(query_sql)
        with self._transaction(role, read_only=True) as conn:
            row = conn.execute(wrapped, args).fetchone()
        return 200, row[0] if row else []

    def _rpc(self, role: str, function: str, body: bytes) -> tuple[int, Any]:
        try:
            params = json.loads(body or b"{}")
        except ValueError:
            return 400, _error("PGRST102", "Empty or invalid json")
        if not isinstance(params, dict) or not _IDENT.match(function):
            return 400, _error("PGRST102", "the body must be a JSON object")
        with self._transaction(role, read_only=False) as conn:
            candidates = conn.execute(
                "select p.proargnames, "
                "       array(select format_type(t, null) from unnest(p.proargtypes) as t), "
                "       p.pronargdefaults "
                "from pg_proc p join pg_namespace n on n.oid = p.pronamespace "
                "where n.nspname = 'public' and p.proname = %s",
                (function,),
            ).fetchall()
            match = next(
                (
                    (list(names or []), list(types))
                    for names, types, ndefaults in candidates
                    if set((names or [])[: len(names or []) - ndefaults]) <= set(params)
                    <= set(names or [])
                ),
                None,
            )
            if match is None:
                return 404, _error(
                    "PGRST202",
                    f"Could not find the function public.{function}({', '.join(sorted(params))}) "
                    "in the schema cache",
                )
            names, types = match
            given = [(n, t) for n, t in zip(names, types, strict=True) if n in params]
            call = sql.SQL(
                "select to_jsonb(public.{fn}({args})) from json_to_record(%s::json) as b({cols})"
            ).format(
                fn=sql.Identifier(function),
                args=sql.SQL(", ").join(
                    sql.SQL("{} := b.{}").format(sql.Identifier(n), sql.Identifier(n))
                    for n, _ in given
                ),
                cols=sql.SQL(", ").join(
                    sql.SQL("{} {}").format(sql.Identifier(n), sql.SQL(t)) for n, t in given
                ),
            )
            row = conn.execute(call, (json.dumps(params),)).fetchone()
        return 200, row[0] if row else None

    @contextlib.contextmanager
    def _transaction(self, role: str, *, read_only: bool) -> Iterator[psycopg.Connection[Any]]:
        with self._pool.connection() as conn, conn.transaction():
            if read_only:
                conn.execute("set transaction read only")
            conn.execute(sql.SQL("set local role {}").format(sql.Identifier(role)))
            yield conn

    @staticmethod
    def _send(req: BaseHTTPRequestHandler, status: int, payload: Any) -> None:
        data = json.dumps(payload).encode()
        try:
            req.send_response(status)
            req.send_header("Content-Type", "application/json; charset=utf-8")
            req.send_header("Content-Length", str(len(data)))
            req.end_headers()
            req.wfile.write(data)
        except OSError:
            req.close_connection = True


def _error(code: str, message: str) -> dict[str, Any]:
    return {"code": code, "message": message, "details": None, "hint": None}


@pytest.fixture(scope="session")
def supabase_gateway(pg_url: str) -> Iterator[SupabaseGateway]:
    gateway = SupabaseGateway(pg_url)
    try:
        yield gateway
    finally:
        gateway.close()


@pytest.fixture
def supabase_env(
    supabase_gateway: SupabaseGateway, monkeypatch: pytest.MonkeyPatch
) -> Iterator[SupabaseGateway]:
    """SUPABASE_URL and SUPABASE_SERVICE_ROLE_KEY pointing at the gateway double."""
    supabase_gateway.faults.clear()
    monkeypatch.setenv("SUPABASE_URL", supabase_gateway.url)
    monkeypatch.setenv("SUPABASE_SERVICE_ROLE_KEY", supabase_gateway.service_key)
    monkeypatch.delenv("SUPABASE_KEY", raising=False)
    yield supabase_gateway
    supabase_gateway.faults.clear()


@pytest.fixture
def supabase_store_factory(
    supabase_gateway: SupabaseGateway, pg_clean: str
) -> Iterator[Callable[..., Any]]:
    """Makes SupabaseStores talking to the gateway double (service key unless `key`),
    on the emptied `pg_url` database; closes them afterwards. This is the
    "supabase" entry of tests/support/store_kinds.py."""
    from otel_budget.stores.supabase import SupabaseStore

    made: list[SupabaseStore] = []
    supabase_gateway.faults.clear()

    def make(*, key: str | None = None, **kwargs: Any) -> SupabaseStore:
        kwargs.setdefault("sleep", lambda _s: None)
        store = SupabaseStore(url=supabase_gateway.url, key=key or supabase_gateway.service_key,
                              **kwargs)
        made.append(store)
        return store

    yield make
    for store in made:
        store.close()
    supabase_gateway.faults.clear()
