"""SupabaseStore beyond the shared contract: configuration, the wire format
supabase-py sends, retries (what is retried, what is not, how long), the key kept
secret. The Data API is the gateway test double of
tests/support/supabase_gateway.py in front of the real PostgreSQL."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest

from otel_budget import ConfigError, StoreError
from otel_budget.stores.base import open_store
from otel_budget.stores.entries import WRITER_TYPE, writer_row_name
from otel_budget.stores.supabase import SupabaseStore
from tests.support.supabase_gateway import SupabaseGateway

DAY = "2026-11-25"
NAME = writer_row_name(DAY, "a")
BUDGET_TYPE = WRITER_TYPE
NUDGE_TYPE = "sibling_nudge"
MERGE_PATH = "/rest/v1/rpc/otel_budget_merge_writer"
TOTALS_PATH = "/rest/v1/rpc/otel_budget_day_totals"
ENTRIES_PATH = "/rest/v1/rpc/otel_budget_writer_entries"
CLAIM_PATH = "/rest/v1/rpc/otel_budget_claim"
StoreMaker = Callable[..., SupabaseStore]


def _entry(spend: float, seq: int, writer: str = "a") -> dict[str, Any]:
    return {"date": DAY, "writer_id": writer, "instance_id": "sb-host", "spend_usd": spend,
            "seq": seq, "updated_at": "2026-11-25T10:00:00+00:00"}


def _calls(gateway: SupabaseGateway, path: str) -> int:
    return sum(1 for _, p in gateway.requests if urlsplit(p).path == path)


@pytest.fixture
def gateway(supabase_gateway: SupabaseGateway, pg_clean: str) -> SupabaseGateway:
    supabase_gateway.requests.clear()
    supabase_gateway.faults.clear()
    return supabase_gateway


# --- configuration ---------------------------------------------------------------------

def test_supabase_url_reads_the_environment(supabase_env: SupabaseGateway, pg_clean: str) -> None:
    store = open_store("supabase://")
    try:
        assert isinstance(store, SupabaseStore)
        assert store.insert_if_absent(NUDGE_TYPE, "n", {"a": 1}) is True
        assert supabase_env.service_key not in repr(store)
    finally:
        store.close()


def test_supabase_key_is_the_fallback_variable(
    supabase_env: SupabaseGateway, pg_clean: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SUPABASE_SERVICE_ROLE_KEY")
    monkeypatch.setenv("SUPABASE_KEY", supabase_env.service_key)
    store = open_store("supabase://")
    try:
        assert store.get(BUDGET_TYPE, NAME) is None
    finally:
        store.close()


@pytest.mark.parametrize("missing", ["SUPABASE_URL", "keys"])
def test_missing_configuration_names_the_variables(
    monkeypatch: pytest.MonkeyPatch, missing: str
) -> None:
    monkeypatch.setenv("SUPABASE_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("SUPABASE_SERVICE_ROLE_KEY", "k")
    if missing == "keys":
        monkeypatch.delenv("SUPABASE_SERVICE_ROLE_KEY")
        monkeypatch.delenv("SUPABASE_KEY", raising=False)
    else:
        monkeypatch.delenv(missing)
    with pytest.raises(ConfigError, match="SUPABASE_URL" if missing != "keys"
                       else "SUPABASE_SERVICE_ROLE_KEY"):
        open_store("supabase://")


def test_no_warnings_from_supabase_py(gateway: SupabaseGateway, supabase_store_factory: StoreMaker) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # its default client warns on first use
        store = supabase_store_factory()
        store.merge_writer(_entry(1.0, 1))
        store.get(BUDGET_TYPE, NAME)


def test_an_existing_client_can_be_passed_in(gateway: SupabaseGateway) -> None:
    import httpx
    import supabase

    http = httpx.Client(timeout=5.0)
    client = supabase.create_client(gateway.url, gateway.service_key,
                                    options=supabase.ClientOptions(httpx_client=http))
    store = SupabaseStore(client=client)
    try:
        assert store.merge_writer(_entry(2.0, 1))["applied"] is True
        assert store.day_totals([DAY])[DAY]["total_usd"] == 2.0
    finally:
        store.close()
    assert not http.is_closed, "a client passed in is closed by its owner"
    http.close()


# --- the wire format -------------------------------------------------------------------

def test_requests_are_the_documented_ones(
    gateway: SupabaseGateway, supabase_store_factory: StoreMaker
) -> None:
    store = supabase_store_factory()
    store.merge_writer(_entry(1.0, 1))
    # The reaper rides on merges, one call per schedule period: the first merge's.
    assert [urlsplit(p).path for _, p in gateway.requests] == [
        MERGE_PATH, "/rest/v1/rpc/otel_budget_reap"]
    gateway.requests.clear()
    store.merge_writer(_entry(1.0, 2))
    store.insert_if_absent(NUDGE_TYPE, "budget_alert_2026-11-25_80", {"to": "ag_lu"})
    store.get(BUDGET_TYPE, NAME)
    week = [f"2026-11-{d}" for d in range(23, 30)]
    totals = store.day_totals(week)
    entries = store.writer_entries(week, breakdown=False)
    methods_paths = [(m, urlsplit(p).path) for m, p in gateway.requests]
    assert methods_paths == [("POST", MERGE_PATH), ("POST", CLAIM_PATH),
                             ("GET", "/rest/v1/quilt_patches"),
                             ("POST", TOTALS_PATH), ("POST", ENTRIES_PATH)], \
        "a week's totals and entries are one request each"
    query = dict(parse_qsl(urlsplit(gateway.requests[2][1]).query))
    assert query == {"select": "content", "patch_type": "eq.budget_writer",
                     "name": f"eq.{NAME}", "limit": "1"}
    assert totals[DAY]["total_usd"] == 1.0 and list(totals) == week
    assert entries == [_entry(1.0, 2)]



def test_writer_budget_entries_is_one_rpc_answering_as_postgres_does(
    gateway: SupabaseGateway, supabase_store_factory: StoreMaker, pg_clean: str
) -> None:
    """start() with a budget added mid-window reads today's entries with that budget
    computed in the store, breakdowns left there: the same SQL function as
    PostgreSQL's, over one POST (it keeps what it computes)."""
    from otel_budget.budgets import Budget
    from otel_budget.fleet import entry_budget_spend
    from otel_budget.stores.base import BudgetEntriesStore
    from otel_budget.stores.postgres import PostgresStore

    store = supabase_store_factory()
    assert isinstance(store, BudgetEntriesStore)
    items = [{"attributes": {"team": "t3", "agent": "x"}, "spend_usd": 0.25},
             {"attributes": {"team": "t1"}, "spend_usd": 0.5}]
    whole = _entry(0.75, 1) | {"by_attributes": items}
    store.merge_writer(whole)
    store.merge_writer(_entry(1.0, 1, writer="b") | {"by_budget": {"t3": 1.0}})
    budgets = [Budget("t3", 5.0, period="month", match={"team": "t3"})]
    gateway.requests.clear()
    got = store.writer_budget_entries([DAY], budgets)
    assert [(m, urlsplit(p).path) for m, p in gateway.requests] == [
        ("POST", "/rest/v1/rpc/otel_budget_writer_budget_entries")]
    assert [e["writer_id"] for e in got] == ["a", "b"]
    assert "by_attributes" not in got[0]
    assert got[0]["by_budget"] == {"t3": entry_budget_spend(whole, budgets[0])} == {"t3": 0.25}
    assert got[1]["by_budget"] == {"t3": 1.0}, "a writer's own figure is kept"
    direct = PostgresStore(pg_clean)
    try:
        assert direct.writer_budget_entries([DAY], budgets) == got
    finally:
        direct.close()
    gateway.requests.clear()
    with pytest.raises(NotImplementedError):
        store.writer_budget_entries([DAY], [Budget("odd", 1.0, match={"team": "[ab]*"})])
    assert gateway.requests == [], "refused before any request"


