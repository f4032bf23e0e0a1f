from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

# LiteLLM (a test-only peer) fetches its price map from the internet at import unless
# told to use the copy it ships; this machine has no internet.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from otel_budget.instruments import WRITER_ATTRIBUTE
from otel_budget.stores.base import PatchStore
from otel_budget.stores.memory import MemoryStore
from otel_budget.stores.sqlite import SQLiteStore
from tests.store_kinds import STORE_KINDS

pytest_plugins = [
    name for name in ("tests.pg_server", "tests.pgbouncer_server", "tests.supabase_gateway",
                      "tests.prom_server", "tests.otlp_receivers")
    if (Path(__file__).parent / f"{name.split('.')[-1]}.py").exists()
]

StoreFactory = Callable[[], PatchStore]


class FakeClock:
    """A movable, thread-safe clock returning aware datetimes."""

    def __init__(self, start: datetime) -> None:
        self._now = start
        self._lock = threading.Lock()

    def __call__(self) -> datetime:
        with self._lock:
            return self._now

    def advance(self, **delta: float) -> None:
        with self._lock:
            self._now += timedelta(**delta)

    def set(self, when: datetime) -> None:
        with self._lock:
            self._now = when


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


def wait_for(condition: Callable[[], object], timeout: float = 5.0) -> bool:
    """Poll until `condition()` is truthy (notifiers deliver on their own thread)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return bool(condition())


def run_in_threads(work: Callable[[int], None], count: int) -> list[BaseException]:
    """Run work(0..count-1) on as many threads at once; the errors they raised."""
    errors: list[BaseException] = []

    def guarded(index: int) -> None:
        try:
            work(index)
        except BaseException as exc:  # reported by the caller's assertion
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors


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


def spend_points(reader: Any) -> dict[tuple[Any, ...], float]:
    """`llm.spend` as an InMemoryMetricReader (or a BudgetReader's last collection)
    sees it: sorted attribute items -> value."""
    data = reader.get_metrics_data() if hasattr(reader, "get_metrics_data") else reader.latest
    out: dict[tuple[Any, ...], float] = {}
    for rm in data.resource_metrics if data else ():
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                if metric.name == "llm.spend":
                    assert metric.unit == "USD" and metric.data.is_monotonic
                    for p in metric.data.data_points:
                        # Every point names its writer (one per process here): the key
                        # is what the test recorded. tests/test_graceful_stop.py checks
                        # the writer attribute itself.
                        attributes = dict(p.attributes)
                        assert isinstance(attributes.pop(WRITER_ATTRIBUTE), str)
                        out[tuple(sorted(attributes.items()))] = p.value
    return out
