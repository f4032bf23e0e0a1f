"""Helpers the tests share (the fixtures are in tests/conftest.py)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import date, datetime, timedelta, timezone
from typing import Any

from otel_budget.instruments import WRITER_ATTRIBUTE
from otel_budget.read import read_day
from otel_budget.stores.base import PatchStore, open_store


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
                        # is what the test recorded. tests/integration/test_graceful_stop.py checks
                        # the writer attribute itself.
                        attributes = dict(p.attributes)
                        assert isinstance(attributes.pop(WRITER_ATTRIBUTE), str)
                        out[tuple(sorted(attributes.items()))] = p.value
    return out


def stored_day(store_url: str, day: date | None = None
               ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """What the store at `store_url` holds for `day` (today in UTC by default), read
    as a separate process would: read_day's document and the day's writer entries."""
    day = day or datetime.now(timezone.utc).date()
    store = open_store(store_url)
    try:
        document = read_day(store, day)
        entries = store.writer_entries([day.isoformat()])
    finally:
        store.close()
    return document, entries


StoreFactory = Callable[[], PatchStore]