# --- retries -----------------------------------------------------------------------------

def test_5xx_and_dropped_connections_are_retried_and_applied_once(
    gateway: SupabaseGateway, supabase_store_factory: StoreMaker
) -> None:
    store = supabase_store_factory()
    gateway.faults.add("status", status=503, path_contains=MERGE_PATH, times=1)
    gateway.faults.add("drop", path_contains=MERGE_PATH, times=1)
    gateway.faults.add("status", status=500, path_contains=MERGE_PATH, times=1)
    result = store.merge_writer(_entry(3.0, 1))
    assert result["applied"] is True and result["stored_seq"] == 1
    assert _calls(gateway, MERGE_PATH) == 4
    gateway.faults.add("status", status=503, path_contains=TOTALS_PATH, times=1)
    assert store.day_totals([DAY])[DAY]["total_usd"] == 3.0
    gateway.faults.add("drop", path_contains=ENTRIES_PATH, times=1)
    assert store.writer_entries([DAY])[0]["spend_usd"] == 3.0


def test_an_answer_lost_after_commit_is_harmless(
    gateway: SupabaseGateway, supabase_store_factory: StoreMaker
) -> None:
    store = supabase_store_factory()
    gateway.faults.add("lost_answer", status=502, path_contains=MERGE_PATH)
    result = store.merge_writer(_entry(3.0, 7))
    # The retry found it already applied: not applied by this answer, but stored.
    assert result["applied"] is False and result["stored_seq"] == 7
    assert store.get(WRITER_TYPE, NAME) == _entry(3.0, 7)
    assert _calls(gateway, MERGE_PATH) == 2

    gateway.faults.add("lost_answer", status=502, path_contains=CLAIM_PATH)
    assert store.insert_if_absent(NUDGE_TYPE, "mine", {"instance_id": "me"}) is True
    assert store.insert_if_absent(NUDGE_TYPE, "theirs", {"instance_id": "them"}) is True
    gateway.faults.add("lost_answer", status=502, path_contains=CLAIM_PATH)
    assert store.insert_if_absent(NUDGE_TYPE, "theirs", {"instance_id": "me"}) is False


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409])
def test_4xx_is_not_retried(
    gateway: SupabaseGateway, supabase_store_factory: StoreMaker, status: int
) -> None:
    store = supabase_store_factory()
    gateway.faults.add("status", status=status, path_contains=MERGE_PATH)
    with pytest.raises(StoreError, match=str(status)):
        store.merge_writer(_entry(1.0, 1))
    assert _calls(gateway, MERGE_PATH) == 1
    assert store.get(BUDGET_TYPE, NAME) is None


