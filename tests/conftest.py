from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import pytest

# LiteLLM (a test-only peer) fetches its price map from the internet at import unless
# told to use the copy it ships; this machine has no internet.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from otel_budget.stores.base import PatchStore
from otel_budget.stores.memory import MemoryStore
from otel_budget.stores.sqlite import SQLiteStore
from tests.support.helpers import (  # noqa: F401 (re-exported for fixtures)
    FakeClock,
    StoreFactory,
    run_in_threads,
    spend_points,
    wait_for,
)
from tests.support.store_kinds import STORE_KINDS

pytest_plugins = [
    "tests.support.pg_server", "tests.support.pgbouncer_server", "tests.support.supabase_gateway",
    "tests.support.prom_server", "tests.support.otlp_receivers",
]






@pytest.fixture(autouse=True)
def _private_spool(tmp_path_factory: pytest.TempPathFactory,
                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Meters spool into the per-user cache by default: keep tests out of the real one."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("cache")))


_PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "no_proxy", "grpc_proxy")


@pytest.fixture(autouse=True)
def _no_proxies(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests talk to servers they start on loopback: a CI host's proxy variables must not
    route them elsewhere (the proxy tests set their own)."""
    for name in _PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)








@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(datetime(2026, 11, 25, 12, 0, tzinfo=timezone.utc))


@pytest.fixture
def memory_store_factory() -> StoreFactory:
    shared = MemoryStore()
    return lambda: shared


@pytest.fixture
def sqlite_store_factory(tmp_path: Path) -> Iterator[StoreFactory]:
    opened: list[SQLiteStore] = []

    def factory() -> PatchStore:
        store = SQLiteStore(tmp_path / "budget.db")
        opened.append(store)
        return store

    yield factory
    for store in opened:
        store.close()


@pytest.fixture(params=sorted(STORE_KINDS))
def store_factory(request: pytest.FixtureRequest) -> StoreFactory:
    factory: StoreFactory = request.getfixturevalue(STORE_KINDS[request.param])
    return factory


@pytest.fixture
def store(store_factory: StoreFactory) -> PatchStore:
    return store_factory()


