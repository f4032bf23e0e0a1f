"""SupabaseStore beyond the shared contract: configuration, the wire format
supabase-py sends, retries (what is retried, what is not, how long), the key kept
secret, and a meter on `supabase://`. The Data API is the gateway test double of
tests/supabase_gateway.py in front of the real PostgreSQL."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import psycopg
import pytest

from otel_budget import BudgetConfig, BudgetMeter, ConfigError, StoreError
from otel_budget.ledger import BUDGET_TYPE, NUDGE_TYPE
from otel_budget.stores.base import open_store
from otel_budget.stores.supabase import SupabaseStore
from tests.supabase_gateway import SupabaseGateway

NAME = "budget_2026-11-25"
MERGE_PATH = "/rest/v1/rpc/otel_budget_merge"
CLAIM_PATH = "/rest/v1/rpc/otel_budget_claim"
StoreMaker = Callable[..., SupabaseStore]


def _entry(spend: float, seq: int) -> dict[str, Any]:
    return {"spend_usd": spend, "seq": seq}


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
        store.merge_budget(NAME, "a", _entry(1.0, 1), day_meta={})
        store.get(BUDGET_TYPE, NAME)


def test_an_existing_client_can_be_passed_in(gateway: SupabaseGateway) -> None:
    import httpx
    import supabase

    http = httpx.Client(timeout=5.0)
    client = supabase.create_client(gateway.url, gateway.service_key,
                                    options=supabase.ClientOptions(httpx_client=http))
    store = SupabaseStore(client=client)
    try:
        assert store.merge_budget(NAME, "a", _entry(2.0, 1), day_meta={})["total_usd"] == 2.0
    finally:
        store.close()
    assert not http.is_closed, "a client passed in is closed by its owner"
    http.close()


# --- the wire format -------------------------------------------------------------------

def test_requests_are_the_documented_ones(
    gateway: SupabaseGateway, supabase_store_factory: StoreMaker
) -> None:
    store = supabase_store_factory()
    store.merge_budget(NAME, "a", _entry(1.0, 1), day_meta={"date": "2026-11-25"})
    store.insert_if_absent(NUDGE_TYPE, "budget_alert_2026-11-25_80", {"to": "ag_lu"})
    store.get(BUDGET_TYPE, NAME)
    methods_paths = [(m, urlsplit(p).path) for m, p in gateway.requests]
    assert methods_paths == [("POST", MERGE_PATH), ("POST", CLAIM_PATH),
                             ("GET", "/rest/v1/quilt_patches")]
    query = dict(parse_qsl(urlsplit(gateway.requests[-1][1]).query))
    assert query == {"select": "content", "patch_type": "eq.budget", "name": f"eq.{NAME}",
                     "limit": "1"}


# --- retries -----------------------------------------------------------------------------

def test_5xx_and_dropped_connections_are_retried_and_applied_once(
    gateway: SupabaseGateway, supabase_store_factory: StoreMaker
) -> None:
    store = supabase_store_factory()
    gateway.faults.add("status", status=503, path_contains=MERGE_PATH, times=1)
    gateway.faults.add("drop", path_contains=MERGE_PATH, times=1)
    gateway.faults.add("status", status=500, path_contains=MERGE_PATH, times=1)
    doc = store.merge_budget(NAME, "a", _entry(3.0, 1), day_meta={})
    assert doc["total_usd"] == 3.0
    assert _calls(gateway, MERGE_PATH) == 4


def test_an_answer_lost_after_commit_is_harmless(
    gateway: SupabaseGateway, supabase_store_factory: StoreMaker
) -> None:
    store = supabase_store_factory()
    gateway.faults.add("lost_answer", status=502, path_contains=MERGE_PATH)
    doc = store.merge_budget(NAME, "a", _entry(3.0, 7), day_meta={})
    assert doc["instances"]["a"] == _entry(3.0, 7)  # the retry found it already applied
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
        store.merge_budget(NAME, "a", _entry(1.0, 1), day_meta={})
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
        store.merge_budget(NAME, "a", _entry(1.0, 1), day_meta={})
    assert _calls(gateway, MERGE_PATH) == 4
    assert len(slept) == 3
    assert 0.125 <= slept[0] <= 0.25 and 0.25 <= slept[1] <= 0.5 and 0.3 <= slept[2] <= 0.6
    gateway.faults.clear()
    assert store.get(BUDGET_TYPE, NAME) is None


def test_an_unreachable_api_is_a_store_error() -> None:
    from tests.pg_server import free_port

    store = SupabaseStore(url=f"http://127.0.0.1:{free_port()}", key="k-unreachable",
                          sleep=lambda _s: None, connect_timeout_s=1.0)
    try:
        with pytest.raises(StoreError, match="ConnectError"):
            store.merge_budget(NAME, "a", _entry(1.0, 1), day_meta={})
    finally:
        store.close()


# --- keys ---------------------------------------------------------------------------------

def test_the_anon_key_is_refused_and_told_what_to_use(
    gateway: SupabaseGateway, supabase_store_factory: StoreMaker
) -> None:
    store = supabase_store_factory(key=gateway.anon_key)
    for call in (lambda: store.get(BUDGET_TYPE, NAME),
                 lambda: store.merge_budget(NAME, "a", _entry(1.0, 1), day_meta={}),
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
        good.merge_budget(NAME, "a", _entry(1.0, 1), day_meta={})
    assert gateway.service_key not in str(caught.value) and "apikey=***" in str(caught.value)


# --- a meter on supabase:// ----------------------------------------------------------------

def test_a_meter_checkpoints_through_supabase(
    supabase_env: SupabaseGateway, pg_clean: str
) -> None:
    config = BudgetConfig(daily_cap_usd=10.0, instance_id="sb-1", store_url="supabase://",
                          collect_interval_s=3600.0)
    delivered: list[dict[str, Any]] = []
    with BudgetMeter(config, notifiers=[delivered.append]) as meter:
        meter.record(5.0, {"agent": "cloud_lu"})
        meter.record(3.5, {"agent": "ag_lu"})
        assert meter.checkpoint()
        assert meter.health()["status"] == "ok"
        day = meter.reader.day.isoformat()
    assert len(delivered) == 1 and delivered[0]["ratio"] == 0.8
    with psycopg.connect(pg_clean) as conn:
        row = conn.execute("select content from public.quilt_patches where name = %s",
                           (f"budget_{day}",)).fetchone()
    assert row is not None and row[0]["total_usd"] == 8.5
    assert row[0]["instances"]["sb-1"]["by_attributes"] == [
        {"attributes": {"agent": "cloud_lu"}, "spend_usd": 5.0},
        {"attributes": {"agent": "ag_lu"}, "spend_usd": 3.5},
    ]