def test_retries_are_bounded_with_backoff(
    gateway: SupabaseGateway, supabase_store_factory: StoreMaker
) -> None:
    slept: list[float] = []
    store = supabase_store_factory(sleep=slept.append, max_attempts=4, backoff_s=0.25,
                                   max_backoff_s=0.6)
    gateway.faults.add("status", status=503, path_contains=MERGE_PATH, times=10)
    with pytest.raises(StoreError, match="after 4 attempts"):
        store.merge_writer(_entry(1.0, 1))
    assert _calls(gateway, MERGE_PATH) == 4
    assert len(slept) == 3
    assert 0.125 <= slept[0] <= 0.25 and 0.25 <= slept[1] <= 0.5 and 0.3 <= slept[2] <= 0.6
    gateway.faults.clear()
    assert store.get(BUDGET_TYPE, NAME) is None


def test_an_unreachable_api_is_a_store_error() -> None:
    from tests.support.pg_server import free_port

    store = SupabaseStore(url=f"http://127.0.0.1:{free_port()}", key="k-unreachable",
                          sleep=lambda _s: None, connect_timeout_s=1.0)
    try:
        with pytest.raises(StoreError, match="ConnectError"):
            store.merge_writer(_entry(1.0, 1))
    finally:
        store.close()


# --- keys ---------------------------------------------------------------------------------

def test_the_anon_key_is_refused_and_told_what_to_use(
    gateway: SupabaseGateway, supabase_store_factory: StoreMaker
) -> None:
    store = supabase_store_factory(key=gateway.anon_key)
    for call in (lambda: store.get(BUDGET_TYPE, NAME),
                 lambda: store.merge_writer(_entry(1.0, 1)),
                 lambda: store.insert_if_absent(NUDGE_TYPE, "n", {})):
        with pytest.raises(StoreError, match="SUPABASE_SERVICE_ROLE_KEY") as caught:
            call()
        assert gateway.anon_key not in str(caught.value)
    assert len(gateway.requests) == 3, "a 401 is not retried"


def test_the_key_never_appears_in_errors_or_reprs(
    gateway: SupabaseGateway, supabase_store_factory: StoreMaker
) -> None:
    wrong = "sb_secret_wrong-key-0123456789"
    store = supabase_store_factory(key=wrong)
    with pytest.raises(StoreError, match="Invalid API key") as caught:
        store.get(BUDGET_TYPE, NAME)
    assert wrong not in str(caught.value) and wrong not in repr(store)

    good = supabase_store_factory()
    gateway.faults.add("status", status=502, message="upstream said: apikey={apikey}", times=9)
    with pytest.raises(StoreError) as caught:
        good.merge_writer(_entry(1.0, 1))
    assert gateway.service_key not in str(caught.value) and "apikey=***" in str(caught.value)




# --- redirects ------------------------------------------------------------------------------

class _Recorder:
    """Two loopback HTTP servers: one answers every request with a redirect to the
    other, which records the headers it is sent (where a followed redirect would
    carry the service key)."""

    def __init__(self, status: int) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.received: list[dict[str, str]] = []
        self.redirects = 0
        recorder = self

        class Target(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                recorder.received.append(dict(self.headers.items()))
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"[]")

            do_GET = do_POST = _answer

            def log_message(self, *args: Any) -> None:
                pass

        self.target = ThreadingHTTPServer(("127.0.0.1", 0), Target)
        location = f"http://127.0.0.1:{self.target.server_address[1]}"

        class Redirector(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                recorder.redirects += 1
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                self.send_response(status)
                self.send_header("Location", location + self.path)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_GET = do_POST = _answer

            def log_message(self, *args: Any) -> None:
                pass

        self.redirector = ThreadingHTTPServer(("127.0.0.1", 0), Redirector)
        self.url = f"http://127.0.0.1:{self.redirector.server_address[1]}"
        self._threads = [threading.Thread(target=s.serve_forever, daemon=True)
                         for s in (self.target, self.redirector)]
        for thread in self._threads:
            thread.start()

    def close(self) -> None:
        for server in (self.target, self.redirector):
            server.shutdown()
            server.server_close()


@pytest.mark.parametrize("status", [301, 302, 307, 308])
def test_a_redirect_is_never_followed_with_the_key(status: int) -> None:
    recorder = _Recorder(status)
    key = "sb_secret_redirect-test-0123456789"
    store = SupabaseStore(url=recorder.url, key=key, sleep=lambda _s: None)
    try:
        for call in (lambda: store.get(BUDGET_TYPE, NAME),
                     lambda: store.merge_writer(_entry(1.0, 1))):
            with pytest.raises(StoreError, match="redirect") as caught:
                call()
            assert key not in str(caught.value)
        assert recorder.received == []  # nothing reached the redirect's target
        assert recorder.redirects == 2  # and a redirect is final: not retried
    finally:
        store.close()
        recorder.close()


@pytest.mark.parametrize("follow", [True, False])
def test_a_client_passed_in_that_follows_redirects_is_warned_about(
    follow: bool, caplog: pytest.LogCaptureFixture,
) -> None:
    import httpx
    import supabase

    key = "sb_secret_passed-in-0123456789"
    http = httpx.Client(timeout=5.0, follow_redirects=follow)
    client = supabase.create_client("http://127.0.0.1:9", key,
                                    options=supabase.ClientOptions(httpx_client=http))
    with caplog.at_level("WARNING"):
        store = SupabaseStore(client=client)
    store.close()
    http.close()
    warned = [r.getMessage() for r in caplog.records if "follows redirects" in r.getMessage()]
    assert len(warned) == (1 if follow else 0)
    assert all(key not in message for message in warned)
